"""The centre's PostgreSQL database: schema, day partitions, batched idempotent writes, retention, reports, users.

Tables (docs/centre.md):

* ``events`` — one row per station message, **partitioned by day** (``PARTITION BY RANGE (ts)``, the
  station's event time, days of the centre's time zone). The key is ``(msg_id, ts)``: a unique key
  of a partitioned table must hold the partition key, and a redelivered message carries the same
  bytes, so the same ``ts``, and lands on the same row: ``INSERT … ON CONFLICT DO NOTHING`` makes
  every delivery after the first a no-op.
* ``events_misdated`` — messages whose time lies outside the partitions the centre keeps (a station
  clock years off, or older than the retention): kept and counted, never silently lost, never a
  reason to create a partition for a hostile date.
* ``clock_corrections`` and ``clock_correction_records`` — each station's clock correction once (by
  ``correction_id``) and the records it names; those records get ``corrected_ts`` (their ``ts``
  stays) and :func:`dated_events` counts them on that day (docs/centre.md "Clock corrections").
* ``stations`` — every station ever heard (unknown ones too): a new station's row is written with the
  batch that first names it; last seen, newest event time, session and highest ``seq`` are a summary
  each replica folds in about once a second with ``greatest()`` (idempotent, off the hot path: two
  replicas updating the same rows in every batch would queue behind each other's commits).
* ``station_seq_floor`` — per station the ``seq`` below which nothing is expected any more (raised
  when retention drops a day).
* ``station_seq_notes`` and ``station_seq_runs`` — the numbers received, as runs of consecutive
  numbers: each batch appends the runs of the rows it inserted to the notes in its own INSERT
  statement, :func:`compact_seq_runs` folds them into the runs; the gap views read these, not the
  events (``station_gaps_scan`` is the scan over the events they must agree with).
* views ``station_gaps`` (every run of missing ``seq`` numbers: first, last, how many, the session
  and time of the record after it) and ``station_missing`` (missing events per station).
* ``centre_users`` — name, role (viewer | tracer | admin), scrypt hash (the board's KDF).
* ``centre_audit`` — who did what at the centre and when (:func:`audit`), appended in the same
  transaction as the change it records.

Several replicas share one database. Schema and partition changes run under one advisory lock;
batches touch ``stations`` rows in key order, so two replicas never deadlock on them.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

from station.centre.parse import SEQ_KINDS, ClockCorrection, EventRow

log = logging.getLogger("station.centre.db")

DDL_LOCK = 0x43_45_4E_54_52_45  # "CENTRE": the advisory lock that serialises schema and partition changes
CLOCK_LOCK = 0x434C4B  # "CLK": with a station's hash, serialises its corrections with its unsynced records' inserts
SCHEMA_VERSION = 2  # 2: station_seq_runs and station_seq_notes (missing events without a scan)
ROLES = ("viewer", "tracer", "admin")
PARTITION = re.compile(r"^events_p(\d{8})$")

_SEQ_KINDS_SQL = ", ".join(f"'{k}'" for k in SEQ_KINDS)

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS centre_meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS events (
  ts timestamptz NOT NULL,              -- the station's event time: the partition key
  msg_id text NOT NULL,                 -- the envelope's idempotency key
  site text NOT NULL, station text NOT NULL,
  session bigint, seq bigint,
  kind text NOT NULL,                   -- screening | alarm | vehicle | audit | overflow
  event_id text, decision text, reason text, temperature_c real,
  alarm boolean NOT NULL DEFAULT false,
  code_colour text, decision_source text,
  detail text,                          -- vehicle type, audit action, overflow reasons
  dropped integer,                      -- overflow: rows the station's outbox bound dropped
  clock_synced boolean,
  received_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (msg_id, ts)
) PARTITION BY RANGE (ts);
-- INCLUDE (ts, session): the gap view reads each station's numbers in order from this index alone
-- (index-only scans merged across the day partitions: 0.15 s for 300 000 rows, 1.3 s through a GROUP BY).
CREATE INDEX IF NOT EXISTS events_station_seq ON events (site, station, seq) INCLUDE (ts, session) WHERE kind IN ({_SEQ_KINDS_SQL});
CREATE INDEX IF NOT EXISTS events_station_ts ON events (site, station, ts);
CREATE TABLE IF NOT EXISTS events_misdated (
  LIKE events INCLUDING DEFAULTS,
  PRIMARY KEY (msg_id)
);
-- Tracing (station/codes/trace_key.py): the holder's or plate's keyed reference under the district key
-- and that key's id; added to databases made before them (a partitioned table passes columns on).
ALTER TABLE events ADD COLUMN IF NOT EXISTS trace_ref text, ADD COLUMN IF NOT EXISTS trace_key text;
ALTER TABLE events_misdated ADD COLUMN IF NOT EXISTS trace_ref text, ADD COLUMN IF NOT EXISTS trace_key text;
CREATE INDEX IF NOT EXISTS events_trace ON events (trace_ref, ts) WHERE trace_ref IS NOT NULL;
-- A screening's time at the gate (the station's latency_ms.total: entering the zone -> decision), for
-- the screen's wait-time chart (station/centre/wait.py); added to databases made before it.
ALTER TABLE events ADD COLUMN IF NOT EXISTS wait_ms real;
ALTER TABLE events_misdated ADD COLUMN IF NOT EXISTS wait_ms real;
-- Clock corrections (events/clock): the original ts stays; corrected_ts is set on the records a
-- correction names (those stamped clock_synced false), and reports date a record by it where set.
ALTER TABLE events ADD COLUMN IF NOT EXISTS corrected_ts timestamptz;
ALTER TABLE events_misdated ADD COLUMN IF NOT EXISTS corrected_ts timestamptz;
CREATE INDEX IF NOT EXISTS events_unsynced ON events (site, station, event_id) WHERE clock_synced IS FALSE;
CREATE INDEX IF NOT EXISTS events_corrected ON events (corrected_ts) WHERE corrected_ts IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_misdated_corrected ON events_misdated (corrected_ts) WHERE corrected_ts IS NOT NULL;
CREATE TABLE IF NOT EXISTS clock_corrections (
  site text NOT NULL, station text NOT NULL, correction_id text NOT NULL,
  msg_id text NOT NULL, offset_ms bigint NOT NULL,
  seq_first bigint, seq_last bigint, records integer NOT NULL,
  ids_complete boolean NOT NULL, late boolean NOT NULL,
  received_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (site, station, correction_id)
);
-- The records a correction names (record_kind: event = a screening and its alarm copy, vehicle, visit,
-- registration); the first correction to name a record is the one applied to it.
CREATE TABLE IF NOT EXISTS clock_correction_records (
  site text NOT NULL, station text NOT NULL, record_id text NOT NULL, record_kind text NOT NULL,
  correction_id text NOT NULL, offset_ms bigint NOT NULL,
  PRIMARY KEY (site, station, record_id, record_kind)
);
CREATE TABLE IF NOT EXISTS stations (
  site text NOT NULL, station text NOT NULL,
  first_seen timestamptz NOT NULL, last_seen timestamptz NOT NULL,
  last_event_ts timestamptz, last_session bigint, max_seq bigint,
  PRIMARY KEY (site, station)
);
CREATE TABLE IF NOT EXISTS station_seq_floor (
  site text NOT NULL, station text NOT NULL, seq_floor bigint NOT NULL,
  PRIMARY KEY (site, station)
);
CREATE TABLE IF NOT EXISTS centre_users (
  name text PRIMARY KEY,
  role text NOT NULL CHECK (role IN ('viewer', 'tracer', 'admin')),
  password text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);
-- Who did what at the centre (tree edits, alarm handling, pushes, trace queries): never updated, never deleted.
CREATE TABLE IF NOT EXISTS centre_audit (
  id bigserial PRIMARY KEY,
  at timestamptz NOT NULL DEFAULT now(),
  actor text NOT NULL, role text,
  action text NOT NULL,                 -- e.g. tree.move, alarm.close
  target text, reason text,
  detail jsonb
);
CREATE INDEX IF NOT EXISTS centre_audit_at ON centre_audit (at);
-- The record numbers received, per station, as runs of consecutive numbers, so that missing events are
-- read from a few rows per station instead of a window over every event kept (docs/centre.md "Scale").
-- The writer appends the numbers a batch inserted (duplicates insert nothing) to station_seq_notes in the
-- batch's own statement: insert-only, so replicas never wait on each other. compact_seq_runs folds the
-- notes into station_seq_runs every few seconds (one replica at a time). first_ts/first_session: the time
-- and session of the record numbered first; first_misdated: that record is in events_misdated (the gap
-- view dates it by its corrected time, as station_gaps_scan does). Runs and notes may overlap or touch:
-- a gap is read against the highest number before it, so that never makes a false gap.
CREATE TABLE IF NOT EXISTS station_seq_runs (
  site text NOT NULL, station text NOT NULL,
  first_seq bigint NOT NULL, last_seq bigint NOT NULL,
  first_ts timestamptz NOT NULL, first_session bigint, first_misdated boolean NOT NULL DEFAULT false,
  PRIMARY KEY (site, station, first_seq)
);
CREATE TABLE IF NOT EXISTS station_seq_notes (
  site text NOT NULL, station text NOT NULL,
  first_seq bigint NOT NULL, last_seq bigint NOT NULL,
  first_ts timestamptz NOT NULL, first_session bigint, first_misdated boolean NOT NULL DEFAULT false
);
CREATE INDEX IF NOT EXISTS events_misdated_seq ON events_misdated (site, station, seq);
-- One row per record number a station made (a screening and its alarm copy share one).
CREATE OR REPLACE VIEW station_seqs AS
  SELECT site, station, seq, min(ts) AS ts, max(session) AS session
  FROM events WHERE kind IN ({_SEQ_KINDS_SQL}) AND seq IS NOT NULL
  GROUP BY site, station, seq;
-- Every run of numbers missing before a received one; seq is per station and never reused
-- (station/store/outbox.py), so a gap may span a restart: it is labelled with the session after it.
-- Rows in number order straight from the events: a number carried twice (a screening and its alarm
-- copy) is one row after its twin, seq - prev - 1 = -1, never a gap.
-- station_gaps_scan computes them from every event kept (the definition, O(events)); station_gaps reads the
-- runs (O(stations + gaps)) and must always agree with it (tests/test_centre_seq_runs.py).
CREATE OR REPLACE VIEW station_gaps_scan AS
  SELECT site, station, session, prev + 1 AS first_missing, seq - 1 AS last_missing, seq - prev - 1 AS missing, ts AS next_ts
  FROM (
    SELECT e.site, e.station, e.seq, e.ts, e.session,
           coalesce(lag(e.seq) OVER (PARTITION BY e.site, e.station ORDER BY e.seq), f.seq_floor, 0) AS prev
    FROM (SELECT site, station, seq, ts, session, kind FROM events
          UNION ALL  -- a record with a wild clock (a 1970 boot) was received: not missing; dated by its correction
          SELECT site, station, seq, coalesce(corrected_ts, ts), session, kind FROM events_misdated) e
    LEFT JOIN station_seq_floor f USING (site, station)
    WHERE e.kind IN ({_SEQ_KINDS_SQL}) AND e.seq IS NOT NULL
  ) numbered
  WHERE seq - prev > 1;
CREATE OR REPLACE VIEW station_gaps AS
  SELECT site, station, session, prev + 1 AS first_missing, first_seq - 1 AS last_missing, first_seq - prev - 1 AS missing,
         CASE WHEN first_misdated  -- a wild clock's record: dated by its correction where one came (few rows: looked up)
           THEN coalesce((SELECT min(m.corrected_ts) FROM events_misdated m
                          WHERE m.site = runs.site AND m.station = runs.station AND m.seq = runs.first_seq), first_ts)
           ELSE first_ts END AS next_ts
  FROM (
    SELECT r.site, r.station, r.first_seq, r.first_ts, r.first_session AS session, r.first_misdated,
           greatest(max(r.last_seq) OVER (PARTITION BY r.site, r.station ORDER BY r.first_seq, r.last_seq DESC
                                          ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), f.seq_floor, 0) AS prev
    FROM (SELECT * FROM station_seq_runs UNION ALL SELECT * FROM station_seq_notes) r
    LEFT JOIN station_seq_floor f USING (site, station)
  ) runs
  WHERE first_seq - prev > 1;
CREATE OR REPLACE VIEW station_missing AS
  SELECT st.site, st.station, coalesce(sum(g.missing), 0)::bigint AS missing_events, count(g.missing) AS gaps,
         st.last_seen, st.last_event_ts, st.last_session, st.max_seq
  FROM stations st LEFT JOIN station_gaps g USING (site, station)
  GROUP BY st.site, st.station, st.last_seen, st.last_event_ts, st.last_session, st.max_seq;
"""

