"""The board's web app (Starlette): login, the page, its JSON, the stations' pictures and an SSE stream.

Every page, endpoint and stream needs a session (station/board/auth.py); only ``/login`` and
``/healthz`` (counters, no station data) are open.

* ``GET /login``, ``POST /login`` (form: ``user``, ``password``), ``POST /logout``;
* ``GET /`` — the big-screen page (static/board.html + board.js), Chinese and English;
* ``GET /api/stations`` — every station, sorted by what needs attention (``BoardState.view``);
* ``GET /api/stations/{site}/{station}/snapshot.jpg`` — the station's latest (face-blurred) picture;
* ``GET /api/stream`` — server-sent events: ``event: stations`` with the same JSON whenever it
  changed (checked every ``poll_s``), and a comment line every 15 s so proxies keep it open. The
  stream ends when the session does (logout, user removed, password changed, expiry);
* ``GET /api/whoami`` — the session's user and role;
* ``POST /api/stations/{site}/{station}/forget`` — **admin**: take a station off the live board;
* ``GET /healthz`` — the MQTT link and message counters.

Requests that change something (login, logout, forget) are refused from a cross-site ``Origin``;
the cookie is SameSite=Strict as well. Every response carries a Content-Security-Policy that allows
only the board's own script: even a value that slipped into the DOM as markup could not run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from station.board import schema
from station.board.auth import (
    COOKIE,
    AuthError,
    Session,
    Sessions,
    UsersFile,
    cookie_header,
)
from station.board.state import BoardState
from station.ops.ratelimit import RateLimiter

log = logging.getLogger("station.board.web")

STATIC = Path(__file__).with_name("static")
KEEPALIVE_S = 15.0
SESSION_RECHECK_S = 10.0  # an open stream re-checks its session this often (logout, user removed)
FORM_MAX = 4096
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
LOGIN_ERRORS = {
    "bad": "用户名或密码错误 · Wrong user name or password",
    "limited": "尝试次数过多，请稍后再试 · Too many attempts, try again later",
    "origin": "请求来源不被接受 · Request from another site refused",
}


@dataclass
class BoardAuth:
    """What the app needs to log people in: the users, the session signer and the login limits."""

    users: UsersFile
    sessions: Sessions
    public_origin: str | None = None  # e.g. https://board.district.example behind a TLS proxy
    per_user: RateLimiter = field(default_factory=lambda: RateLimiter(5, 300.0))
    per_ip: RateLimiter = field(default_factory=lambda: RateLimiter(20, 300.0))
    failures: int = 0


class SecurityHeaders:
    """Add CSP, nosniff, same-origin referrer and no framing to every response, streams included (pure ASGI).

    Not `no-referrer`: under it browsers send `Origin: null` with a form POST, and the login could
    not tell its own page from another site.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request to the app, adding the headers to its response."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    (b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"same-origin"),
                    (b"x-frame-options", b"DENY"),
                ]
            await send(message)

        await self.app(scope, receive, with_headers)


def _own_origins(request: Request, auth: BoardAuth) -> set[str]:
    own = {f"{request.url.scheme}://{request.headers.get('host', '')}".lower()}
    if auth.public_origin:
        own.add(auth.public_origin.rstrip("/").lower())
    return own


def same_origin(request: Request, auth: BoardAuth) -> bool:
    """Return False for a request a browser marks as coming from another site (Origin or Sec-Fetch-Site)."""
    origin = request.headers.get("origin")
    if origin is not None and origin.lower() not in _own_origins(request, auth):
        return False
    return request.headers.get("sec-fetch-site", "same-origin") in ("same-origin", "none")


