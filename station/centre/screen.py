"""The big screen's database side: the stored district tree, the dashboard roll-ups, the alarm queue, shared sessions.

Tables (beside ``station/centre/db.py``'s; created by :func:`ensure_screen_schema`):

* ``centre_tree`` — every saved version of the registry's TOML text (``version`` is the key: two admins
  saving on the same version collide, the second is told to reload — nothing is overwritten unseen);
* ``centre_alarms`` — what the centre did about an alarm (acknowledged, closed, by whom, when, the
  note); the alarm itself is the station's event row;
* ``centre_sessions_revoked`` — logged-out session ids until they would have expired, shared by replicas;
* index ``events_alarm_queue`` — a partial index on ``events (ts)`` holding only fever/denied/alarm rows:
  the queue reads a few hundred index entries however big the day is;
* ``centre_hourly`` — the dashboard's roll-up: screenings per hour (of the centre's zone), station,
  decision and code colour; ``centre_hourly_days`` the days it holds. :func:`sync_hourly` keeps it
  current: the hours that received rows since its last run (a ``received_at`` watermark, BRIN
  index ``events_received_brin``) are recomputed from ``events`` (BRIN index ``events_ts_brin``), so a
  backlog replayed after an outage lands in the hours it belongs to; a day is filled whole the first
  time it is asked for;
* ``centre_daily`` — what a screen reads: one row per day and station (totals by decision and colour,
  screened and fevers per local hour as 24-element arrays). Every recompute of ``centre_hourly`` folds
  its difference into it (an hour: only the rows that changed, only that hour's slot).

A screen reads a day as ~one row per station from ``centre_daily`` and sums every tree node's totals
and charts from it in Python; results are cached a few seconds per replica. Under ``station centre
run`` a :class:`RollupKeeper` thread runs :func:`sync_hourly` every 4 s and the screens' requests only
read (at 20 M events: 94 ms median a request, docs/centre.md "Scale"). An alarm copy is counted only
when its screening copy is missing (anti-join on the ``events_station_ts`` index).
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

from station.centre import db
from station.centre.tree import EMPTY, UNASSIGNED, Tree, TreeError, apply_edit, parse_tree, rollup

log = logging.getLogger("station.centre.screen")

DECISION_KEYS = ("pass", "deny_fever", "deny_code", "manual_check", "retry")
COLOURS = ("green", "yellow", "red")
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
CREATE INDEX IF NOT EXISTS centre_alarms_ts ON centre_alarms (event_ts);
CREATE TABLE IF NOT EXISTS centre_sessions_revoked (sid text PRIMARY KEY, expires timestamptz NOT NULL);
CREATE INDEX IF NOT EXISTS events_alarm_queue ON events (ts)
  WHERE kind IN ('screening', 'alarm') AND (alarm OR decision IN ('deny_fever', 'deny_code'));
-- Block-range indexes: rows arrive roughly in time order, so a few bytes per 128 pages find an hour's
-- rows (ts) or what arrived since the last roll-up (received_at); next to nothing to maintain on insert.
CREATE INDEX IF NOT EXISTS events_ts_brin ON events USING brin (ts) WITH (autosummarize = on);
CREATE INDEX IF NOT EXISTS events_received_brin ON events USING brin (received_at) WITH (autosummarize = on);
-- The dashboard's roll-up: screenings per hour (of the centre's zone), station, decision and colour.
CREATE TABLE IF NOT EXISTS centre_hourly (
  hour timestamptz NOT NULL, site text NOT NULL, station text NOT NULL,
  decision text NOT NULL, colour text NOT NULL, screened integer NOT NULL,
  PRIMARY KEY (hour, site, station, decision, colour)
);
CREATE TABLE IF NOT EXISTS centre_hourly_days (day date PRIMARY KEY, filled_at timestamptz NOT NULL DEFAULT now());
"""
# Made with its own statement so that ensure_screen_schema knows when it is new (the roll-up is then rebuilt).
DAILY_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS centre_daily (
  day date NOT NULL, site text NOT NULL, station text NOT NULL,
  {", ".join(f"{c} integer NOT NULL DEFAULT 0" for c in ("screened", *DECISION_KEYS, *COLOURS))},
  hours_screened integer[] NOT NULL, hours_fevers integer[] NOT NULL,  -- 24 each, by local hour
  PRIMARY KEY (day, site, station)
);
"""
ALARM_WHERE = "kind IN ('screening', 'alarm') AND (alarm OR decision IN ('deny_fever', 'deny_code'))"  # = the index's predicate
NOTE_MAX = 500
ALARM_DAYS = 30  # an alarm older than this can no longer be acknowledged or closed (bounds the partitions searched)
SPARKLINES_MAX = 60

HOURLY = f"""
SELECT hour, site, station, decision, colour, sum(n)::int FROM (  -- a screening and a lone alarm copy may share a key
SELECT date_trunc('hour', ts, %(tz)s) AS hour, site, station, coalesce(decision, '') AS decision, coalesce(code_colour, '') AS colour,
       count(*)::int AS n
FROM events
WHERE ts >= %(start)s AND ts < %(end)s AND kind = 'screening'
GROUP BY 1, 2, 3, 4, 5
UNION ALL
SELECT date_trunc('hour', ts, %(tz)s), site, station, coalesce(decision, ''), coalesce(code_colour, ''), count(*)::int
FROM events e
WHERE ts >= %(start)s AND ts < %(end)s AND e.kind = 'alarm' AND {ALARM_WHERE}
  AND NOT EXISTS (
    SELECT 1 FROM events s
    WHERE s.ts >= %(start)s AND s.ts < %(end)s
      AND s.site = e.site AND s.station = e.station AND s.seq = e.seq AND s.ts = e.ts AND s.kind = 'screening')
GROUP BY 1, 2, 3, 4, 5) parts
GROUP BY 1, 2, 3, 4, 5
"""
"""Screenings in [start, end) by hour, station, decision and colour, plus alarm copies whose screening copy is missing.

