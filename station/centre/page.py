"""The centre's big screen (Starlette): login, the district tree, roll-ups and charts from PostgreSQL, the alarm queue.

Every page and endpoint needs a session (station/centre/auth.py) except ``/login``:

* ``GET /login``, ``POST /login`` (form ``user``, ``password``), ``POST /logout``;
* ``GET /`` — the screen (static/centre.html, centre.js, the vendored Chart.js);
* ``GET /api/whoami``;
* ``GET /api/dashboard?node=PATH`` — the rolled-up tree, the node's totals and chart series (today
  vs the same weekday last week, fever rate, code colours, a sparkline per checkpoint);
* ``GET /api/alarms`` — fever/denied events of the last 48 h with their handling;
* ``POST /api/alarms/ack`` ``{site, station, event_id}`` — **tracer**;
* ``POST /api/alarms/close`` ``{site, station, event_id, note}`` — **tracer**; both are mirrored to the
  station as a signed ``alarm-ack`` command when the centre has a command key (station/centre/mirror.py);
* ``GET /api/snapshot``, ``/api/live``, ``POST /api/watch``, ``GET /api/wait`` — a tile's live picture and the
  wait-time chart (station/centre/page_live.py);
* ``GET /api/tree`` — the registry's TOML and version; ``POST /api/tree/edit`` ``{version, op, …}`` — **admin**;
* ``GET /api/audit`` — **admin**: the newest audit rows;
* ``/fleet``, ``/api/fleet…`` — the fleet along the tree; signed pushes — **admin** (station/centre/page_fleet.py);
* ``/trace`` and ``/api/trace/…`` — **tracer**: tracing, audited (station/centre/page_trace.py);
* ``/reports`` and ``/api/reports`` — day and week reports per tree level, printable, CSV (station/centre/page_reports.py).

Changes are JSON POSTs only (a cross-site form cannot send ``application/json`` without a
preflight), refused from a cross-site ``Origin``/``Sec-Fetch-Site``, and the cookie is
SameSite=Strict. The page builds its DOM with ``textContent`` only, and the CSP allows no inline
script: a station or node name carrying markup shows as text.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs
from zoneinfo import ZoneInfo

import psycopg
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from station.board.auth import AuthError, Session
from station.board.schema import EVENT_ID, SEGMENT
from station.board.web import LOGIN_ERRORS, SecurityHeaders
from station.centre import screen
from station.centre.auth import COOKIE, CentreSessions, CentreUsers, allowed, cookie_header
from station.centre.page_files import STATIC, page_routes
from station.centre.page_fleet import fleet_routes
from station.centre.page_live import routes as live_routes
from station.centre.page_reports import report_routes
from station.centre.page_trace import trace_routes
from station.centre.tree import TreeError, parse_tree
from station.ops.ratelimit import RateLimiter

log = logging.getLogger("station.centre.page")


FILES = {
    "centre.js": "text/javascript; charset=utf-8",
    "chart.umd.min.js": "text/javascript; charset=utf-8",
    "centre.css": "text/css; charset=utf-8",
    "live.js": "text/javascript; charset=utf-8",
    "live.css": "text/css; charset=utf-8",
}
BODY_MAX = 16384
ALARM_WINDOW_S = 48 * 3600


@dataclass
class Screen:
    """What the screen needs: a connection pool, the session signer, the login limits, its caches."""

    db_url: str
    public_origin: str | None = None
    pool: screen.Pool = field(init=False)
    users: CentreUsers = field(init=False)
    sessions: CentreSessions = field(init=False)
    tz: ZoneInfo = field(init=False)
    cache: screen.DayCache = field(default_factory=screen.DayCache)
    per_user: RateLimiter = field(default_factory=lambda: RateLimiter(5, 300.0))
    per_ip: RateLimiter = field(default_factory=lambda: RateLimiter(20, 300.0))
    clock: Callable[[], float] = time.time
    failures: int = 0
    mirror: Any = None  # station/centre/mirror.py AlarmMirror: tells the station its alarm was handled
    live: Any = None  # station/centre/live.py LiveHub: the stations' latest pictures and the watch leases
    district_keys: tuple[Any, ...] = ()  # tracing.DistrictKey from --district-key-file: a typed value becomes references here

    def mirror_to_station(self, key: tuple[str, str, str], state: str, operator: str, note: str | None = None) -> str | None:
        """Send the station a signed ``alarm-ack`` if a mirror is configured; return its command id (None: not sent)."""
        if self.mirror is None:
            return None
        try:
            return self.mirror.send(*key, state, operator, note)  # type: ignore[no-any-return]
        except Exception as exc:  # the centre's record stands; the station's display is a courtesy
            log.warning("alarm mirror failed key=%s error=%s", "/".join(key), exc)
            return None

    def open(self) -> None:
        """Create the screen's tables if missing and read the time zone and the session secret."""
        self.pool = screen.Pool(self.db_url)
        with self.pool.connection() as conn:
            self.tz, secret = screen.ensure_screen_schema(conn)
        self.users = CentreUsers(self.pool)
        self.sessions = CentreSessions(secret, self.users, wall=self.clock)

    def close(self) -> None:
        """Close the pool's connections (nothing to do if the screen was never opened)."""
        pool = self.__dict__.get("pool")
        if pool is not None:
            pool.close()

    def today(self) -> dt.date:
        """Return today in the centre's time zone."""
        return dt.datetime.fromtimestamp(self.clock(), self.tz).date()


