"""The big screen's live picture and wait-time endpoints (mounted by station/centre/page.py; every one needs a login).

* ``GET /api/snapshot?site=&station=`` — the station's newest picture as the station sent it
  (image/jpeg, faces blurred by the station, ``Cache-Control: no-store``); 404 when none is held;
* ``GET /api/live?node=PATH`` — the stations of a checkpoint tile (or an unassigned station's tile,
  ``unassigned/<site>/<station>``) with their pictures' metadata;
* ``POST /api/watch`` ``{site, station}`` — a page that has the picture open renews its watch every few
  seconds; the replica sends the station a signed ``watch`` lease when due (station/centre/live.py),
  only to a station whose picture it holds;
* ``GET /api/wait?node=PATH`` — today's time at the gate per hour, median and p95 (station/centre/wait.py);
* ``GET /api/live/stats`` — this replica's pictures held, their bytes, and every verdict counted (hostile ones too).

Any logged-in role may do all four: watching changes only how often a station sends the picture it
already sends, and the command is the centre's (signed by its key, rate-limited per station), not
the user's.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from station.board.auth import Session
from station.centre import screen, wait
from station.centre.live import segment
from station.centre.page_files import JsonBody, Need
from station.centre.tree import UNASSIGNED, TreeError, parse_tree

log = logging.getLogger("station.centre.page_live")

NODE_MAX = 400
STATIONS_PER_TILE = 16


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _station(site: Any, station: Any) -> tuple[str, str] | None:
    s, st = segment(site), segment(station)
    return (s, st) if s is not None and st is not None else None


def routes(sc: Any, need: Need, json_body: JsonBody) -> list[Route]:
    """Return the routes above for the screen ``sc`` (page.Screen), wrapped in its ``need`` role check."""
    waits = wait.WaitCache()

    def tree_and_stations() -> tuple[Any, list[tuple[str, str]]]:
        with sc.pool.connection() as conn:
            _version, text = screen.load_tree_text(conn)
            stations = screen.known_stations(conn)
        tree = parse_tree(text)
        if isinstance(tree, TreeError):
            raise RuntimeError(f"stored tree no longer parses: {tree}")
        return tree, stations

    @need("viewer")
    async def snapshot(request: Request, session: Session) -> Response:
        key = _station(request.query_params.get("site"), request.query_params.get("station"))
        if key is None:
            return _error("expected ?site=&station= (1-64 of A-Z a-z 0-9 _ -)", 400)
        picture = sc.live.store.get(*key) if sc.live is not None else None
        if picture is None:
            return Response(status_code=404, headers={"Cache-Control": "no-store"})
        return Response(
            picture.jpeg,
            media_type="image/jpeg",
            headers={"Cache-Control": "no-store", "X-Snapshot-Ts": f"{picture.ts:.3f}", "X-Snapshot-Blur": str(picture.blur)},
        )

    def tile_stations(path: str) -> list[tuple[str, str]] | None:
        parts = path.split("/")
        if len(parts) == 3 and parts[0] == UNASSIGNED:  # the tile of a station nobody placed (screen._leaves)
            key = _station(parts[1], parts[2])
            return [key] if key is not None else None
        tree, stations = tree_and_stations()
        members = wait.node_members(tree, stations, path)
        return sorted(members)[:STATIONS_PER_TILE] if members is not None else None

    @need("viewer")
    async def live(request: Request, session: Session) -> Response:
        path = request.query_params.get("node", "")[:NODE_MAX]
        stations = await run_in_threadpool(tile_stations, path)
        if stations is None:
            return _error("no such node", 404)
        out = []
        for site, station in stations:
            picture = sc.live.store.get(site, station) if sc.live is not None else None
            out.append({"site": site, "station": station, "picture": picture.meta() if picture is not None else None})
        return JSONResponse(
            {"node": path, "stations": out, "live": sc.live is not None, "signing": bool(sc.live is not None and sc.live.key is not None)},
            headers={"Cache-Control": "no-store"},
        )

    @need("viewer")
    async def watch(request: Request, session: Session) -> Response:
        body = await json_body(request)
        key = _station(body.get("site"), body.get("station")) if body is not None else None
        if key is None:
            return _error("expected {site, station}", 400)
        if sc.live is None:
            return _error("live pictures are off at this centre", 503)
        if sc.live.store.get(*key) is None:  # only a station that sends pictures is told to send them faster:
            # a page cannot make the centre sign commands for names it makes up
            return JSONResponse({"watch": {"sent": False, "why": "no_picture"}, "picture": None})
        state = await run_in_threadpool(sc.live.watch, *key)
        if state["sent"]:
            log.info("watch renewed by=%s site=%s station=%s", session.user, *key)
        picture = sc.live.store.get(*key)
        return JSONResponse({"watch": state, "picture": picture.meta() if picture is not None else None})

    @need("viewer")
    async def wait_chart(request: Request, session: Session) -> Response:
        path = request.query_params.get("node", "")[:NODE_MAX]

        def compute() -> dict[str, Any] | None:
            tree, stations = tree_and_stations()
            members = wait.node_members(tree, stations, path)
            if members is None:
                return None
            day = sc.today()
            with sc.pool.connection() as conn:
                body = wait.wait_by_hour(conn, day, sc.tz, None if path == "" else members)
            return dict(body, node=path)

        day = sc.today()
        body = await run_in_threadpool(waits.get, (path, day), compute)
        if body is None:
            return _error("no such node", 404)
        return JSONResponse(body)

    @need("viewer")
    async def live_stats(request: Request, session: Session) -> Response:
        return JSONResponse(sc.live.stats() if sc.live is not None else {"live": False})

    return [
        Route("/api/snapshot", snapshot),
        Route("/api/live/stats", live_stats),
        Route("/api/live", live),
        Route("/api/watch", watch, methods=["POST"]),
        Route("/api/wait", wait_chart),
    ]
