"""The centre's tracing page (可溯) for the tracer and admin roles, over station/centre/tracing.py.

* ``GET /trace`` — the page (static/trace.html, trace.js; DOM built with ``textContent`` only);
* ``GET /api/trace/info`` — the district key ids this replica holds, the domains it can trace, the
  centre's time zone, and the stations and tree nodes a fever query can name;
* ``POST /api/trace/seen`` ``{domain, value, days, reason, format}`` — where and when a code holder
  (``holder``, alias ``code``), an ID card (``idcard``), a plate (``plate``) or a trace reference
  (``ref``) was seen in the last ``days`` days;
* ``POST /api/trace/fever`` ``{station: "site/station" | node: PATH, from, to, fever_c, reason, format}``
  — who passed a station (or every station under a tree node) with a fever;
* ``GET /api/trace/history`` — the caller's own audited queries (an admin: everyone's).

The typed value is turned into references here, under the district key file(s) this replica was
started with (``station centre run --district-key-file``); the key is never in PostgreSQL and the
value never leaves this process: the audit row (``trace_audit``, written by tracing.py in the
transaction that reads the answer) names the references, the reason, who and their role.
``format: "csv"`` answers a CSV file and is audited as an export (``params.export = "csv"``).
Bad parameters are refused with 400 naming the field, before anything is read.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from station.board.auth import Session
from station.board.schema import SEGMENT
from station.centre import screen, tracing
from station.centre.db import ddl_lock
from station.centre.page_files import JsonBody, Need, page_routes
from station.centre.tree import UNASSIGNED, TreeError, parse_tree, stations_under

if TYPE_CHECKING:
    from station.centre.page import Screen

log = logging.getLogger("station.centre.page_trace")

FILES = {
    "trace.js": "text/javascript; charset=utf-8",
    "pages.css": "text/css; charset=utf-8",
}
# What a tracer may type, and what it is hashed as (station/codes/trace_key.py DOMAINS; "ref": a reference itself).
DOMAINS = {"holder": "holder", "code": "holder", "idcard": "idcard", "plate": "plate", "ref": "ref"}
VALUE_MAX = 128
REASON_MAX = 1000
DEFAULT_DAYS = 14
DISPLAY_MAX = 2000  # rows sent to the page; the CSV has them all
MAX_FEVER_STATIONS = 50
FEVER_C_RANGE = (30.0, 45.0)
PATH_MAX = 400
_PATH = re.compile(r"^[a-z0-9_-]{1,64}(/[a-z0-9_-]{1,64}){0,3}$")


class BadParam(ValueError):
    """A request parameter that cannot be used; ``field`` names it, the message says what is allowed."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True, slots=True)
class SeenQuery:
    """A checked "where was this seen" request (``value`` is the tracer's raw text: never stored)."""

    domain: str
    value: str
    days: int
    reason: str
    export: str | None


@dataclass(frozen=True, slots=True)
class FeverQuery:
    """A checked "who passed with a fever" request: one station or a tree node, a window, a threshold."""

    station: tuple[str, str] | None
    node: str | None
    start: dt.datetime
    end: dt.datetime
    fever_c: float
    reason: str
    export: str | None


def _printable(text: str) -> str:
    """Return ``text`` with control, bidi and unpaired-surrogate characters made spaces (PostgreSQL refuses NUL)."""
    return "".join(c if c.isprintable() else " " for c in text)


def _reason(body: Mapping[str, Any]) -> str:
    reason = body.get("reason", "")
    if not isinstance(reason, str):
        raise BadParam("reason", "a text is required (why this trace is needed)")
    if len(reason) > REASON_MAX:
        raise BadParam("reason", f"at most {REASON_MAX} characters")
    return _printable(reason)  # too short is refused by tracing.py, and audited there


def _export(body: Mapping[str, Any]) -> str | None:
    fmt = body.get("format", "json")
    if fmt not in ("json", "csv"):
        raise BadParam("format", "json or csv")
    return "csv" if fmt == "csv" else None


def parse_seen(body: Any) -> SeenQuery:
    """Return the checked where-seen request; raise :class:`BadParam` naming the first bad field."""
    if not isinstance(body, dict):
        raise BadParam("body", "a JSON object {domain, value, days, reason} is required")
    domain = body.get("domain")
    if not isinstance(domain, str) or domain not in DOMAINS:
        raise BadParam("domain", f"one of {', '.join(DOMAINS)}")
    value = body.get("value")
    if not isinstance(value, str) or not value.strip():
        raise BadParam("value", "the code holder, ID number, plate or reference to trace is required")
    if len(value) > VALUE_MAX:
        raise BadParam("value", f"at most {VALUE_MAX} characters")
    value = _printable(value).strip()
    if DOMAINS[domain] == "ref" and not tracing.REF.match(value.lower()):
        raise BadParam("value", "a trace reference is 32 hex characters")
    days = body.get("days", DEFAULT_DAYS)
    if isinstance(days, str) and days.strip().isdigit() and len(days.strip()) <= 4:
        days = int(days.strip())  # a form's number input arrives as text
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= tracing.MAX_DAYS:
        raise BadParam("days", f"a whole number of days, 1-{tracing.MAX_DAYS}")
    return SeenQuery(DOMAINS[domain], value, days, _reason(body), _export(body))