def _origin_ok(request: Request, public_origin: str | None) -> bool:
    own = {f"{request.url.scheme}://{request.headers.get('host', '')}".lower()}
    if public_origin:
        own.add(public_origin.rstrip("/").lower())
    origin = request.headers.get("origin")
    if origin is not None and origin.lower() not in own:
        return False
    return request.headers.get("sec-fetch-site", "same-origin") in ("same-origin", "none")


async def _body(request: Request) -> bytes | None:
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > BODY_MAX:
            return None
    return raw


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_screen_app(sc: Screen) -> ASGIApp:
    """Return the screen's app (the endpoints above) behind the board's security headers; ``sc`` must be open."""

    def secure(request: Request) -> bool:
        return request.url.scheme == "https" or (sc.public_origin or "").lower().startswith("https://")

    def session_of(request: Request) -> Session | None:
        return sc.sessions.check(request.cookies.get(COOKIE))

    Handler = Callable[[Request, Session], Awaitable[Response]]

    def need(role: str, *, page: bool = False) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
        def wrap(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
            async def endpoint(request: Request) -> Response:
                session = await run_in_threadpool(session_of, request)
                if session is None:
                    return RedirectResponse("/login", status_code=303) if page else _error("login required", 401)
                if not allowed(session.role, role):
                    return _error(f"{role} role required", 403)
                if request.method not in ("GET", "HEAD"):
                    if not _origin_ok(request, sc.public_origin):
                        return _error("cross-site request refused", 403)
                    if request.url.path.startswith("/api/") and request.headers.get("content-type", "").split(";")[0] != "application/json":
                        return _error("expected application/json", 415)
                try:
                    return await handler(request, session)
                except psycopg.Error as exc:
                    log.error("centre screen database error path=%s error=%s", request.url.path, str(exc).strip()[:300])
                    return _error("database unavailable", 503)

            return endpoint

        return wrap

    async def json_body(request: Request) -> dict[str, Any] | None:
        raw = await _body(request)
        if raw is None:
            return None
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return None
        return body if isinstance(body, dict) else None

    async def login_page(request: Request) -> Response:
        if await run_in_threadpool(session_of, request) is not None:
            return RedirectResponse("/", status_code=303)
        html = (STATIC / "centre-login.html").read_text(encoding="utf-8")
        error = LOGIN_ERRORS.get(request.query_params.get("e", ""), "")  # a fixed text, never the query itself
        return Response(html.replace("<!--ERROR-->", error), media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-store"})

    async def login(request: Request) -> Response:
        if not _origin_ok(request, sc.public_origin):
            return RedirectResponse("/login?e=origin", status_code=303)
        raw = await _body(request)
        if raw is None:
            return Response("form too large", status_code=413)
        form = parse_qs(raw.decode("utf-8", "replace"), max_num_fields=8)
        name = (form.get("user") or [""])[0].strip()
        password = (form.get("password") or [""])[0]
        ip = request.client.host if request.client else "?"
        if not sc.per_ip.allow(ip) or not sc.per_user.allow(name[:64]):
            log.warning("centre login rate-limited user=%r ip=%s", name[:64], ip)
            return RedirectResponse("/login?e=limited", status_code=303)
        try:
            user = await run_in_threadpool(sc.users.authenticate, name, password)
        except AuthError as exc:
            log.error("centre login: users unreadable error=%s", exc)
            user = None
        if user is None:
            sc.failures += 1
            log.warning("centre login refused user=%r ip=%s", name[:64], ip)
            return RedirectResponse("/login?e=bad", status_code=303)
        cookie, _session = sc.sessions.issue(user)
        log.info("centre login user=%s role=%s ip=%s", user.name, user.role, ip)
        response = RedirectResponse("/", status_code=303)
        response.headers.append("set-cookie", cookie_header(cookie, secure=secure(request), max_age=int(sc.sessions.ttl_s)))
        return response

    async def logout(request: Request) -> Response:
        session = await run_in_threadpool(session_of, request)
        if session is not None and _origin_ok(request, sc.public_origin):
            await run_in_threadpool(sc.sessions.revoke, session)
            log.info("centre logout user=%s", session.user)
        response = RedirectResponse("/login", status_code=303)
        response.headers.append("set-cookie", cookie_header("", secure=secure(request), max_age=0))
        return response

    @need("viewer")
    async def whoami(request: Request, session: Session) -> Response:
        return JSONResponse({"user": session.user, "role": session.role, "expires": session.expires})

    def _dashboard(path: str) -> dict[str, Any] | None:
        with sc.pool.connection() as conn:
            version, text = screen.load_tree_text(conn)
            tree = parse_tree(text)
            if isinstance(tree, TreeError):  # a stored version was valid when saved; a newer parser may disagree
                raise RuntimeError(f"stored tree version {version} no longer parses: {tree}")
            today = sc.today()
            rows = sc.cache.get(conn, today, today, sc.tz)
            before = sc.cache.get(conn, today - dt.timedelta(days=7), today, sc.tz)
            stations = screen.known_stations(conn)
        try:
            now_hour = dt.datetime.fromtimestamp(sc.clock(), sc.tz).hour
            body = screen.dashboard(tree, rows, before, stations, path, now_hour)
        except KeyError:
            return None
        body["tree_version"] = version
        return body

    @need("viewer")
    async def dashboard(request: Request, session: Session) -> Response:
        path = request.query_params.get("node", "")[:400]
        body = await run_in_threadpool(_dashboard, path)
        if body is None:
            return _error("no such node", 404)
        return JSONResponse(body)

    def _alarms() -> list[dict[str, Any]]:
        since = dt.datetime.fromtimestamp(sc.clock() - ALARM_WINDOW_S, dt.UTC)
        with sc.pool.connection() as conn:
            return screen.alarms(conn, since)

    @need("viewer")
    async def alarms(request: Request, session: Session) -> Response:
        return JSONResponse({"alarms": await run_in_threadpool(_alarms)})

    def alarm_key(body: dict[str, Any]) -> tuple[str, str, str] | None:
        site, station, event_id = (body.get(k) for k in ("site", "station", "event_id"))
        if not (isinstance(site, str) and isinstance(station, str) and isinstance(event_id, str)):
            return None
        if not (SEGMENT.match(site) and SEGMENT.match(station) and EVENT_ID.match(event_id)):
            return None
        return site, station, event_id

    @need("tracer")
    async def alarm_ack(request: Request, session: Session) -> Response:
        body = await json_body(request)
        key = alarm_key(body) if body is not None else None
        if key is None:
            return _error("expected {site, station, event_id}", 400)

        def act() -> None:
            with sc.pool.connection() as conn:
                screen.acknowledge(conn, *key, session.user, session.role)

        try:
            await run_in_threadpool(act)
        except screen.AlarmError as exc:
            return _error(str(exc), exc.status)
        mirrored = await run_in_threadpool(sc.mirror_to_station, key, "acknowledged", session.user)
        return JSONResponse({"ok": True, "state": "acknowledged", "by": session.user, "mirrored": mirrored})

    @need("tracer")
    async def alarm_close(request: Request, session: Session) -> Response:
        body = await json_body(request)
        key = alarm_key(body) if body is not None else None
        note = body.get("note") if body is not None else None
        if key is None:
            return _error("expected {site, station, event_id, note}", 400)
        if not isinstance(note, str) or not 1 <= len(note.strip()) <= screen.NOTE_MAX:
            return _error(f"note: 1-{screen.NOTE_MAX} characters required to close an alarm", 400)
        clean = "".join(c if c.isprintable() or c == "\n" else " " for c in note.strip())

        def act() -> None:
            with sc.pool.connection() as conn:
                screen.close(conn, *key, clean, session.user, session.role)

        try:
            await run_in_threadpool(act)
        except screen.AlarmError as exc:
            return _error(str(exc), exc.status)
        mirrored = await run_in_threadpool(sc.mirror_to_station, key, "closed", session.user, clean)
        return JSONResponse({"ok": True, "state": "closed", "by": session.user, "mirrored": mirrored})

    @need("viewer")
    async def tree_get(request: Request, session: Session) -> Response:
        def read() -> tuple[int, str]:
            with sc.pool.connection() as conn:
                return screen.load_tree_text(conn)

        version, text = await run_in_threadpool(read)
        return JSONResponse({"version": version, "toml": text})

    @need("admin")
    async def tree_edit(request: Request, session: Session) -> Response:
        body = await json_body(request)
        if body is None or not isinstance(body.get("version"), int):
            return _error("expected {version, op, …}", 400)

        def act() -> int:
            with sc.pool.connection() as conn:
                return screen.edit_tree(conn, body["version"], body, session.user, session.role)

        try:
            version = await run_in_threadpool(act)
        except TreeError as exc:
            return JSONResponse({"error": str(exc), "problems": exc.problems}, status_code=400)
        except screen.TreeConflict as exc:
            return _error(str(exc), 409)
        sc.cache.clear()
        return JSONResponse({"ok": True, "version": version})

    @need("admin")
    async def audit(request: Request, session: Session) -> Response:
        def read() -> list[dict[str, Any]]:
            with sc.pool.connection() as conn:
                return screen.recent_audit(conn)

        return JSONResponse({"audit": await run_in_threadpool(read)})

    app = Starlette(
        routes=[
            Route("/login", login_page, methods=["GET"]),
            Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"]),
            *page_routes(need, "/", "centre.html", "viewer", "/static/{name}", FILES),
            Route("/api/whoami", whoami),
            Route("/api/dashboard", dashboard),
            Route("/api/alarms", alarms),
            Route("/api/alarms/ack", alarm_ack, methods=["POST"]),
            Route("/api/alarms/close", alarm_close, methods=["POST"]),
            Route("/api/tree", tree_get),
            Route("/api/tree/edit", tree_edit, methods=["POST"]),
            Route("/api/audit", audit),
            *live_routes(sc, need, json_body),
            *fleet_routes(sc, need),
            *trace_routes(sc, need, json_body),
            *report_routes(sc, need),
        ]
    )
    return SecurityHeaders(app)