_COLUMNS = (
    "ts",
    "msg_id",
    "site",
    "station",
    "session",
    "seq",
    "kind",
    "event_id",
    "decision",
    "reason",
    "temperature_c",
    "alarm",
    "code_colour",
    "decision_source",
    "detail",
    "dropped",
    "clock_synced",
    "trace_ref",
    "trace_key",
    "wait_ms",
)
_TYPES = (
    "float8",
    "text",
    "text",
    "text",
    "int8",
    "int8",
    "text",
    "text",
    "text",
    "text",
    "float4",
    "bool",
    "text",
    "text",
    "text",
    "int4",
    "bool",
    "text",
    "text",
    "float4",
)
_SELECT = ", ".join("to_timestamp(ts)" if c == "ts" else c for c in _COLUMNS)
# Each batch is COPYed (binary) into a per-connection temporary table, then moved with one INSERT …
# SELECT … ON CONFLICT DO NOTHING: measured 8.5 µs of client CPU a row against 29 µs for the same
# INSERT fed by unnest() of 17 parameter arrays (psycopg dumps those in Python).
BATCH_TABLE = f"""
CREATE TEMP TABLE IF NOT EXISTS centre_batch ({", ".join(f"{c} {t}" for c, t in zip(_COLUMNS, _TYPES, strict=True))}, misdated bool)
ON COMMIT DELETE ROWS
"""
COPY_BATCH = f"COPY centre_batch ({', '.join(_COLUMNS)}, misdated) FROM STDIN (FORMAT BINARY)"
_RETURNING = "RETURNING kind, site, station, seq, ts, session"
# One statement: both inserts, then the numbers of the rows actually inserted (a duplicate returns nothing)
# appended to station_seq_notes as runs of consecutive numbers; answers each new row's kind.
INSERT_BATCH = f"""
WITH placed AS (
  INSERT INTO events ({", ".join(_COLUMNS)}) SELECT {_SELECT} FROM centre_batch WHERE NOT misdated ON CONFLICT DO NOTHING {_RETURNING}),
misdated AS (
  INSERT INTO events_misdated ({", ".join(_COLUMNS)}) SELECT {_SELECT} FROM centre_batch WHERE misdated
  ON CONFLICT DO NOTHING {_RETURNING}),
new AS (SELECT false AS misdated, * FROM placed UNION ALL SELECT true, * FROM misdated),
seqs AS (
  SELECT site, station, seq, min(ts) AS ts, max(session) AS session, bool_and(misdated) AS misdated
  FROM new WHERE kind IN ({_SEQ_KINDS_SQL}) AND seq IS NOT NULL GROUP BY 1, 2, 3),
noted AS (
  INSERT INTO station_seq_notes (site, station, first_seq, last_seq, first_ts, first_session, first_misdated)
  SELECT site, station, min(seq), max(seq), (array_agg(ts ORDER BY seq))[1], (array_agg(session ORDER BY seq))[1],
         (array_agg(misdated ORDER BY seq))[1]
  FROM (SELECT *, seq - row_number() OVER (PARTITION BY site, station ORDER BY seq) AS grp FROM seqs) islands
  GROUP BY site, station, grp)
SELECT kind, misdated FROM new
"""
# Fold the notes into the runs: every note committed so far is taken (deleted), the runs of the stations
# they name are taken too, and their union is stored again as maximal runs of consecutive numbers.
SEQ_FOLD_TABLE = "CREATE TEMP TABLE IF NOT EXISTS centre_seq_fold (LIKE station_seq_runs) ON COMMIT DELETE ROWS"
TAKE_SEQ_RUNS = """
WITH taken AS (DELETE FROM station_seq_notes RETURNING *),
old AS (
  DELETE FROM station_seq_runs r USING (SELECT DISTINCT site, station FROM taken) t
  WHERE r.site = t.site AND r.station = t.station RETURNING r.*)
INSERT INTO centre_seq_fold SELECT * FROM taken UNION ALL SELECT * FROM old
"""
STORE_SEQ_RUNS = """
WITH marked AS (
  SELECT *, CASE WHEN first_seq <= max(last_seq) OVER w + 1 THEN 0 ELSE 1 END AS starts FROM centre_seq_fold
  WINDOW w AS (PARTITION BY site, station ORDER BY first_seq, last_seq DESC ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)),
grouped AS (
  SELECT *, sum(starts) OVER (PARTITION BY site, station ORDER BY first_seq, last_seq DESC ROWS UNBOUNDED PRECEDING) AS grp FROM marked)
INSERT INTO station_seq_runs (site, station, first_seq, last_seq, first_ts, first_session, first_misdated)
SELECT site, station, min(first_seq), max(last_seq), (array_agg(first_ts ORDER BY first_seq, last_seq DESC))[1],
       (array_agg(first_session ORDER BY first_seq, last_seq DESC))[1], (array_agg(first_misdated ORDER BY first_seq, last_seq DESC))[1]
FROM grouped GROUP BY site, station, grp
"""
SEQ_RUNS_LOCK = 0x52554E53  # "RUNS": one replica at a time compacts the notes
# A database made before the runs existed: its numbers so far, as runs (once, on the first start that has them).
BACKFILL_SEQ_RUNS = f"""
INSERT INTO station_seq_runs (site, station, first_seq, last_seq, first_ts, first_session, first_misdated)
SELECT site, station, min(seq), max(seq), (array_agg(ts ORDER BY seq))[1], (array_agg(session ORDER BY seq))[1],
       (array_agg(misdated ORDER BY seq))[1]
FROM (SELECT *, seq - row_number() OVER (PARTITION BY site, station ORDER BY seq) AS grp FROM (
  SELECT site, station, seq, min(ts) AS ts, max(session) AS session, bool_and(misdated) AS misdated FROM (
    SELECT site, station, seq, ts, session, false AS misdated FROM events WHERE kind IN ({_SEQ_KINDS_SQL}) AND seq IS NOT NULL
    UNION ALL
    SELECT site, station, seq, ts, session, true FROM events_misdated WHERE kind IN ({_SEQ_KINDS_SQL}) AND seq IS NOT NULL) a
  GROUP BY 1, 2, 3) d) islands
GROUP BY site, station, grp
"""
_prepared: weakref.WeakSet[psycopg.Connection[Any]] = weakref.WeakSet()
"""Connections whose session already has the ``centre_batch`` table."""
NEW_STATIONS = """
INSERT INTO stations (site, station, first_seen, last_seen)
SELECT u.site, u.station, now(), now() FROM unnest(%s::text[], %s::text[]) AS u(site, station)
ON CONFLICT (site, station) DO NOTHING
"""
FOLD_SUMMARY = """
INSERT INTO stations (site, station, first_seen, last_seen, last_event_ts, last_session, max_seq)
SELECT u.site, u.station, to_timestamp(u.seen), to_timestamp(u.seen), to_timestamp(u.last_ts), u.session, u.seq
FROM unnest(%s::text[], %s::text[], %s::float8[], %s::float8[], %s::int8[], %s::int8[]) AS u(site, station, seen, last_ts, session, seq)
ON CONFLICT (site, station) DO UPDATE SET
  last_seen = greatest(stations.last_seen, excluded.last_seen),
  last_event_ts = greatest(stations.last_event_ts, excluded.last_event_ts),
  last_session = greatest(stations.last_session, excluded.last_session),
  max_seq = greatest(stations.max_seq, excluded.max_seq)
"""