The first part is one pass over the day's partition with a hash aggregate; the second reads only
alarm rows (a station sends an alarm copy only for an alarm, so every one is in the partial index
``events_alarm_queue``) and looks each one's screening up on ``events_station_seq``.
"""


def prepare_session(conn: psycopg.Connection[Any]) -> None:
    """Set what the screen's queries want of a session: no JIT.

    PostgreSQL's JIT judged the day's roll-up worth compiling and spent ~0.7 s doing it on a query
    that runs in a fraction of that (measured, bench/centre_screen.py); the screen runs short
    queries only.
    """
    conn.execute("SET jit = off")


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
            prepare_session(conn)
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
        had_daily = conn.execute("SELECT to_regclass('centre_daily') IS NOT NULL").fetchone()
        if had_daily is not None and not had_daily[0]:
            # A roll-up made before centre_daily: emptied, so every day is filled again (and folded into
            # centre_daily) the first time a screen asks for it.
            conn.execute(DAILY_SCHEMA)
            conn.execute("TRUNCATE centre_hourly, centre_hourly_days")
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
    """One day's counts per station: ``totals`` (screened, fevers, by decision, by colour) and ``hours`` (screened, fevers: 24 each)."""

    day: dt.date
    totals: dict[tuple[str, str], dict[str, int]]
    query_ms: float
    hours: dict[tuple[str, str], tuple[list[int], list[int]]] = field(default_factory=dict)

    def station_hours(self) -> dict[tuple[str, str], tuple[list[int], list[int]]]:
        """Return per station its screened and fevers per hour (24 each)."""
        return self.hours


HOURLY_LOCK = 0x48_4F_55_52_4C_59  # "HOURLY": one replica at a time refreshes the roll-up
RECEIVED_MARGIN_S = 30  # re-read arrivals this far before the watermark: a batch committed late has an earlier received_at


@dataclass
class SyncResult:
    """What one :func:`sync_hourly` did: hours recomputed, days filled, how long it took."""

    hours: int = 0
    days: int = 0
    ms: float = 0.0


