"""The big screen's database side: the stored district tree, the dashboard roll-ups, the alarm queue, shared sessions.

Tables (beside ``station/centre/db.py``'s; created by :func:`ensure_screen_schema`):

* ``centre_tree`` — every saved version of the registry's TOML text (``version`` is the key: two admins
  saving on the same version collide, the second is told to reload — nothing is overwritten unseen);
* ``centre_alarms`` — what the centre did about an alarm (acknowledged, closed, by whom, when, the
  note); the alarm itself is the station's event row;
* ``centre_sessions_revoked`` — logged-out session ids until they would have expired, shared by replicas;
* index ``events_alarm_queue`` — a partial index on ``events (ts)`` holding only fever/denied/alarm rows:
  the queue reads a few hundred index entries however big the day is.

Dashboard roll-ups read one day of ``events`` (partition pruning on ``ts``, the partition key:
a day's query touches that day's partition only) grouped by station, hour, decision and code
colour — one hash aggregate that every tree node's totals and charts are summed from in Python, so
the cost does not grow with the number of nodes or screens (results are cached a few seconds per
replica). An alarm copy is counted only when its screening copy is missing (anti-join on the
``events_station_seq`` index).
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

from station.centre import db
from station.centre.tree import EMPTY, UNASSIGNED, Tree, TreeError, apply_edit, parse_tree, rollup

log = logging.getLogger("station.centre.screen")

SCREEN_SCHEMA = """
CREATE TABLE IF NOT EXISTS centre_tree (
  version bigint PRIMARY KEY,
  toml text NOT NULL,
  saved_by text NOT NULL,
  saved_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS centre_alarms (
  site text NOT NULL, station text NOT NULL, event_id text NOT NULL,
  event_ts timestamptz NOT NULL,
  state text NOT NULL CHECK (state IN ('acknowledged', 'closed')),
  ack_by text NOT NULL, ack_at timestamptz NOT NULL,
  closed_by text, closed_at timestamptz, note text,
  PRIMARY KEY (site, station, event_id)
);
CREATE TABLE IF NOT EXISTS centre_sessions_revoked (sid text PRIMARY KEY, expires timestamptz NOT NULL);
CREATE INDEX IF NOT EXISTS events_alarm_queue ON events (ts)
  WHERE kind IN ('screening', 'alarm') AND (alarm OR decision IN ('deny_fever', 'deny_code'));
"""
ALARM_WHERE = "kind IN ('screening', 'alarm') AND (alarm OR decision IN ('deny_fever', 'deny_code'))"  # = the index's predicate
DECISION_KEYS = ("pass", "deny_fever", "deny_code", "manual_check", "retry")
COLOURS = ("green", "yellow", "red")
NOTE_MAX = 500
ALARM_DAYS = 30  # an alarm older than this can no longer be acknowledged or closed (bounds the partitions searched)
SPARKLINES_MAX = 60

HOURLY = """
SELECT site, station, extract(hour FROM ts AT TIME ZONE %(tz)s)::int AS hour, decision, code_colour, count(*)::int
FROM events e
WHERE ts >= %(start)s AND ts < %(end)s
  AND (kind = 'screening'
       OR (kind = 'alarm' AND NOT EXISTS (
             SELECT 1 FROM events s
             WHERE s.ts >= %(start)s AND s.ts < %(end)s
               AND s.site = e.site AND s.station = e.station AND s.ts = e.ts AND s.seq = e.seq AND s.kind = 'screening')))
GROUP BY 1, 2, 3, 4, 5
"""


class Pool:
    """A few autocommit connections for the web handlers (psycopg_pool is not a dependency); a broken one is dropped."""

    def __init__(self, url: str, size: int = 4) -> None:
        self.url = url
        self.size = size
        self._idle: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """Yield a connection; it goes back to the pool unless it failed."""
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None or conn.closed:
            conn = db.connect(self.url, autocommit=True)
        try:
            yield conn
        except BaseException:
            conn.close()
            raise
        with self._lock:
            if len(self._idle) < self.size and not conn.closed:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        """Close every idle connection."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def ensure_screen_schema(conn: psycopg.Connection[Any]) -> tuple[ZoneInfo, bytes]:
    """Create the screen's tables and index if missing; return the centre's time zone and the session-signing secret.

    The secret (32 random bytes, made once) lives in ``centre_meta`` so every replica signs and
    checks the same cookies.
    """
    tz = ZoneInfo(db.ensure_schema(conn))
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (db.DDL_LOCK,))
        conn.execute(SCREEN_SCHEMA)
        conn.execute(
            "INSERT INTO centre_meta (key, value) VALUES ('session_secret', %s) ON CONFLICT (key) DO NOTHING", (secrets.token_hex(32),)
        )
        row = conn.execute("SELECT value FROM centre_meta WHERE key = 'session_secret'").fetchone()
    assert row is not None
    return tz, bytes.fromhex(str(row[0]))