def create_app(state: BoardState, auth: BoardAuth, link_stats: Callable[[], dict[str, Any]] | None = None, poll_s: float = 0.5) -> ASGIApp:
    """Return the board's app (the endpoints above) behind its security headers.

    ``link_stats`` gives the MQTT link's state for ``/healthz``; the SSE stream looks for a new
    view every ``poll_s``.
    """

    def secure(request: Request) -> bool:
        return request.url.scheme == "https" or (auth.public_origin or "").lower().startswith("https://")

    def session_of(request: Request) -> Session | None:
        return auth.sessions.check(request.cookies.get(COOKIE))

    Handler = Callable[[Request, Session], Awaitable[Response]]

    def need(role: str, *, page: bool = False) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
        def wrap(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
            async def endpoint(request: Request) -> Response:
                session = session_of(request)
                if session is None:
                    if page:
                        return RedirectResponse("/login", status_code=303)
                    return JSONResponse({"error": "login required"}, status_code=401)
                if role == "admin" and session.role != "admin":
                    return JSONResponse({"error": "admin role required"}, status_code=403)
                if request.method not in ("GET", "HEAD") and not same_origin(request, auth):
                    return JSONResponse({"error": "cross-site request refused"}, status_code=403)
                return await handler(request, session)

            return endpoint

        return wrap

    async def login_page(request: Request) -> Response:
        if session_of(request) is not None:
            return RedirectResponse("/", status_code=303)
        html = (STATIC / "login.html").read_text(encoding="utf-8")
        error = LOGIN_ERRORS.get(request.query_params.get("e", ""), "")  # a fixed text, never the query itself
        return Response(html.replace("<!--ERROR-->", error), media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-store"})

    async def login(request: Request) -> Response:
        if not same_origin(request, auth):
            return RedirectResponse("/login?e=origin", status_code=303)
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > FORM_MAX:
                return Response("form too large", status_code=413)
        form = parse_qs(raw.decode("utf-8", "replace"), max_num_fields=8)
        name = (form.get("user") or [""])[0].strip()
        password = (form.get("password") or [""])[0]
        ip = request.client.host if request.client else "?"
        # Both budgets are spent before the hash: parallel guesses cannot each get a try.
        if not auth.per_ip.allow(ip) or not auth.per_user.allow(name[:64]):
            log.warning("board login rate-limited user=%s ip=%s", schema.text(name, 64), ip)
            return RedirectResponse("/login?e=limited", status_code=303)
        try:
            user = await run_in_threadpool(auth.users.authenticate, name, password)
        except AuthError as exc:
            log.error("board users file unusable error=%s", exc)
            user = None
        if user is None:
            auth.failures += 1
            log.warning("board login refused user=%s ip=%s", schema.text(name, 64), ip)
            return RedirectResponse("/login?e=bad", status_code=303)
        cookie, _session = auth.sessions.issue(user)
        log.info("board login user=%s role=%s ip=%s", user.name, user.role, ip)
        response = RedirectResponse("/", status_code=303)
        response.headers.append("set-cookie", cookie_header(cookie, secure=secure(request), max_age=int(auth.sessions.ttl_s)))
        return response

    @need("viewer")
    async def logout(request: Request, session: Session) -> Response:
        auth.sessions.revoke(session)
        log.info("board logout user=%s", session.user)
        response = RedirectResponse("/login", status_code=303)
        response.headers.append("set-cookie", cookie_header("", secure=secure(request), max_age=0))
        return response

    @need("viewer", page=True)
    async def page(request: Request, session: Session) -> Response:
        return FileResponse(STATIC / "board.html", media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-store"})

    @need("viewer")
    async def script(request: Request, session: Session) -> Response:
        return FileResponse(STATIC / "board.js", media_type="text/javascript; charset=utf-8", headers={"Cache-Control": "no-cache"})

    @need("viewer")
    async def whoami(request: Request, session: Session) -> Response:
        return JSONResponse({"user": session.user, "role": session.role, "expires": session.expires})

    @need("viewer")
    async def stations(request: Request, session: Session) -> Response:
        return JSONResponse(state.view())

    @need("viewer")
    async def snapshot(request: Request, session: Session) -> Response:
        site, station = request.path_params["site"], request.path_params["station"]
        found = state.snapshot_jpeg(site, station) if schema.segment(site) and schema.segment(station) else None
        if found is None:
            return Response(status_code=404)
        jpeg, _meta = found
        # The page asks for ...snapshot.jpg?ts=<the picture's ts>: a new picture is a new URL, so the
        # browser may keep each one (a tile rebuilt for a new count does not re-fetch its picture).
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @need("admin")
    async def forget(request: Request, session: Session) -> Response:
        site, station = request.path_params["site"], request.path_params["station"]
        if not (schema.segment(site) and schema.segment(station)):
            return JSONResponse({"error": "bad station key"}, status_code=400)
        found = state.forget(site, station)
        log.warning("board station forgotten by admin user=%s site=%s station=%s found=%s", session.user, site, station, found)
        return JSONResponse({"ok": found}, status_code=200 if found else 404)

    async def health(request: Request) -> Response:
        stats = link_stats() if link_stats else None
        mqtt = {k: stats.get(k) for k in ("state", "connects", "errors")} if stats else None
        return JSONResponse({"mqtt": mqtt, "board": state.counters(), "logins_refused": auth.failures})

    @need("viewer")
    async def stream(request: Request, session: Session) -> Response:
        cookie = request.cookies.get(COOKIE)

        async def events() -> AsyncIterator[str]:
            seen = -1
            quiet_since = checked = time.monotonic()
            yield "retry: 2000\n\n"
            while not await request.is_disconnected():
                if time.monotonic() - checked >= SESSION_RECHECK_S:
                    checked = time.monotonic()
                    if auth.sessions.check(cookie) is None:
                        yield "event: logout\ndata: {}\n\n"
                        return
                if state.version != seen:
                    view = state.view()
                    seen = view["version"]
                    quiet_since = time.monotonic()
                    yield f"event: stations\ndata: {json.dumps(view, ensure_ascii=False, separators=(',', ':'))}\n\n"
                elif time.monotonic() - quiet_since >= KEEPALIVE_S:
                    quiet_since = time.monotonic()
                    yield ": keep-alive\n\n"
                await asyncio.sleep(poll_s)

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    app = Starlette(
        routes=[
            Route("/login", login_page, methods=["GET"]),
            Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"]),
            Route("/", page),
            Route("/static/board.js", script),
            Route("/api/whoami", whoami),
            Route("/api/stations", stations),
            Route("/api/stations/{site}/{station}/snapshot.jpg", snapshot),
            Route("/api/stations/{site}/{station}/forget", forget, methods=["POST"]),
            Route("/api/stream", stream),
            Route("/healthz", health),
        ]
    )
    return SecurityHeaders(app)