_COUNTERS = ("screened", *DECISION_KEYS, *COLOURS)
_PER_HOUR_SUMS = ", ".join(
    ["sum(n) AS screened", "sum(n) FILTER (WHERE decision = 'deny_fever') AS fevers"]
    + [f"sum(n) FILTER (WHERE decision = '{d}') AS {d}" for d in DECISION_KEYS]
    + [f"sum(n) FILTER (WHERE colour = '{c}') AS {c}" for c in COLOURS]
)
_HOURS_ARRAY = "ARRAY[{}]::int[]"
_PER_STATION_SUMS = ", ".join(
    [f"coalesce(sum({c}), 0)::int AS {c}" for c in _COUNTERS]
    + [_HOURS_ARRAY.format(", ".join(f"coalesce(sum(screened) FILTER (WHERE h = {h}), 0)" for h in range(24))) + " AS hs"]
    + [_HOURS_ARRAY.format(", ".join(f"coalesce(sum(fevers) FILTER (WHERE h = {h}), 0)" for h in range(24))) + " AS hf"]
)
_ADD_ARRAYS = "(SELECT array_agg(a + b ORDER BY i) FROM unnest(c.{col}, excluded.{col}) WITH ORDINALITY AS u(a, b, i))"
_FOLD = f"""
WITH changed AS ({{change}}),
delta AS (SELECT site, station, decision, colour, extract(hour FROM hour AT TIME ZONE %(tz)s)::int AS h, {{sign}}screened AS n FROM changed)
INSERT INTO centre_daily AS c (day, site, station, {", ".join(_COUNTERS)}, hours_screened, hours_fevers)
SELECT %(day)s, site, station, {", ".join(_COUNTERS)}, hs, hf FROM (
  SELECT site, station, {_PER_STATION_SUMS}
  FROM (SELECT site, station, h, {_PER_HOUR_SUMS} FROM delta GROUP BY 1, 2, 3) per_hour GROUP BY 1, 2) d
ON CONFLICT (day, site, station) DO UPDATE SET
  {", ".join(f"{c} = c.{c} + excluded.{c}" for c in _COUNTERS)},
  hours_screened = {_ADD_ARRAYS.format(col="hours_screened")}, hours_fevers = {_ADD_ARRAYS.format(col="hours_fevers")}
"""
_RETURNING = "RETURNING hour, site, station, decision, colour, screened"
UNFILL = _FOLD.format(change=f"DELETE FROM centre_hourly WHERE hour >= %(start)s AND hour < %(end)s {_RETURNING}", sign="-")
REFILL = _FOLD.format(change=f"INSERT INTO centre_hourly (hour, site, station, decision, colour, screened) {HOURLY} {_RETURNING}", sign="")
"""Replace the roll-up of [start, end) (an hour, or a day the first time) and fold the change into ``centre_daily``.

The rows removed count negative (UNFILL) and their recomputation positive (REFILL), summed per station:
the day's per-station totals and hour arrays change by exactly what the recomputed hours changed.
"""


_KEY = "hour, site, station, decision, colour"
_SAME_KEY = " AND ".join(f"h.{k} = c.{k}" for k in _KEY.split(", "))
REFRESH_HOUR = f"""
WITH fresh AS ({HOURLY}),
cur AS (SELECT {_KEY}, screened FROM centre_hourly WHERE hour >= %(start)s AND hour < %(end)s),
changed AS (
  SELECT {_KEY}, f.n AS new_n, coalesce(f.n, 0) - coalesce(c.screened, 0) AS n
  FROM (SELECT hour, site, station, decision, colour, sum AS n FROM fresh) f FULL JOIN cur c USING ({_KEY})
  WHERE f.n IS DISTINCT FROM c.screened),
stored AS (
  INSERT INTO centre_hourly ({_KEY}, screened) SELECT {_KEY}, new_n FROM changed WHERE new_n IS NOT NULL
  ON CONFLICT ({_KEY}) DO UPDATE SET screened = excluded.screened),
gone AS (DELETE FROM centre_hourly h USING changed c WHERE c.new_n IS NULL AND {_SAME_KEY})
INSERT INTO centre_daily AS c (day, site, station, {", ".join(_COUNTERS)}, hours_screened, hours_fevers)
SELECT %(day)s, site, station, {", ".join(_COUNTERS)},
       array_fill(0, ARRAY[%(slot)s - 1]) || screened || array_fill(0, ARRAY[24 - %(slot)s]),
       array_fill(0, ARRAY[%(slot)s - 1]) || fevers || array_fill(0, ARRAY[24 - %(slot)s])
FROM (SELECT site, station, {", ".join(f"coalesce({c}, 0)::int AS {c}" for c in _COUNTERS)}, coalesce(fevers, 0)::int AS fevers
      FROM (SELECT site, station, {_PER_HOUR_SUMS} FROM changed GROUP BY 1, 2) x) d
ON CONFLICT (day, site, station) DO UPDATE SET
  {", ".join(f"{c} = c.{c} + excluded.{c}" for c in _COUNTERS)},
  hours_screened[%(slot)s] = c.hours_screened[%(slot)s] + excluded.screened,
  hours_fevers[%(slot)s] = c.hours_fevers[%(slot)s] + excluded.deny_fever
"""
"""Recompute one hour of the roll-up and fold only what changed into ``centre_daily`` (its stations, its hour's slot).

The hour's rows are recomputed from ``events`` and compared with the stored ones; only the rows that
differ are written, and each station's day counters and hour slot ``slot`` (1-24) change by the difference.
"""


