"""What every page of the big screen shares: the handler types and a page's HTML and static-file routes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from station.board.auth import Session

STATIC = Path(__file__).with_name("static")

Handler = Callable[[Request, Session], Awaitable[Response]]
Need = Callable[..., Callable[[Handler], Callable[[Request], Awaitable[Response]]]]
JsonBody = Callable[[Request], Awaitable[dict[str, Any] | None]]


def page_routes(need: Need, path: str, html: str, role: str, static_path: str, files: Mapping[str, str]) -> list[Route]:
    """Return a page's routes: its HTML for ``role`` and up (never cached), its listed scripts and styles for any session."""

    @need(role, page=True)
    async def page(request: Request, session: Session) -> Response:
        return FileResponse(STATIC / html, media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-store"})

    @need("viewer")
    async def static(request: Request, session: Session) -> Response:
        name = request.path_params["name"]
        if name not in files:
            return Response(status_code=404)
        return FileResponse(STATIC / name, media_type=files[name], headers={"Cache-Control": "no-cache"})

    return [Route(path, page), Route(static_path, static)]