# --- the tree ------------------------------------------------------------------------------------


class TreeConflict(Exception):
    """Someone saved the tree since the version an edit was based on."""


def load_tree_text(conn: psycopg.Connection[Any]) -> tuple[int, str]:
    """Return the newest saved version and its TOML text (version 0 and an empty district before the first save)."""
    row = conn.execute("SELECT version, toml FROM centre_tree ORDER BY version DESC LIMIT 1").fetchone()
    return (int(row[0]), str(row[1])) if row else (0, EMPTY)


def save_tree(
    conn: psycopg.Connection[Any], base: int, text: str, actor: str, role: str | None, action: str, target: str, detail: Any = None
) -> int:
    """Store ``text`` as version ``base + 1`` and audit it in one transaction; raise :class:`TreeConflict` if taken.

    Raises :class:`TreeError` for a text that is not a valid registry.
    """
    parsed = parse_tree(text)
    if isinstance(parsed, TreeError):
        raise parsed
    try:
        with conn.transaction():
            conn.execute("INSERT INTO centre_tree (version, toml, saved_by) VALUES (%s, %s, %s)", (base + 1, text, actor))
            db.audit(conn, actor, role, action, target, {"version": base + 1, **(detail or {})})
    except psycopg.errors.UniqueViolation:
        raise TreeConflict(f"the tree was saved by someone else since version {base}: reload it") from None
    log.info("centre tree saved version=%d by=%s action=%s target=%s", base + 1, actor, action, target)
    return base + 1


def edit_tree(conn: psycopg.Connection[Any], base: int, edit: dict[str, Any], actor: str, role: str | None) -> int:
    """Apply one page edit to version ``base`` and save it (audited); raise :class:`TreeError` or :class:`TreeConflict`."""
    version, text = load_tree_text(conn)
    if version != base:
        raise TreeConflict(f"the tree is at version {version}, the edit was made on {base}: reload it")
    new_text, action, target = apply_edit(text, edit)
    detail = {k: v for k, v in edit.items() if k in ("op", "parent", "key", "name", "path", "station", "checkpoint")}
    return save_tree(conn, base, new_text, actor, role, action, target, detail)


# --- the dashboard -------------------------------------------------------------------------------


def _empty_counts() -> dict[str, int]:
    return {"screened": 0, "fevers": 0, **{d: 0 for d in DECISION_KEYS}, **{c: 0 for c in COLOURS}}


@dataclass
class DayRows:
    """One day's per-station, per-hour counts (``rows``: site, station, hour, decision, colour, n)."""

    day: dt.date
    rows: list[tuple[str, str, int, str | None, str | None, int]]
    query_ms: float


def day_rows(conn: psycopg.Connection[Any], day: dt.date, tz: ZoneInfo) -> DayRows:
    """Return one day's counts grouped by station, hour, decision and code colour (one query over that day's partition)."""
    start, end = db.day_bounds(day, tz)
    t0 = time.perf_counter()
    rows = conn.execute(HOURLY, {"tz": tz.key, "start": start, "end": end}).fetchall()
    return DayRows(day, [tuple(r) for r in rows], (time.perf_counter() - t0) * 1000)