_CORRECTED = "e.ts + c.offset_ms * interval '1 millisecond'"
APPLY_BY_ID = f"""
UPDATE {{table}} e SET corrected_ts = {_CORRECTED}
FROM clock_correction_records c
WHERE e.clock_synced IS FALSE AND c.site = e.site AND c.station = e.station AND c.record_id = e.event_id
  AND c.record_kind = CASE WHEN e.kind IN ('screening', 'alarm') THEN 'event' ELSE e.kind END
  AND e.corrected_ts IS DISTINCT FROM {_CORRECTED} AND {{scope}}
"""
# Past 2000 ids a correction names its records by seq range (ids_complete false): only those no id named.
APPLY_BY_SEQ = f"""
UPDATE {{table}} e SET corrected_ts = {_CORRECTED}
FROM clock_corrections c
WHERE e.clock_synced IS FALSE AND e.corrected_ts IS NULL AND NOT c.ids_complete AND c.seq_first IS NOT NULL
  AND c.site = e.site AND c.station = e.station AND e.seq BETWEEN c.seq_first AND c.seq_last
  AND e.kind IN ({_SEQ_KINDS_SQL}) AND {{scope}}
"""
SCOPE_CORRECTION = "e.site = %(site)s AND e.station = %(station)s AND c.correction_id = %(correction_id)s"
SCOPE_ROWS = "e.msg_id = ANY(%(msg_ids)s) AND e.ts BETWEEN %(ts_min)s AND %(ts_max)s"  # the times prune the partitions
STORED_CORRECTIONS = """
SELECT count(*), count(*) FILTER (WHERE NOT ids_complete) FROM clock_corrections
WHERE (site, station) IN (SELECT * FROM unnest(%s::text[], %s::text[]))
"""


