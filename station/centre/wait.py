"""The big screen's wait-time chart: per hour of today, the median and p95 of people's time at the gate, from PostgreSQL.

What is measured: every screening carries the station's stage times (``latency_ms``, from the
moment a person enters the screening zone: face, temperature, code, decision; ``total`` = decision).
The centre stores ``latency_ms.total`` as ``events.wait_ms`` (station/centre/parse.py) — the time a
person spends *at the gate*, entering the zone → the decision. The queue before the zone is not
measured by any station, so the chart says "time at the gate", not "time in the queue".

Computed in PostgreSQL (``percentile_cont``) over today's partition, screening rows only (an alarm
copy is the same person again), for the stations under the selected tree node; cached a few seconds
per node and replica like the rest of the screen.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

from station.centre import db
from station.centre.tree import Tree, rollup

WAIT_BY_HOUR = """
SELECT extract(hour FROM ts AT TIME ZONE %(tz)s)::int AS hour, count(*)::int,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY wait_ms), percentile_cont(0.95) WITHIN GROUP (ORDER BY wait_ms)
FROM events
WHERE ts >= %(start)s AND ts < %(end)s AND kind = 'screening' AND wait_ms IS NOT NULL {members}
GROUP BY 1 ORDER BY 1
"""
MEMBERS = "AND (site, station) IN (SELECT * FROM unnest(%(sites)s::text[], %(stations)s::text[]))"
CACHE_TTL_S = 10.0
CACHE_MAX = 256


def node_members(tree: Tree, stations: list[tuple[str, str]], path: str) -> set[tuple[str, str]] | None:
    """Return the stations under the tree node ``path`` (the root: every station); None when there is no such node."""
    body = rollup(tree, {}, stations)
    todo = [body]
    while todo:
        node = todo.pop()
        if node["path"] == path:
            out: set[tuple[str, str]] = set()
            inner = [node]
            while inner:
                each = inner.pop()
                out |= {(s["site"], s["station"]) for s in each.get("stations", [])}
                inner.extend(each.get("children", []))
            return out
        todo.extend(node.get("children", []))
    return None


def wait_by_hour(conn: psycopg.Connection[Any], day: dt.date, tz: ZoneInfo, members: set[tuple[str, str]] | None) -> dict[str, Any]:
    """Return per hour (24 each, None where nobody was screened) the screenings with a time, the median and p95 in ms.

    ``members`` None means every station (the district's root: no filter).
    """
    start, end = db.day_bounds(day, tz)
    params: dict[str, Any] = {"tz": tz.key, "start": start, "end": end}
    if members is None:
        sql = WAIT_BY_HOUR.format(members="")
    else:
        ordered = sorted(members)
        params |= {"sites": [s for s, _ in ordered], "stations": [st for _, st in ordered]}
        sql = WAIT_BY_HOUR.format(members=MEMBERS)
    t0 = time.perf_counter()
    rows = conn.execute(sql, params).fetchall() if members is None or members else []
    n: list[int] = [0] * 24
    median: list[float | None] = [None] * 24
    p95: list[float | None] = [None] * 24
    for hour, count, p50, p95_ in rows:
        if 0 <= hour < 24:
            n[hour], median[hour], p95[hour] = int(count), round(float(p50), 1), round(float(p95_), 1)
    return {
        "day": day.isoformat(),
        "measure": "latency_ms.total: entering the screening zone -> decision (time at the gate; the queue before it is not measured)",
        "screenings": n,
        "median_ms": median,
        "p95_ms": p95,
        "query_ms": round((time.perf_counter() - t0) * 1000, 1),
    }


class WaitCache:
    """A node's chart for ``ttl_s`` per replica: N screens cost one query per node and period."""

    def __init__(self, ttl_s: float = CACHE_TTL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s, self.clock = ttl_s, clock
        self._hits: dict[tuple[str, dt.date], tuple[float, dict[str, Any] | None]] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple[str, dt.date], compute: Callable[[], dict[str, Any] | None]) -> dict[str, Any] | None:
        """Return the cached body for ``key`` while fresh, else ``compute()`` it and keep it."""
        with self._lock:
            hit = self._hits.get(key)
            if hit is not None and self.clock() - hit[0] < self.ttl_s:
                return hit[1]
        body = compute()
        with self._lock:
            if len(self._hits) >= CACHE_MAX:
                self._hits.clear()
            self._hits[key] = (self.clock(), body)
        return body
