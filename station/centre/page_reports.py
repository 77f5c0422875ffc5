"""The centre's printable reports page, for every role, over station/centre/reports.py.

* ``GET /reports`` — the page (static/reports.html, reports.js; print CSS: A4, no controls, a table
  per tree level);
* ``GET /api/reports?day=YYYY-MM-DD|week=YYYY-Www[&node=PATH][&format=json|csv]`` — a day's or an ISO
  week's report (``reports.period_report``: counted from the database, each event once), rolled up
  along the saved district tree and cut to the subtree at ``node``.

Bad parameters are refused with 400 naming the field; an unknown node is 404.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from station.board.auth import Session
from station.centre import reports, screen
from station.centre.page_files import Need, page_routes
from station.centre.page_trace import PATH_MAX, BadParam
from station.centre.tree import UNASSIGNED, TreeError, parse_tree

if TYPE_CHECKING:
    from station.centre.page import Screen

FILES = {"reports.js": "text/javascript; charset=utf-8", "pages.css": "text/css; charset=utf-8"}
_DAY = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
_WEEK = re.compile(r"^(\d{4})-W(\d{2})$")


class NoSuchNode(LookupError):
    """The report was asked for a node the saved tree does not have."""


def parse_period(query: Mapping[str, str]) -> tuple[dt.date, int]:
    """Return the first day and the number of days (1 or 7) of ``day=`` or ``week=``; raise :class:`BadParam` naming the field."""
    day, week = query.get("day") or None, query.get("week") or None
    if (day is None) == (week is None):
        raise BadParam("day", "give one of day=YYYY-MM-DD or week=YYYY-Www")
    if day is not None:
        if len(day) > 10 or not _DAY.match(day):
            raise BadParam("day", "expected YYYY-MM-DD")
        try:
            first = dt.date.fromisoformat(day)
        except ValueError:
            raise BadParam("day", f"{day!r} is not a date") from None
        days = 1
    else:
        m = _WEEK.match(week or "") if len(week or "") <= 8 else None
        if m is None:
            raise BadParam("week", "expected YYYY-Www (an ISO week, 2026-W49)")
        try:
            first = dt.date.fromisocalendar(int(m[1]), int(m[2]), 1)
        except ValueError:
            raise BadParam("week", f"{week!r}: that year has no such ISO week") from None
        days = 7
    if not 2001 <= first.year <= 2100:
        raise BadParam("week" if week else "day", "a year from 2001 to 2100")
    return first, days


def parse_node(query: Mapping[str, str]) -> str:
    """Return the ``node`` path (the district: empty); raise :class:`BadParam` when it is too long or not text."""
    node = query.get("node", "")
    if len(node) > PATH_MAX or not all(c.isprintable() for c in node):
        raise BadParam("node", "a tree path (town/grid/checkpoint)")
    return node.strip("/")


def parse_format(query: Mapping[str, str]) -> str:
    """Return ``json`` or ``csv``; raise :class:`BadParam` otherwise."""
    fmt = query.get("format", "json")
    if fmt not in ("json", "csv"):
        raise BadParam("format", "json or csv")
    return fmt


def _find(node: dict[str, Any], path: str) -> dict[str, Any] | None:
    if node.get("path") == path:
        return node
    for child in node.get("children", []):
        found = _find(child, path)
        if found is not None:
            return found
    return None


def _stations_of(node: dict[str, Any]) -> set[tuple[str, str]]:
    out = {(s["site"], s["station"]) for s in node.get("stations", [])}
    for child in node.get("children", []):
        out |= _stations_of(child)
    return out


def cut_to_node(body: dict[str, Any], path: str) -> dict[str, Any]:
    """Return the report cut to the subtree at ``path`` (its totals, its nodes, its stations); raise :class:`NoSuchNode`."""
    if not path:
        return body
    sub = _find(body["tree"], path)
    if sub is None:
        raise NoSuchNode(path)
    members = _stations_of(sub)
    totals = dict.fromkeys(reports.COUNTERS, 0) | sub["totals"]
    return {
        **body,
        "node": path,
        "totals": totals,
        "tree": sub,
        "stations": [s for s in body["stations"] if (s["site"], s["station"]) in members],
    }


def report_routes(sc: Screen, need: Need) -> list[Route]:
    """Return the reports page's routes; ``need`` is the screen's role check (page.py)."""

    def build(first: dt.date, days: int, node: str) -> dict[str, Any]:
        with sc.pool.connection() as conn:
            version, text = screen.load_tree_text(conn)
            tree = parse_tree(text)
            if isinstance(tree, TreeError):  # a saved version parsed when saved; a newer parser may disagree
                raise RuntimeError(f"stored tree version {version} no longer parses: {tree}")
            body = reports.period_report(conn, first, days, sc.tz, tree)
        body["tree_version"] = version
        body["generated_at"] = dt.datetime.fromtimestamp(sc.clock(), sc.tz).isoformat(timespec="seconds")
        body["node"] = node
        return cut_to_node(body, node)

    @need("viewer")
    async def api(request: Request, session: Session) -> Response:
        try:
            first, days = parse_period(request.query_params)
            node = parse_node(request.query_params)
            fmt = parse_format(request.query_params)
        except BadParam as exc:
            return JSONResponse({"error": str(exc), "field": exc.field}, status_code=400)
        try:
            body = await run_in_threadpool(build, first, days, node)
        except NoSuchNode:
            return JSONResponse({"error": "node: no such node in the district tree", "field": "node"}, status_code=404)
        if fmt == "csv":
            where = (node or "district").replace("/", "-") if node != UNASSIGNED else UNASSIGNED
            name = f"report-{where}-{body['from']}{'' if days == 1 else '-week'}.csv"
            headers = {"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"}
            return Response(reports.report_csv(body), media_type="text/csv; charset=utf-8", headers=headers)
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    return [
        *page_routes(need, "/reports", "reports.html", "viewer", "/static/reports/{name}", FILES),
        Route("/api/reports", api),
    ]