def _lock_stations(conn: psycopg.Connection[Any], stations: Iterable[tuple[str, str]]) -> None:
    """Take the clock lock of each station (sorted: one order for every replica) for the rest of the transaction.

    A correction and the records it names may reach two replicas at once; whichever commits second
    sees the other's rows, so no record misses its correction.
    """
    for site, station in sorted(set(stations)):
        conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (CLOCK_LOCK, f"{site}/{station}"))


def _apply(conn: psycopg.Connection[Any], scope: str, args: dict[str, Any], *, by_seq: bool) -> int:
    """Set ``corrected_ts`` on the stored records in ``scope`` that a stored correction names; return how many changed.

    ``by_seq``: also by the seq range of corrections whose ids are incomplete (each UPDATE plans every partition).
    """
    changed = 0
    for sql in (APPLY_BY_ID, APPLY_BY_SEQ) if by_seq else (APPLY_BY_ID,):
        for table in ("events", "events_misdated"):
            changed += conn.execute(sql.format(table=table, scope=scope), args).rowcount
    return changed


@dataclass
class CorrectionResult:
    """What storing a batch's clock corrections did: corrections new and already stored, records given a corrected time."""

    new: int = 0
    duplicates: int = 0
    corrected: int = 0


def write_corrections(conn: psycopg.Connection[Any], corrections: Sequence[ClockCorrection]) -> CorrectionResult:
    """Store each correction once (by station and ``correction_id``) and date the records it names, in one transaction."""
    result = CorrectionResult()
    with conn.transaction():
        _lock_stations(conn, ((c.site, c.station) for c in corrections))
        for c in corrections:
            row = conn.execute(
                """INSERT INTO clock_corrections (site, station, correction_id, msg_id, offset_ms, seq_first, seq_last, records,
                     ids_complete, late) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                   ON CONFLICT DO NOTHING RETURNING 1""",
                (c.site, c.station, c.correction_id, c.msg_id, c.offset_ms, c.seq_first, c.seq_last, c.count, c.ids_complete, c.late),
            ).fetchone()
            if row is None:
                result.duplicates += 1
                continue
            result.new += 1
            if c.records:
                conn.execute(
                    """INSERT INTO clock_correction_records (site, station, record_id, record_kind, correction_id, offset_ms)
                       SELECT %s, %s, u.id, u.kind, %s, %s FROM unnest(%s::text[], %s::text[]) AS u(id, kind)
                       ON CONFLICT DO NOTHING""",
                    (c.site, c.station, c.correction_id, c.offset_ms, [r[1] for r in c.records], [r[0] for r in c.records]),
                )
            scope = {"site": c.site, "station": c.station, "correction_id": c.correction_id}
            result.corrected += _apply(conn, SCOPE_CORRECTION, scope, by_seq=not c.ids_complete)
    return result


