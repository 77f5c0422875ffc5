"""The board's web app (Starlette): the page, its JSON, the stations' pictures and an SSE stream.

* ``GET /`` — the big-screen page (static/board.html), Chinese and English;
* ``GET /api/stations`` — every station, sorted by what needs attention (``BoardState.view``);
* ``GET /api/stations/{site}/{station}/snapshot.jpg`` — the station's latest (face-blurred) picture;
* ``GET /api/stream`` — server-sent events: ``event: stations`` with the same JSON whenever it
  changed (checked every ``poll_s``), and a comment line every 15 s so proxies keep it open. The
  browser's EventSource reconnects by itself after a board restart.
* ``GET /healthz`` — the MQTT link and message counters.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from station.board.state import BoardState

STATIC = Path(__file__).with_name("static")
KEEPALIVE_S = 15.0


def create_app(state: BoardState, link_stats: Callable[[], dict[str, Any]] | None = None, poll_s: float = 0.5) -> Starlette:
    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "board.html", media_type="text/html; charset=utf-8")

    async def stations(request: Request) -> Response:
        return JSONResponse(state.view())

    async def snapshot(request: Request) -> Response:
        found = state.snapshot_jpeg(request.path_params["site"], request.path_params["station"])
        if found is None:
            return Response(status_code=404)
        jpeg, _meta = found
        # The page asks for ...snapshot.jpg?ts=<the picture's ts>: a new picture is a new URL, so the
        # browser may keep each one (a tile rebuilt for a new count does not re-fetch its picture).
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    async def health(request: Request) -> Response:
        view = state.view()
        return JSONResponse({"mqtt": link_stats() if link_stats else None, "board": view["board"], "stations": view["totals"]["stations"]})

    async def stream(request: Request) -> Response:
        async def events() -> AsyncIterator[str]:
            seen = -1
            quiet_since = time.monotonic()
            yield "retry: 2000\n\n"
            while not await request.is_disconnected():
                if state.version != seen:
                    view = state.view()
                    seen = view["version"]
                    quiet_since = time.monotonic()
                    yield f"event: stations\ndata: {json.dumps(view, ensure_ascii=False, separators=(',', ':'))}\n\n"
                elif time.monotonic() - quiet_since >= KEEPALIVE_S:
                    quiet_since = time.monotonic()
                    yield ": keep-alive\n\n"
                await asyncio.sleep(poll_s)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    return Starlette(routes=[
        Route("/", page),
        Route("/api/stations", stations),
        Route("/api/stations/{site}/{station}/snapshot.jpg", snapshot),
        Route("/api/stream", stream),
        Route("/healthz", health),
    ])