def _fill(conn: psycopg.Connection[Any], start: dt.datetime, end: dt.datetime, tz: ZoneInfo) -> None:
    args: dict[str, Any] = {"tz": tz.key, "start": start, "end": end, "day": start.astimezone(tz).date()}
    if end - start <= dt.timedelta(hours=1):
        conn.execute(REFRESH_HOUR, args | {"slot": start.astimezone(tz).hour + 1})
        return
    conn.execute(UNFILL, args)
    conn.execute(REFILL, args)


def sync_hourly(conn: psycopg.Connection[Any], days: list[dt.date], tz: ZoneInfo, min_interval_s: float = 4.0) -> SyncResult:
    """Bring ``centre_hourly`` up to date for ``days`` (and every day filled before); return what was done.

    Hours that received rows since the last sync (``received_at`` watermark in ``centre_meta``, BRIN
    index) are recomputed from ``events`` (BRIN index on ``ts``); a day never filled is filled whole
    once. Late arrivals — a station's backlog after an outage — land in the hours they belong to.
    Idempotent; replicas take turns under an advisory lock, and the recompute is skipped when any
    replica did it less than ``min_interval_s`` ago (N screens on M replicas cost one per period).
    """
    t0 = time.perf_counter()
    result = SyncResult()
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (HOURLY_LOCK,))
        (now,) = conn.execute("SELECT now()").fetchone() or (None,)
        row = conn.execute("SELECT value FROM centre_meta WHERE key = 'hourly_received_upto'").fetchone()
        filled = {d for (d,) in conn.execute("SELECT day FROM centre_hourly_days").fetchall()}
        last = dt.datetime.fromisoformat(str(row[0])) if row is not None else None
        fresh = last is not None and now is not None and (now - last).total_seconds() < min_interval_s
        if last is not None and not fresh:
            since = last - dt.timedelta(seconds=RECEIVED_MARGIN_S)
            touched = [
                h
                for (h,) in conn.execute(
                    "SELECT DISTINCT date_trunc('hour', ts, %s) FROM events WHERE received_at > %s", (tz.key, since)
                ).fetchall()
            ]
            for hour in sorted(touched):
                if hour.astimezone(tz).date() in filled:
                    _fill(conn, hour, hour + dt.timedelta(hours=1), tz)
                    result.hours += 1
        for day in sorted(set(days) - filled):
            start, end = db.day_bounds(day, tz)
            _fill(conn, start, end, tz)
            conn.execute("INSERT INTO centre_hourly_days (day) VALUES (%s) ON CONFLICT DO NOTHING", (day,))
            result.days += 1
        if not fresh:
            conn.execute(
                "INSERT INTO centre_meta (key, value) VALUES ('hourly_received_upto', %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (now.isoformat() if now else dt.datetime.now(dt.UTC).isoformat(),),
            )
    result.ms = (time.perf_counter() - t0) * 1000
    if result.hours or result.days:
        log.debug("centre hourly sync hours=%d days=%d ms=%.1f", result.hours, result.days, result.ms)
    return result