def connect(url: str, *, autocommit: bool = False) -> psycopg.Connection[Any]:
    """Open a connection with a bounded connect time and the centre's application name."""
    return psycopg.connect(url, autocommit=autocommit, connect_timeout=10, application_name="checkpoint-centre")


def ddl_lock(conn: psycopg.Connection[Any]) -> None:
    """Take the schema lock for the rest of the caller's transaction: replicas starting together take turns.

    Two sessions running the same ``CREATE TABLE IF NOT EXISTS`` at once can both find it missing and
    one fails on ``pg_type``'s unique index; every schema change of the centre runs under this lock.
    """
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (DDL_LOCK,))


_ddl_lock = ddl_lock


def ensure_schema(conn: psycopg.Connection[Any], timezone: str | None = None) -> str:
    """Create what is missing and return the centre's time zone (stored at first creation; ``timezone`` or UTC).

    A different ``timezone`` than the one stored is an error: the partitions' day bounds depend on it.
    A database made before ``station_seq_runs`` gets its runs from the events kept, once, here (schema 2;
    every replica must run this version from then on: an older writer adds no notes).
    """
    with conn.transaction():
        _ddl_lock(conn)
        had_runs = conn.execute("SELECT to_regclass('station_seq_runs') IS NOT NULL").fetchone()
        conn.execute(SCHEMA)
        if had_runs is not None and not had_runs[0]:
            t0 = time.perf_counter()
            runs = conn.execute(BACKFILL_SEQ_RUNS).rowcount
            conn.execute("UPDATE centre_meta SET value = %s WHERE key = 'schema'", (str(SCHEMA_VERSION),))
            log.info("centre schema upgrade: station_seq_runs made from the events kept runs=%d s=%.1f", runs, time.perf_counter() - t0)
        row = conn.execute("SELECT value FROM centre_meta WHERE key = 'timezone'").fetchone()
        if row is None:
            tz = timezone or "UTC"
            ZoneInfo(tz)  # raises for an unknown zone before anything is stored
            conn.execute("INSERT INTO centre_meta(key, value) VALUES ('timezone', %s), ('schema', %s)", (tz, str(SCHEMA_VERSION)))
            return tz
        stored = str(row[0])
        if timezone and timezone != stored:
            raise ValueError(f"--timezone {timezone!r}: this database's days are cut in {stored!r} (set when it was created)")
        return stored