def parse_when(text: Any, field: str, tz: ZoneInfo) -> dt.datetime:
    """Return the time ``text`` (ISO 8601; without a zone: the centre's ``tz``); raise :class:`BadParam` naming ``field``."""
    if not isinstance(text, str) or not 10 <= len(text.strip()) <= 40:
        raise BadParam(field, "an ISO 8601 time is required (2026-12-04T08:00 or 2026-12-04T08:00+08:00)")
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadParam(field, f"{text.strip()[:40]!r} is not an ISO 8601 time (2026-12-04T08:00)") from None
    if not 2001 <= when.year <= 2100:
        raise BadParam(field, "a year from 2001 to 2100")
    return when if when.tzinfo is not None else when.replace(tzinfo=tz)


def parse_fever(body: Any, tz: ZoneInfo) -> FeverQuery:
    """Return the checked fever request; raise :class:`BadParam` naming the first bad field."""
    if not isinstance(body, dict):
        raise BadParam("body", "a JSON object {station or node, from, to, reason} is required")
    station, node = body.get("station"), body.get("node")
    where: tuple[str, str] | None = None
    if station not in (None, ""):
        site, sep, name = station.partition("/") if isinstance(station, str) else ("", "", "")
        if not sep or not SEGMENT.match(site) or not SEGMENT.match(name):
            raise BadParam("station", "site/station (letters, digits, '_' and '-')")
        where = (site, name)
        node = None
    elif node not in (None, ""):
        if not isinstance(node, str) or len(node) > PATH_MAX or not (node == UNASSIGNED or _PATH.match(node)):
            raise BadParam("node", "a tree path (town/grid/checkpoint) or 'unassigned'")
    else:
        raise BadParam("station", "give a station (site/station) or a tree node")
    start, end = parse_when(body.get("from"), "from", tz), parse_when(body.get("to"), "to", tz)
    if end <= start:
        raise BadParam("to", "must be after from")
    if end - start > dt.timedelta(days=tracing.MAX_DAYS):
        raise BadParam("to", f"a window of at most {tracing.MAX_DAYS} days")
    fever_c = body.get("fever_c", tracing.DEFAULT_FEVER_C)
    if isinstance(fever_c, str):
        try:
            fever_c = float(fever_c)
        except ValueError:
            raise BadParam("fever_c", "a temperature in °C") from None
    if isinstance(fever_c, bool) or not isinstance(fever_c, int | float) or not FEVER_C_RANGE[0] <= fever_c <= FEVER_C_RANGE[1]:
        raise BadParam("fever_c", f"a temperature from {FEVER_C_RANGE[0]} to {FEVER_C_RANGE[1]} °C")
    return FeverQuery(where, node if isinstance(node, str) else None, start, end, float(fever_c), _reason(body), _export(body))


def _cell(value: Any) -> Any:
    return value.astimezone(dt.UTC).isoformat() if isinstance(value, dt.datetime) else value