def day_rows(conn: psycopg.Connection[Any], day: dt.date, tz: ZoneInfo) -> DayRows:
    """Return one day's per-station totals and hours from ``centre_daily`` (one row per station; kept by :func:`sync_hourly`)."""
    t0 = time.perf_counter()
    cur = conn.execute(  # binary: the hour arrays cost less to read than their text
        f"SELECT site, station, {', '.join(_COUNTERS)}, hours_screened, hours_fevers FROM centre_daily WHERE day = %s", (day,), binary=True
    )
    totals: dict[tuple[str, str], dict[str, int]] = {}
    hours: dict[tuple[str, str], tuple[list[int], list[int]]] = {}
    for site, station, *values in cur.fetchall():
        counts = dict(zip(_COUNTERS, values[: len(_COUNTERS)], strict=True))
        counts["fevers"] = counts["deny_fever"]
        totals[(site, station)] = counts
        hours[(site, station)] = (list(values[-2]), list(values[-1]))
    return DayRows(day, totals, (time.perf_counter() - t0) * 1000, hours)


def known_stations(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    """Return every station the centre has heard from."""
    return [(str(a), str(b)) for a, b in conn.execute("SELECT site, station FROM stations ORDER BY 1, 2").fetchall()]


def per_station(rows: DayRows) -> dict[tuple[str, str], dict[str, int]]:
    """Return each station's totals (screened, fevers, by decision, by colour) of the day (copies)."""
    return {k: {**_empty_counts(), **v} for k, v in rows.totals.items()}


def hourly(rows: DayRows, stations: set[tuple[str, str]]) -> dict[str, list[int]]:
    """Return screened and fevers per hour (24 each) over ``stations``."""
    screened, fevers = [0] * 24, [0] * 24
    hours = rows.station_hours()
    for key in stations:
        found = hours.get(key)
        if found is not None:
            for h in range(24):
                screened[h] += found[0][h]
                fevers[h] += found[1][h]
    return {"screened": screened, "fevers": fevers}


def dashboard(
    tree: Tree, today: DayRows, last_week: DayRows, stations: list[tuple[str, str]], path: str, now_hour: int | None = None
) -> dict[str, Any]:
    """Return the screen's body for node ``path``: the rolled-up tree, the node's totals and its charts' series.

    Hours of today after ``now_hour`` with nothing in them are ``None`` (not yet, rather than nobody).
    """
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
        "hourly": {
            "today": [None if now_hour is not None and h > now_hour and n == 0 else n for h, n in enumerate(now_hours["screened"])],
            "last_week": before["screened"],
        },
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
    """Today's rows for ``ttl_s``, a past day's for ``past_ttl_s``: N screens cost one query per period and replica.

    ``sync_in_request``: a cache miss brings the roll-up up to date first (:func:`sync_hourly`). When a
    :class:`RollupKeeper` keeps it current instead (``station centre run``), a miss only reads, and
    syncs only to fill a day never filled (its first view).
    """

    def __init__(
        self, ttl_s: float = 5.0, past_ttl_s: float = 300.0, clock: Callable[[], float] = time.monotonic, *, sync_in_request: bool = True
    ) -> None:
        self.ttl_s, self.past_ttl_s, self.clock = ttl_s, past_ttl_s, clock
        self.sync_in_request = sync_in_request
        self._rows: dict[dt.date, tuple[float, DayRows]] = {}
        self._lock = threading.Lock()
        self.last_sync = SyncResult()

    def get(self, conn: psycopg.Connection[Any], day: dt.date, today: dt.date, tz: ZoneInfo) -> DayRows:
        """Return the day's rows, from the cache while fresh."""
        ttl = self.ttl_s if day >= today else self.past_ttl_s
        with self._lock:
            hit = self._rows.get(day)
            if hit and self.clock() - hit[0] < ttl:
                return hit[1]
        if self.sync_in_request or conn.execute("SELECT 1 FROM centre_hourly_days WHERE day = %s", (day,)).fetchone() is None:
            self.last_sync = sync_hourly(conn, [day], tz)
        rows = day_rows(conn, day, tz)
        with self._lock:
            self._rows = {d: v for d, v in self._rows.items() if today - dt.timedelta(days=8) <= d}
            self._rows[day] = (self.clock(), rows)
        return rows

    def clear(self) -> None:
        """Forget every cached day."""
        with self._lock:
            self._rows.clear()


class RollupKeeper:
    """A thread keeping the screen's roll-up current (:func:`sync_hourly` every ``interval_s``), off the screens' requests.

    Every replica runs one; the sync's own minimum interval and lock make it one recompute per period
    across replicas. A failed sync is logged (rate-limited) and retried at the next period.
    """

    def __init__(self, db_url: str, tz: ZoneInfo, interval_s: float = 4.0, today: Callable[[], dt.date] | None = None) -> None:
        self.db_url, self.tz, self.interval_s = db_url, tz, interval_s
        self.today = today or (lambda: dt.datetime.now(tz).date())
        self.syncs = 0
        self.errors = 0
        self.last = SyncResult()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread."""
        self._thread = threading.Thread(target=self._run, name="centre-rollup", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread after its current sync."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        while not self._stop.wait(self.interval_s):
            try:
                if conn is None or conn.closed or conn.broken:
                    conn = db.connect(self.db_url, autocommit=True)
                    prepare_session(conn)
                self.last = sync_hourly(conn, [self.today()], self.tz, min_interval_s=self.interval_s * 0.8)
                self.syncs += 1
            except psycopg.Error as exc:
                self.errors += 1
                if self.errors in (1, 10, 100) or self.errors % 1000 == 0:
                    log.warning("centre roll-up sync failed errors=%d error=%s", self.errors, str(exc).strip()[:200])
                if conn is not None:
                    conn.close()
                    conn = None
        if conn is not None:
            conn.close()


# --- the alarm queue -----------------------------------------------------------------------------


class AlarmError(Exception):
    """An alarm action that cannot be done (``status`` is the HTTP status to answer)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


ALARM_COLUMNS = (
    "e.site, e.station, e.event_id, extract(epoch FROM e.ts)::float8 AS ts, e.decision, e.reason, e.temperature_c, e.code_colour"
)
OPEN_ALARMS = f"""
SELECT {ALARM_COLUMNS}, 'open' AS state, NULL AS ack_by, NULL::float8 AS ack_at, NULL AS closed_by, NULL::float8 AS closed_at, NULL AS note
FROM events e
WHERE e.ts >= %(since)s AND {ALARM_WHERE} AND e.event_id IS NOT NULL
  AND (e.kind = 'screening' OR NOT EXISTS (
        SELECT 1 FROM events s WHERE s.ts = e.ts AND s.site = e.site AND s.station = e.station AND s.seq = e.seq AND s.kind = 'screening'))
  AND NOT EXISTS (SELECT 1 FROM centre_alarms a WHERE a.site = e.site AND a.station = e.station AND a.event_id = e.event_id)
ORDER BY e.ts DESC LIMIT %(limit)s
"""
"""The newest open alarms: a backward walk of the partial index ``events_alarm_queue``, stopping at ``limit``."""
HANDLED_ALARMS = f"""
SELECT DISTINCT ON (a.event_ts, a.site, a.station, a.event_id)
       {ALARM_COLUMNS}, a.state, a.ack_by, extract(epoch FROM a.ack_at)::float8, a.closed_by,
       extract(epoch FROM a.closed_at)::float8, a.note
FROM centre_alarms a
JOIN events e ON e.ts = a.event_ts AND e.site = a.site AND e.station = a.station AND e.event_id = a.event_id
WHERE a.event_ts >= %(since)s
ORDER BY a.event_ts DESC, a.site, a.station, a.event_id, e.kind DESC LIMIT %(handled)s
"""
"""The newest acknowledged or closed alarms (index ``centre_alarms_ts``), with their events (``events_station_ts``)."""


def alarms(conn: psycopg.Connection[Any], since: dt.datetime, limit: int = 200, handled: int = 50) -> list[dict[str, Any]]:
    """Return the newest open fever/denied/alarm events since ``since``, then the newest handled ones, each with its handling."""
    out: list[dict[str, Any]] = []
    for sql in (OPEN_ALARMS, HANDLED_ALARMS):
        cur = conn.execute(sql, {"since": since, "limit": limit, "handled": handled})
        cols = ["site", "station", "event_id", "ts", "decision", "reason", "temperature_c", "code_colour"]
        cols += ["state", "ack_by", "ack_at", "closed_by", "closed_at", "note"]
        out.extend(dict(zip(cols, row, strict=True)) for row in cur.fetchall())
    open_ = [a for a in out if a["state"] == "open"]
    acked = [a for a in out if a["state"] == "acknowledged"]
    closed = [a for a in out if a["state"] == "closed"]
    return open_ + acked + closed


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