def dated_events(columns: str, where: str = "true") -> str:
    """Return a subquery of the events whose time (``corrected_ts`` where a clock correction set it, else ``ts``) is in the window.

    The window is ``%(start)s`` … ``%(end)s``; the rows have ``columns`` and ``at`` (that time). The
    uncorrected rows come from the window's partitions alone; the corrected ones (few) through the
    partial indexes on ``corrected_ts``, from ``events`` and from ``events_misdated`` (a 1970 clock).
    """
    in_window = "{col} >= %(start)s AND {col} < %(end)s"
    ts_in, corr_in = in_window.format(col="ts"), in_window.format(col="corrected_ts")
    return f"""(
  SELECT {columns}, coalesce(corrected_ts, ts) AS at FROM events
   WHERE {ts_in} AND (corrected_ts IS NULL OR ({corr_in})) AND ({where})
  UNION ALL
  SELECT {columns}, corrected_ts FROM events WHERE {corr_in} AND NOT ({ts_in}) AND ({where})
  UNION ALL
  SELECT {columns}, corrected_ts FROM events_misdated WHERE {corr_in} AND ({where}))"""


def day_bounds(day: dt.date, tz: ZoneInfo) -> tuple[dt.datetime, dt.datetime]:
    """Return the start and end (exclusive) of ``day`` in zone ``tz`` as aware datetimes."""
    start = dt.datetime.combine(day, dt.time(), tzinfo=tz)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=tz)
    return start, end


def day_of(ts: float, tz: ZoneInfo) -> dt.date:
    """Return the calendar day of unix time ``ts`` in zone ``tz``."""
    return dt.datetime.fromtimestamp(ts, tz).date()


def partition_name(day: dt.date) -> str:
    """Return the name of ``day``'s partition (``events_pYYYYMMDD``)."""
    return f"events_p{day:%Y%m%d}"


def existing_partitions(conn: psycopg.Connection[Any]) -> set[dt.date]:
    """Return the days that have a partition of ``events``."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass('events')"
    ).fetchall()
    days = set()
    for (name,) in rows:
        m = PARTITION.match(name)
        if m:
            days.add(dt.datetime.strptime(m.group(1), "%Y%m%d").date())
    return days


def create_partitions(conn: psycopg.Connection[Any], days: Iterable[dt.date], tz: ZoneInfo) -> list[dt.date]:
    """Create the partitions of ``days`` that do not exist yet (under the DDL lock); return those created."""
    created = []
    with conn.transaction():
        _ddl_lock(conn)
        have = existing_partitions(conn)
        for day in sorted(set(days) - have):
            start, end = day_bounds(day, tz)
            conn.execute(
                f"CREATE TABLE {partition_name(day)} PARTITION OF events FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
            )
            created.append(day)
    if created:
        log.info("centre created partitions days=%s", ",".join(d.isoformat() for d in created))
    return created


def drop_expired(conn: psycopg.Connection[Any], keep_from: dt.date) -> list[dt.date]:
    """Drop every day partition before ``keep_from`` (retention) and raise the stations' seq floors; return the days dropped.

    A whole day goes at once (no row-by-row DELETE). Numbers below the oldest one still kept are no
    longer expected, so the gap view does not count the dropped days as missing events.
    """
    dropped = []
    with conn.transaction():
        _ddl_lock(conn)
        for day in sorted(existing_partitions(conn)):
            if day < keep_from:
                conn.execute(f"DROP TABLE {partition_name(day)}")
                dropped.append(day)
        if dropped:
            conn.execute(
                """
                INSERT INTO station_seq_floor (site, station, seq_floor)
                SELECT st.site, st.station, coalesce(k.min_seq - 1, st.max_seq, 0)
                FROM stations st LEFT JOIN (SELECT site, station, min(seq) AS min_seq FROM station_seqs GROUP BY site, station) k
                  USING (site, station)
                ON CONFLICT (site, station) DO UPDATE SET seq_floor = greatest(station_seq_floor.seq_floor, excluded.seq_floor)
                """
            )
            conn.execute("DELETE FROM events_misdated WHERE received_at < %s", (dt.datetime.combine(keep_from, dt.time(), tzinfo=dt.UTC),))
            # Runs wholly below a station's floor say nothing any more (the gap view reads from the floor up).
            conn.execute(
                "DELETE FROM station_seq_runs r USING station_seq_floor f "
                "WHERE r.site = f.site AND r.station = f.station AND r.last_seq <= f.seq_floor"
            )
    if dropped:
        log.info("centre retention dropped partitions days=%s", ",".join(d.isoformat() for d in dropped))
    return dropped


@dataclass
class BatchResult:
    """What one committed batch did: rows new to the database, rows already there (redeliveries), the stations' summary."""

    inserted: int = 0
    duplicates: int = 0
    misdated: int = 0
    corrected: int = 0  # rows dated by a clock correction stored before them
    by_kind: dict[str, int] = field(default_factory=dict)
    stations: dict[tuple[str, str], list[Any]] = field(default_factory=dict)  # (site, station) → [newest ts, session, max seq]