def known_stations(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    """Return every station the centre has heard from."""
    return [(str(a), str(b)) for a, b in conn.execute("SELECT site, station FROM stations ORDER BY 1, 2").fetchall()]


def per_station(rows: DayRows) -> dict[tuple[str, str], dict[str, int]]:
    """Return each station's totals (screened, fevers, by decision, by colour) from a day's rows."""
    out: dict[tuple[str, str], dict[str, int]] = {}
    for site, station, _hour, decision, colour, n in rows.rows:
        counts = out.setdefault((site, station), _empty_counts())
        counts["screened"] += n
        if decision in counts:
            counts[decision] += n
        if decision == "deny_fever":
            counts["fevers"] += n
        if colour in COLOURS:
            counts[colour] += n
    return out


def hourly(rows: DayRows, stations: set[tuple[str, str]]) -> dict[str, list[int]]:
    """Return screened and fevers per hour (24 each) over ``stations``."""
    screened, fevers = [0] * 24, [0] * 24
    for site, station, hour, decision, _colour, n in rows.rows:
        if (site, station) in stations and 0 <= hour < 24:
            screened[hour] += n
            if decision == "deny_fever":
                fevers[hour] += n
    return {"screened": screened, "fevers": fevers}


def dashboard(tree: Tree, today: DayRows, last_week: DayRows, stations: list[tuple[str, str]], path: str) -> dict[str, Any]:
    """Return the screen's body for node ``path``: the rolled-up tree, the node's totals and its charts' series."""
    counts = per_station(today)
    body = rollup(tree, counts, stations)
    nodes: dict[str, dict[str, Any]] = {}
    todo = [body]
    while todo:
        each = todo.pop()
        each["totals"] = {**_empty_counts(), **each["totals"]}  # a node without stations shows zeros, not nothing
        nodes[each["path"]] = each
        todo.extend(each.get("children", []))
    if path not in nodes:
        raise KeyError(path)
    node = nodes[path]
    members = _members(node)
    now_hours = hourly(today, members)
    before = hourly(last_week, members)
    rate = [round(100.0 * f / s, 2) if s else None for f, s in zip(now_hours["fevers"], now_hours["screened"], strict=True)]
    sparks = []
    for leaf in _leaves(node)[:SPARKLINES_MAX]:
        sparks.append({"path": leaf["path"], "name": leaf["name"], "screened": hourly(today, _members(leaf))["screened"]})
    totals = node["totals"]
    return {
        "day": today.day.isoformat(),
        "compare_day": last_week.day.isoformat(),
        "tree": body,
        "node": {k: node[k] for k in ("path", "key", "level", "name")},
        "totals": totals,
        "hourly": {"today": now_hours["screened"], "last_week": before["screened"]},
        "fever_rate_pct": rate,
        "colours": {c: int(totals.get(c, 0)) for c in COLOURS}
        | {"none": max(0, int(totals.get("screened", 0)) - sum(int(totals.get(c, 0)) for c in COLOURS))},
        "sparklines": sparks,
        "query_ms": round(today.query_ms + last_week.query_ms, 1),
    }


def _members(node: dict[str, Any]) -> set[tuple[str, str]]:
    out = {(s["site"], s["station"]) for s in node.get("stations", [])}
    for child in node.get("children", []):
        out |= _members(child)
    return out


def _leaves(node: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the checkpoints under ``node`` (itself if it is one; its stations for ``unassigned``)."""
    if node["level"] == "checkpoint":
        return [node]
    if node["level"] == UNASSIGNED:
        return [
            {"path": f"{UNASSIGNED}/{s['site']}/{s['station']}", "name": f"{s['site']}/{s['station']}", "stations": [s]}
            for s in node["stations"]
        ]
    return [leaf for child in node.get("children", []) for leaf in _leaves(child)]


class DayCache:
    """Today's rows for ``ttl_s``, a past day's for ``past_ttl_s``: N screens cost one query per period and replica."""

    def __init__(self, ttl_s: float = 5.0, past_ttl_s: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s, self.past_ttl_s, self.clock = ttl_s, past_ttl_s, clock
        self._rows: dict[dt.date, tuple[float, DayRows]] = {}
        self._lock = threading.Lock()

    def get(self, conn: psycopg.Connection[Any], day: dt.date, today: dt.date, tz: ZoneInfo) -> DayRows:
        """Return the day's rows, from the cache while fresh."""
        ttl = self.ttl_s if day >= today else self.past_ttl_s
        with self._lock:
            hit = self._rows.get(day)
            if hit and self.clock() - hit[0] < ttl:
                return hit[1]
        rows = day_rows(conn, day, tz)
        with self._lock:
            self._rows = {d: v for d, v in self._rows.items() if today - dt.timedelta(days=8) <= d}
            self._rows[day] = (self.clock(), rows)
        return rows

    def clear(self) -> None:
        """Forget every cached day."""
        with self._lock:
            self._rows.clear()


# --- the alarm queue -----------------------------------------------------------------------------


class AlarmError(Exception):
    """An alarm action that cannot be done (``status`` is the HTTP status to answer)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def alarms(conn: psycopg.Connection[Any], since: dt.datetime, limit: int = 200) -> list[dict[str, Any]]:
    """Return fever/denied/alarm events since ``since`` (newest first) with what the centre did about each."""
    cur = conn.execute(
        f"""
        SELECT * FROM (
          SELECT DISTINCT ON (e.site, e.station, e.event_id)
                 e.site, e.station, e.event_id, extract(epoch FROM e.ts)::float8 AS ts, e.decision, e.reason, e.temperature_c,
                 e.code_colour, coalesce(a.state, 'open') AS state, a.ack_by, extract(epoch FROM a.ack_at)::float8 AS ack_at,
                 a.closed_by, extract(epoch FROM a.closed_at)::float8 AS closed_at, a.note
          FROM events e
          LEFT JOIN centre_alarms a ON a.site = e.site AND a.station = e.station AND a.event_id = e.event_id
          WHERE e.ts >= %s AND e.event_id IS NOT NULL AND {ALARM_WHERE}
          ORDER BY e.site, e.station, e.event_id, e.kind DESC
        ) q ORDER BY (state = 'closed'), ts DESC LIMIT %s""",
        (since, limit),
    )
    cols = [c.name for c in cur.description or ()]
    return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]


def _alarm_event(conn: psycopg.Connection[Any], site: str, station: str, event_id: str) -> Any:
    row = conn.execute(
        f"SELECT ts FROM events WHERE ts >= now() - interval '{ALARM_DAYS} days' AND {ALARM_WHERE} "
        "AND site = %s AND station = %s AND event_id = %s LIMIT 1",
        (site, station, event_id),
    ).fetchone()
    if row is None:
        raise AlarmError("no such alarm", 404)
    return row[0]


def acknowledge(conn: psycopg.Connection[Any], site: str, station: str, event_id: str, actor: str, role: str | None) -> None:
    """Mark an open alarm acknowledged by ``actor`` (audited); :class:`AlarmError` if unknown or already handled."""
    with conn.transaction():
        ts = _alarm_event(conn, site, station, event_id)
        done = conn.execute(
            """INSERT INTO centre_alarms (site, station, event_id, event_ts, state, ack_by, ack_at)
               VALUES (%s, %s, %s, %s, 'acknowledged', %s, now()) ON CONFLICT DO NOTHING""",
            (site, station, event_id, ts, actor),
        ).rowcount
        if not done:
            raise AlarmError("already acknowledged", 409)
        db.audit(conn, actor, role, "alarm.acknowledge", f"{site}/{station}/{event_id}")
    log.info("centre alarm acknowledged site=%s station=%s event=%s by=%s", site, station, event_id, actor)


def close(conn: psycopg.Connection[Any], site: str, station: str, event_id: str, note: str, actor: str, role: str | None) -> None:
    """Close an acknowledged alarm with ``note`` (audited); :class:`AlarmError` if not acknowledged or already closed."""
    with conn.transaction():
        done = conn.execute(
            """UPDATE centre_alarms SET state = 'closed', closed_by = %s, closed_at = now(), note = %s
               WHERE site = %s AND station = %s AND event_id = %s AND state = 'acknowledged'""",
            (actor, note, site, station, event_id),
        ).rowcount
        if not done:
            _alarm_event(conn, site, station, event_id)
            raise AlarmError("acknowledge it first (or it is already closed)", 409)
        db.audit(conn, actor, role, "alarm.close", f"{site}/{station}/{event_id}", {"note": note})
    log.info("centre alarm closed site=%s station=%s event=%s by=%s", site, station, event_id, actor)


def recent_audit(conn: psycopg.Connection[Any], limit: int = 50) -> list[dict[str, Any]]:
    """Return the newest audit rows (who, role, what, target, when)."""
    cur = conn.execute(
        "SELECT id, extract(epoch FROM at)::float8 AS at, actor, role, action, target, detail FROM centre_audit ORDER BY id DESC LIMIT %s",
        (limit,),
    )
    cols = [c.name for c in cur.description or ()]
    return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]