def rows_json(query: str, rows: Sequence[dict[str, Any]], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Return the answer the page shows: at most ``DISPLAY_MAX`` rows (times ISO 8601 UTC), the count, the columns."""
    shown = [{k: _cell(v) for k, v in r.items()} for r in rows[:DISPLAY_MAX]]
    return {
        "query": query,
        "columns": list(tracing.COLUMNS),
        "count": len(rows),
        "truncated": len(rows) > DISPLAY_MAX,
        "rows": shown,
        **extra,
    }


def _error(message: str, status: int, field: str | None = None, **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {"error": message, **extra}
    if field:
        body["field"] = field
    return JSONResponse(body, status_code=status)


def _csv(query: str, rows: Sequence[dict[str, Any]]) -> Response:
    name = f"trace-{query}-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.csv"
    headers = {"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"}
    return Response(tracing.to_csv(rows), media_type="text/csv; charset=utf-8", headers=headers)


def trace_routes(sc: Screen, need: Need, json_body: JsonBody) -> list[Route]:
    """Return the tracing page's routes; ``need`` and ``json_body`` are the screen's role check and body reader (page.py)."""
    schema_ready = threading.Event()

    def ensure(conn: Any) -> None:
        if not schema_ready.is_set():
            with conn.transaction():
                ddl_lock(conn)  # replicas answering their first trace together must not race on CREATE TABLE
                tracing.ensure_tracing_schema(conn)
            schema_ready.set()

    def keys() -> list[tracing.DistrictKey]:
        return list(getattr(sc, "district_keys", ()) or ())

    def _places() -> tuple[list[str], list[dict[str, str]]]:
        with sc.pool.connection() as conn:
            _, text = screen.load_tree_text(conn)
            known = screen.known_stations(conn)
        tree = parse_tree(text)
        nodes = [] if isinstance(tree, TreeError) else sorted(tree.nodes().values(), key=lambda n: n.path)
        listed = [{"path": n.path, "name": n.name, "level": n.level} for n in nodes if n.path]
        return [f"{a}/{b}" for a, b in known], listed

    @need("tracer")
    async def info(request: Request, session: Session) -> Response:
        held = keys()
        stations, nodes = await run_in_threadpool(_places)
        return JSONResponse(
            {
                "keys": [k.key_id for k in held],
                "domains": ["ref"] + (["holder", "idcard", "plate"] if held else []),
                "max_days": tracing.MAX_DAYS,
                "min_reason": tracing.MIN_REASON_CHARS,
                "timezone": str(sc.tz.key),
                "stations": stations,
                "nodes": nodes,
            }
        )

    @need("tracer")
    async def seen(request: Request, session: Session) -> Response:
        body = await json_body(request)
        try:
            q = parse_seen(body)
        except BadParam as exc:
            return _error(str(exc), 400, exc.field)
        if q.domain == "ref":
            refs = [q.value.lower()]
        elif not keys():
            return _error("domain: tracing by holder, ID card or plate needs the district key (--district-key-file)", 400, "domain")
        else:
            refs = tracing.refs_for(q.domain, q.value, keys())

        def run() -> list[dict[str, Any]]:
            with sc.pool.connection() as conn:
                ensure(conn)
                return tracing.where_seen(conn, session.user, q.reason, refs, days=q.days, export=q.export)

        try:
            rows = await run_in_threadpool(run)
        except tracing.TraceRefused as exc:
            return _error(str(exc), 400, "reason" if "reason" in str(exc) else None, audited=True)
        log.info("trace where_seen user=%s refs=%d days=%d rows=%d export=%s", session.user, len(refs), q.days, len(rows), q.export)
        if q.export:
            return _csv("seen", rows)
        return JSONResponse(rows_json("where_seen", rows, {"refs": sorted(set(refs)), "days": q.days}))

    def _fever_stations(q: FeverQuery) -> list[tuple[str, str]]:
        if q.station is not None:
            return [q.station]
        with sc.pool.connection() as conn:
            _, text = screen.load_tree_text(conn)
            known = screen.known_stations(conn)
        tree = parse_tree(text)
        if isinstance(tree, TreeError):
            raise RuntimeError(f"the saved tree no longer parses: {tree}")
        if q.node != UNASSIGNED and q.node not in tree.nodes():
            raise BadParam("node", "no such node in the district tree")
        return stations_under(tree, q.node or "", known)

    @need("tracer")
    async def fever(request: Request, session: Session) -> Response:
        body = await json_body(request)
        try:
            q = parse_fever(body, sc.tz)
            stations = await run_in_threadpool(_fever_stations, q)
        except BadParam as exc:
            return _error(str(exc), 400, exc.field)
        if not stations:
            return _error("node: no station is placed under this node", 400, "node")
        if len(stations) > MAX_FEVER_STATIONS:
            return _error(f"node: {len(stations)} stations under it; choose a node with at most {MAX_FEVER_STATIONS}", 400, "node")

        def run() -> list[dict[str, Any]]:
            rows: list[dict[str, Any]] = []
            with sc.pool.connection() as conn:
                ensure(conn)
                for site, name in stations:  # one audited query per station, each with the reason
                    rows += tracing.fever_passages(
                        conn, session.user, q.reason, site, name, q.start, q.end, fever_c=q.fever_c, export=q.export
                    )
            rows.sort(key=lambda r: (r["ts"], r["site"], r["station"]))
            return rows

        try:
            rows = await run_in_threadpool(run)
        except tracing.TraceRefused as exc:
            return _error(str(exc), 400, "reason" if "reason" in str(exc) else None, audited=True)
        log.info("trace fever_passages user=%s stations=%d rows=%d export=%s", session.user, len(stations), len(rows), q.export)
        if q.export:
            return _csv("fever", rows)
        extra = {"stations": [f"{a}/{b}" for a, b in stations], "from": q.start.isoformat(), "to": q.end.isoformat()}
        return JSONResponse(rows_json("fever_passages", rows, extra))

    @need("tracer")
    async def history(request: Request, session: Session) -> Response:
        def read() -> list[dict[str, Any]]:
            with sc.pool.connection() as conn:
                ensure(conn)
                mine = None if session.role == "admin" else session.user
                return tracing.audit_log(conn, 50, user=mine)

        rows = await run_in_threadpool(read)
        return Response(
            json.dumps({"audit": rows}, default=_cell, ensure_ascii=False),
            media_type="application/json",
            headers={"Cache-Control": "no-store"},
        )

    return [
        *page_routes(need, "/trace", "trace.html", "tracer", "/static/trace/{name}", FILES),
        Route("/api/trace/info", info),
        Route("/api/trace/seen", seen, methods=["POST"]),
        Route("/api/trace/fever", fever, methods=["POST"]),
        Route("/api/trace/history", history),
    ]