def write_batch(
    conn: psycopg.Connection[Any], placed: Sequence[EventRow], misdated: Sequence[EventRow], known: set[tuple[str, str]] | None = None
) -> BatchResult:
    """Insert one batch in one transaction (idempotent by ``msg_id``); return the counts and the stations' summary.

    ``placed`` rows must fall in existing partitions; ``misdated`` go to ``events_misdated``. A station
    not in ``known`` (the caller's cache, updated here) gets its ``stations`` row in the same transaction.
    """
    result = BatchResult()
    new: list[tuple[Any, ...]] = []
    known = set() if known is None else known
    fresh = sorted({(r.site, r.station) for rows in (placed, misdated) for r in rows} - known)
    if conn not in _prepared:
        with conn.transaction():
            conn.execute(BATCH_TABLE)
        _prepared.add(conn)
    with conn.transaction():
        with conn.cursor() as cur:
            with cur.copy(COPY_BATCH) as copy:
                copy.set_types([*_TYPES, "bool"])
                for flag, rows in ((False, placed), (True, misdated)):
                    for row in rows:
                        copy.write_row([*(getattr(row, c) for c in _COLUMNS), flag])
            cur.execute(INSERT_BATCH)
            for kind, is_misdated in cur.fetchall():
                new.append((kind,))
                result.misdated += bool(is_misdated)
            if fresh:
                cur.execute(NEW_STATIONS, [[k[0] for k in fresh], [k[1] for k in fresh]])
        unsynced = [r for rows in (placed, misdated) for r in rows if r.clock_synced is False]
        if unsynced:  # rare (a station that booted without a clock): a correction that came first dates them now
            stations = sorted({(r.site, r.station) for r in unsynced})
            _lock_stations(conn, stations)
            found = conn.execute(STORED_CORRECTIONS, ([k[0] for k in stations], [k[1] for k in stations])).fetchone()
            if found is not None and found[0]:  # usually not: the correction follows its records
                scope = {
                    "msg_ids": [r.msg_id for r in unsynced],
                    "ts_min": dt.datetime.fromtimestamp(min(r.ts for r in unsynced) - 1.0, dt.UTC),
                    "ts_max": dt.datetime.fromtimestamp(max(r.ts for r in unsynced) + 1.0, dt.UTC),
                }
                result.corrected = _apply(conn, SCOPE_ROWS, scope, by_seq=bool(found[1]))
    known.update(fresh)
    for (kind,) in new:
        result.by_kind[kind] = result.by_kind.get(kind, 0) + 1
    # The summary is folded in with greatest(): a redelivered row in it changes nothing.
    for rows in (placed, misdated):
        for row in rows:
            entry = result.stations.setdefault((row.site, row.station), [row.ts, row.session, None])
            entry[0] = max(entry[0], row.ts)
            if row.session is not None:
                entry[1] = row.session if entry[1] is None else max(entry[1], row.session)
            if row.kind in SEQ_KINDS and row.seq is not None:
                entry[2] = row.seq if entry[2] is None else max(entry[2], row.seq)
    result.inserted = len(new)
    result.duplicates = len(placed) + len(misdated) - len(new)
    return result


def compact_seq_runs(conn: psycopg.Connection[Any]) -> int | None:
    """Fold the writers' ``station_seq_notes`` into ``station_seq_runs`` in one transaction; return the notes and runs taken.

    None when another replica is compacting right now (it takes the notes; nothing is lost either way).
    """
    with conn.transaction():
        row = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (SEQ_RUNS_LOCK,)).fetchone()
        if not (row and row[0]):
            return None
        conn.execute(SEQ_FOLD_TABLE)
        taken = conn.execute(TAKE_SEQ_RUNS).rowcount  # the notes and the runs they touch, out of both tables
        conn.execute(STORE_SEQ_RUNS)  # their union as maximal runs
    return taken


def fold_summary(conn: psycopg.Connection[Any], summary: dict[tuple[str, str], list[Any]], seen_at: float) -> None:
    """Fold per-station summaries (newest event time, session, highest seq) into ``stations`` in one transaction."""
    if not summary:
        return
    keys = sorted(summary)  # one lock order for every replica: no deadlock between them
    with conn.transaction():
        conn.execute(
            FOLD_SUMMARY,
            [
                [k[0] for k in keys],
                [k[1] for k in keys],
                [seen_at] * len(keys),
                *([summary[k][i] for k in keys] for i in range(3)),
            ],
        )


def report(conn: psycopg.Connection[Any], day: dt.date, tz: ZoneInfo) -> dict[str, Any]:
    """Return the day's counts, de-duplicated: stations, screened, by decision, alarms, vehicles, missing events."""
    start, end = day_bounds(day, tz)
    window = {"start": start, "end": end}
    # One pass over the day's partition by kind (what every count below is made of). A station sends
    # each decision once on events/screening (and, for an alarm, once more on events/alarm with the
    # same event_id): the screening rows are the decisions, plus any alarm copy whose screening copy
    # never arrived (an outbox bound may drop the screening copy and keep the alarm). Measured here on
    # 280 000 rows: 0.6 s this way, 2.5 s with DISTINCT ON (site, station, event_id).
    # Each record counts on its true day: its corrected time where a clock correction set one (dated_events).
    rows = conn.execute(
        f"SELECT kind, decision, detail, count(*), coalesce(sum(dropped), 0) FROM {dated_events('kind, decision, detail, dropped')} d "
        "GROUP BY kind, decision, detail",
        window,
    ).fetchall()
    alarm_copies = dated_events("site, station, event_id, decision", "kind = 'alarm' AND event_id IS NOT NULL")
    screenings = dated_events("site, station, event_id", "kind = 'screening'")
    orphan_alarms = conn.execute(
        f"""SELECT a.decision, count(*) FROM {alarm_copies} a LEFT JOIN {screenings} s
             ON s.site = a.site AND s.station = a.station AND s.event_id = a.event_id
           WHERE s.event_id IS NULL
           GROUP BY a.decision""",
        window,
    ).fetchall()
    by_decision: dict[str, int] = {}
    vehicles: dict[str, int] = {}
    messages = alarms = reported_dropped = 0
    for kind, decision, detail, n, dropped in rows:
        messages += n
        if kind == "screening":
            by_decision[decision or "unknown"] = by_decision.get(decision or "unknown", 0) + n
        elif kind == "alarm":
            alarms += n
        elif kind == "vehicle":
            vehicles[detail or "unknown"] = vehicles.get(detail or "unknown", 0) + n
        elif kind == "overflow":
            reported_dropped += dropped
    for decision, n in orphan_alarms:
        by_decision[decision or "unknown"] = by_decision.get(decision or "unknown", 0) + n
    by_decision = dict(sorted(by_decision.items()))
    vehicles = dict(sorted(vehicles.items()))
    stations_row = conn.execute(
        f"SELECT count(*) FROM (SELECT DISTINCT site, station FROM {dated_events('site, station')} d) s", window
    ).fetchone()
    stations = stations_row[0] if stations_row else 0
    missing = {
        f"{site}/{station}": int(n)
        for site, station, n in conn.execute(
            "SELECT site, station, sum(missing) FROM station_gaps WHERE next_ts >= %(start)s AND next_ts < %(end)s "
            "GROUP BY site, station ORDER BY 1, 2",
            window,
        ).fetchall()
    }
    misdated = conn.execute(
        "SELECT count(*) FROM events_misdated WHERE received_at >= %(start)s AND received_at < %(end)s", window
    ).fetchone()
    return {
        "day": day.isoformat(),
        "timezone": str(tz.key),
        "stations": int(stations),
        "screened": sum(by_decision.values()),
        "by_decision": by_decision,
        "alarms": int(alarms),
        "vehicles": vehicles,
        "missing_events": sum(missing.values()),
        "missing_by_station": missing,
        "reported_dropped": int(reported_dropped),
        "messages": int(messages),
        "misdated_received": int(misdated[0]) if misdated else 0,
        "generated_at": time.time(),
    }


def missing_by_station(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """Return every station with its missing events over the data kept (``station_missing``)."""
    cur = conn.execute(
        "SELECT site, station, missing_events, gaps, max_seq, last_session, last_seen FROM station_missing ORDER BY site, station"
    )
    cols = [c.name for c in cur.description or ()]
    return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]


def add_user(conn: psycopg.Connection[Any], name: str, role: str, password_hash: str) -> bool:
    """Create or update a centre user; return True when the user is new."""
    if role not in ROLES:
        raise ValueError(f"role {role!r}: expected one of {', '.join(ROLES)}")
    with conn.transaction():
        row = conn.execute(
            """INSERT INTO centre_users (name, role, password) VALUES (%s, %s, %s)
               ON CONFLICT (name) DO UPDATE SET role = excluded.role, password = excluded.password, updated_at = now()
               RETURNING (xmax = 0)""",
            (name, role, password_hash),
        ).fetchone()
    return bool(row and row[0])


def audit(
    conn: psycopg.Connection[Any],
    actor: str,
    role: str | None,
    action: str,
    target: str | None,
    detail: Any = None,
    reason: str | None = None,
) -> int:
    """Append one ``centre_audit`` row (inside the caller's transaction, so it commits with the change); return its id."""
    from psycopg.types.json import Jsonb

    row = conn.execute(
        "INSERT INTO centre_audit (actor, role, action, target, reason, detail) VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
        (actor, role, action, target, reason, Jsonb(detail) if detail is not None else None),
    ).fetchone()
    return int(row[0]) if row else 0
