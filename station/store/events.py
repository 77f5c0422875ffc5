"""The station's durable local log: screenings, gate actions and the transactional MQTT outbox.

One SQLite file holds everything, so a screening and the messages that announce it are written in
**one transaction**: after a crash or power cut either both exist or neither does, and the outbox
pump (``station.link.sync``) can deliver what is in the table without ever consulting another store.

Design points, each answering a failure seen in the field (``architecture.md`` §1.4, §2.6):

* ``journal_mode=WAL`` so readers (the kiosk page, ``stationctl``) never block the writer, and
  ``synchronous=FULL`` so a transaction is on the medium when ``COMMIT`` returns. In WAL mode
  ``NORMAL`` only syncs at checkpoints; the most recent commits can roll back after a power cut.
  The gate acts only after :meth:`SqliteEventStore.record` returns, so the record must survive
  a power cut that happens one millisecond later.
* One connection, one lock: every statement runs under :attr:`SqliteEventStore._lock`, which makes
  the store safe to share between the pipeline, the outbox pump and the web UI, and removes
  ``database is locked`` from the writer's path entirely.
* ``BEGIN IMMEDIATE`` for every write so the write lock is taken up front; a reader in another
  process (``stationctl``) can never make a commit fail half-way.
* The schema is versioned with ``PRAGMA user_version`` and an ordered list of migrations; an older
  file is copied aside (``<db>.pre-v<N>.bak``, via the SQLite backup API) before it is migrated,
  and a file written by a newer release is refused rather than guessed at.
* ``seq`` (per station, never reused) and ``session`` (one per daemon start) live in ``meta`` and
  go into every payload, so the back end can detect gaps and restarts (Sparkplug's ``seq``/``bdSeq``).
* Rows leave the outbox only when the broker acknowledged them (PUBACK): delivery is at-least-once
  and consumers de-duplicate by ``msg_id``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from station.domain.model import GateResult, ScreeningEvent
from station.ops.fileio import fsync_path

log = logging.getLogger("station.store.events")

PAYLOAD_SCHEMA = 1
"""Version of the JSON envelope published for each outbox row (the ``schema`` key)."""

PRIORITY_ALARM = 0
"""Outbox priority of alarm messages. Priorities 0-1 are exempt from any capacity policy."""

PRIORITY_EVENT = 5
"""Outbox priority of ordinary screening messages."""

BUSY_TIMEOUT_MS = 5000


class StoreError(Exception):
    """The event store cannot be used as asked."""


class SchemaTooNewError(StoreError):
    """The database was written by a newer release than this one."""


@dataclass(frozen=True, slots=True)
class OutboxBounds:
    """Capacity of the outbox (Kura's ``store.capacity``, ThingsBoard's TTL). Beyond any bound the
    oldest *ordinary* rows are dropped; alarm rows (priority <= 1) never are."""

    max_rows: int
    max_bytes: int
    max_age_s: float

    NEAR = 0.9
    """At this fraction of a bound ``bounds_alarm`` is raised, before anything is dropped."""


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One message waiting to be delivered, as the outbox pump sees it."""

    id: int
    msg_id: str
    topic: str
    payload: bytes
    qos: int
    priority: int
    created_at: int  # unix milliseconds (the wall clock may be unsynchronised: no RTC on a Pi)
    attempts: int


# --------------------------------------------------------------------------------------------
# Schema migrations. Each function moves the schema from version i to i + 1 and runs inside the
# transaction that also sets ``user_version``; never edit one that has shipped, append a new one.
# --------------------------------------------------------------------------------------------


def _migrate_v1(db: Database) -> None:
    """Initial schema: events, outbox, gate actions, meta counters."""
    statements = [
        """
        CREATE TABLE events (
          id            INTEGER PRIMARY KEY,
          event_id      TEXT NOT NULL UNIQUE,
          ts            REAL NOT NULL,              -- unix time of the decision
          decision      TEXT NOT NULL,
          reason        TEXT NOT NULL,
          alarm         INTEGER NOT NULL,
          temperature_c REAL,
          code_colour   TEXT,
          lane          TEXT NOT NULL,
          record        TEXT NOT NULL,              -- JSON of ScreeningEvent.as_record()
          created_at    REAL NOT NULL               -- unix time the row was written
        )
        """,
        "CREATE INDEX events_ts ON events(ts)",
        "CREATE INDEX events_decision ON events(decision)",
        # Exactly the shape in architecture.md §2 ("What this project should take from it").
        """
        CREATE TABLE outbox (
          id          INTEGER PRIMARY KEY,          -- local order
          msg_id      TEXT NOT NULL UNIQUE,         -- UUIDv7/ULID, also inside the payload (idempotency key)
          topic       TEXT NOT NULL,
          payload     BLOB NOT NULL,
          qos         INTEGER NOT NULL DEFAULT 1,
          priority    INTEGER NOT NULL DEFAULT 5,   -- 0-1: lifecycle/alarms, exempt from capacity
          created_at  INTEGER NOT NULL,             -- unix ms + clock_synced flag in payload
          attempts    INTEGER NOT NULL DEFAULT 0,
          sent_at     INTEGER, acked_at INTEGER, dropped_at INTEGER, last_error TEXT
        )
        """,
        "CREATE INDEX outbox_pending ON outbox(acked_at, dropped_at, priority, id)",
        # No foreign key to events: a gate action must be logged even when its event could not
        # be (the gate falls back to its safe state after a store error and that is audited too).
        """
        CREATE TABLE gate_actions (
          id         INTEGER PRIMARY KEY,
          event_id   TEXT NOT NULL,
          action     TEXT NOT NULL,
          executed   INTEGER NOT NULL,
          reason     TEXT NOT NULL,
          t_mono     REAL NOT NULL,                 -- monotonic time the gate reported
          created_at REAL NOT NULL
        )
        """,
        "CREATE INDEX gate_actions_event_id ON gate_actions(event_id)",
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)",
        "INSERT INTO meta(key, value) VALUES ('seq', '0'), ('session', '0')",
    ]
    for sql in statements:
        db.execute(sql)


def _migrate_v2(db: Database) -> None:
    """Vehicle events (resident / outsider plates) become durable records, like screenings."""
    statements = [
        """
        CREATE TABLE vehicles (
          id          INTEGER PRIMARY KEY,
          vehicle_id  TEXT NOT NULL UNIQUE,
          ts          REAL NOT NULL,                -- unix time of the event
          kind        TEXT NOT NULL,                -- resident_vehicle | outsider_vehicle
          plate       TEXT NOT NULL,
          confidence  REAL,
          record      TEXT NOT NULL,                -- JSON as published under "vehicle"
          created_at  REAL NOT NULL
        )
        """,
        "CREATE INDEX vehicles_ts ON vehicles(ts)",
        "CREATE INDEX vehicles_plate ON vehicles(plate)",
    ]
    for sql in statements:
        db.execute(sql)


def _migrate_data_audit(db: Database) -> None:
    """Audit trail of deletions of personal data (``stationctl data erase``, retention purges)."""
    db.execute(
        """
        CREATE TABLE data_audit (
          id        INTEGER PRIMARY KEY,
          ts        REAL NOT NULL,                  -- unix time of the deletion
          actor     TEXT NOT NULL,                  -- 'retention' or 'stationctl data erase (user …)'
          criteria  TEXT NOT NULL,                  -- JSON: what was asked (range, event ids, policy)
          counts    TEXT NOT NULL,                  -- JSON: rows deleted per table
          note      TEXT NOT NULL DEFAULT ''
        )
        """
    )


def _migrate_operator_actions(db: Database) -> None:
    """What operators did at the lane's touch screen (station/web): alarm acknowledgements, manual
    overrides and every refused attempt (wrong PIN, locked, rate-limited)."""
    db.execute(
        """
        CREATE TABLE operator_actions (
          id         INTEGER PRIMARY KEY,
          ts         REAL NOT NULL,                 -- unix time of the request
          action     TEXT NOT NULL,                 -- ack | open_gate | recheck
          operator   TEXT NOT NULL,                 -- who said they were (the PIN proves the role)
          event_id   TEXT,                          -- the screening it concerns (ack, recheck)
          ok         INTEGER NOT NULL,              -- 1 carried out, 0 refused
          reason     TEXT NOT NULL,                 -- ok | wrong_pin | locked | rate_limited | ...
          detail     TEXT NOT NULL DEFAULT '{}'     -- JSON: clinical reading, gate audit id, ...
        )
        """
    )
    db.execute("CREATE INDEX operator_actions_event ON operator_actions(event_id, action)")


def _migrate_command_audit(db: Database) -> None:
    """Remote commands over MQTT (station.link.commands): every signed command carried out or refused,
    and refused ones (unsigned, forged, replayed, …) as far as the audit rate limit lets them in."""
    db.execute(
        """
        CREATE TABLE command_audit (
          id         INTEGER PRIMARY KEY,
          ts         REAL NOT NULL,                 -- unix time the station judged the request
          command    TEXT NOT NULL,                 -- cmd/<name>
          request_id TEXT,                          -- the request's id (unverified when refused)
          ok         INTEGER NOT NULL,              -- 1 carried out, 0 refused
          reason     TEXT NOT NULL,                 -- ok | unsigned | bad_signature | replay | ...
          signer     TEXT,                          -- signed "by (key <key id>)"; null when not verified
          body       TEXT NOT NULL                  -- the request as received, capped (2 KiB)
        )
        """
    )


Migration = Callable[[Database], None]
MIGRATIONS: Sequence[Migration] = (_migrate_v1, _migrate_v2, _migrate_data_audit, _migrate_operator_actions, _migrate_command_audit)
"""Ordered migrations; ``MIGRATIONS[i]`` upgrades ``user_version`` i to i + 1."""

SCHEMA_VERSION = len(MIGRATIONS)


# --------------------------------------------------------------------------------------------


def new_msg_id() -> str:
    """A UUIDv7-layout id as 32 hex digits: 48-bit unix ms, version 7, 74 random bits.

    Time-ordered ids keep the ``msg_id`` index append-mostly; uniqueness comes from the random
    bits, so a wall clock that steps back (no RTC before NTP) cannot produce duplicates.
    """
    ms = time.time_ns() // 1_000_000 & ((1 << 48) - 1)
    rand = secrets.randbits(74)
    value = (ms << 80) | (0x7 << 76) | ((rand >> 62) << 64) | (0b10 << 62) | (rand & ((1 << 62) - 1))
    return f"{value:032x}"


def _jsonable(value: Any) -> Any:
    """Convert ``value`` into plain JSON types.

    Non-finite floats become ``null`` (``NaN`` is not JSON and breaks strict consumers), numpy
    scalars and arrays become Python numbers and lists, enums their values. Anything else that is
    not JSON-able raises ``TypeError``: the caller's transaction is then rolled back and the gate
    stays in its safe state, which is better than publishing a half-written record.
    """
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Enum):
        return _jsonable(value.value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    tolist = getattr(value, "tolist", None)  # numpy scalars and arrays
    if callable(tolist):
        return _jsonable(tolist())
    raise TypeError(f"value of type {type(value).__name__} is not JSON-serialisable")


def _dumps(value: Any) -> str:
    """Compact JSON of a value already passed through :func:`_jsonable`."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _check_topic_level(name: str, value: str) -> None:
    if not value or any(c in value for c in "/+#\0"):
        raise ValueError(f"{name} {value!r} cannot be used as an MQTT topic level")


class SqliteEventStore:
    """Durable screening log with a transactional outbox, in one SQLite file.

    Thread-safe: every public method may be called from any thread. Writes are serialised by one
    lock over one connection (the single writer); each returns only after its transaction is
    durable.
    """

    def __init__(
        self,
        path: Path,
        station_id: str,
        site: str,
        topic_prefix: str = "checkpoint/v1",
        read_only: bool = False,
    ) -> None:
        _check_topic_level("station_id", station_id)
        _check_topic_level("site", site)
        if not topic_prefix or topic_prefix.endswith("/") or any(c in topic_prefix for c in "+#\0"):
            raise ValueError(f"topic_prefix {topic_prefix!r} is not a valid MQTT topic prefix")
        self.path = Path(path)
        self.station_id = station_id
        self.site = site
        base = f"{topic_prefix}/{site}/{station_id}"
        self.topic_screening = f"{base}/events/screening"
        self.topic_alarm = f"{base}/events/alarm"
        self.topic_vehicle = f"{base}/events/vehicle"
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []
        self._closed = False
        self.outbox_bounds: OutboxBounds | None = None
        """Set by the composition root from ``mqtt.outbox_max_*``; enforced by :meth:`outbox_enforce_bounds`."""

        self.read_only = read_only
        if read_only:
            # For readers beside the running daemon (stationctl): never migrate, back up or write.
            if not self.path.exists():
                raise StoreError(f"no event database at {self.path}")
            conn = sqlite3.connect(
                f"file:{self.path}?mode=ro",
                uri=True,
                check_same_thread=False,
                isolation_level=None,
                timeout=BUSY_TIMEOUT_MS / 1000,
            )
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: the driver never opens implicit transactions; this class issues
            # BEGIN IMMEDIATE / COMMIT itself so that transaction boundaries are explicit.
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            self._conn = conn
            if read_only:
                conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
                version = int(conn.execute("PRAGMA user_version").fetchone()[0])
                if version != SCHEMA_VERSION:
                    raise StoreError(
                        f"{self.path} has schema version {version}, this release reads version "
                        f"{SCHEMA_VERSION}; start the daemon once to migrate it"
                    )
            else:
                self._configure(conn)
            self._db = Database(conn, execute_plugins=False)
            if not read_only:
                self._migrate()
            self._session = self._meta_int("session")
        except BaseException:
            conn.close()
            raise
        log.info("event store open: %s (schema v%d, session %d)", self.path, SCHEMA_VERSION, self._session)

    # ---------------------------------------------------------------- setup

    @staticmethod
    def _configure(conn: sqlite3.Connection) -> None:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"could not switch {mode!r} journal to WAL (is the file on a network share?)")
        # FULL: in WAL mode every COMMIT fsyncs the WAL. NORMAL would leave the last commits in the
        # page cache until the next checkpoint, and a power cut (common at checkpoints: people pull
        # the plug) could roll back a screening whose gate action already happened and the outbox
        # row announcing it. One fsync per screening is affordable at ~1 person per second.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys=ON")

    def _migrate(self) -> None:
        conn = self._conn
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise SchemaTooNewError(
                f"{self.path} has schema version {version}, but this release only knows versions up "
                f"to {SCHEMA_VERSION}: it was written by a newer release. Refusing to open it "
                f"(downgrades are not supported). Reinstall the newer release, or restore a "
                f"'{self.path.name}.pre-v*.bak' copy taken before that upgrade."
            )
        if version == SCHEMA_VERSION:
            return
        has_content = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] > 0
        if has_content:
            backup = self._backup(SCHEMA_VERSION)
            log.warning(
                "migrating %s from schema v%d to v%d; backup at %s",
                self.path,
                version,
                SCHEMA_VERSION,
                backup,
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            conn.execute("BEGIN IMMEDIATE")
            try:
                MIGRATIONS[target - 1](self._db)
                # user_version lives in the file header and is written by this transaction.
                conn.execute(f"PRAGMA user_version={target}")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            log.info("%s: schema now at v%d", self.path, target)

    def _backup(self, target: int) -> Path:
        """Copy the database aside with the SQLite backup API (consistent even mid-WAL)."""
        dest = self.path.with_name(f"{self.path.name}.pre-v{target}.bak")
        tmp = dest.with_name(dest.name + ".tmp")
        tmp.unlink(missing_ok=True)
        out = sqlite3.connect(tmp)
        try:
            self._conn.backup(out)
        finally:
            out.close()
        fsync_path(tmp)
        os.replace(tmp, dest)  # never leave a half-written file under the final name
        fsync_path(dest.parent)
        return dest

    # ---------------------------------------------------------------- helpers

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"event store {self.path} is closed")

    def _meta_int(self, key: str) -> int:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise StoreError(f"meta key {key!r} missing from {self.path}")
        return int(row[0])

    def _bump_meta(self, key: str) -> int:
        # fetchall(): a RETURNING statement is only complete once its rows are consumed.
        rows = self._conn.execute(
            "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = ? RETURNING CAST(value AS INTEGER)",
            (key,),
        ).fetchall()
        if not rows:
            raise StoreError(f"meta key {key!r} missing from {self.path}")
        return int(rows[0][0])

    def _write(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``fn`` in one ``BEGIN IMMEDIATE`` transaction; roll back on any error."""
        with self._lock:
            self._check_open()
            if self.read_only:
                raise StoreError(f"event store {self.path} is open read-only")
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return result

    def write_transaction(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``fn(conn)`` in one durable write transaction (maintenance: retention, data erase)."""
        return self._write(fn)

    def _new_msg_id(self) -> str:
        """The idempotency key of one outbox message (overridable to inject faults in tests)."""
        return new_msg_id()

    def _query(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[dict[str, Any]]:
        with self._lock:
            self._check_open()
            return list(self._db.query(sql, params))

    @staticmethod
    def _event_dict(row: dict[str, Any]) -> dict[str, Any]:
        """An event as read back: the stored ``as_record()`` dict plus ``_``-prefixed row metadata.

        Keys starting with ``_`` are local bookkeeping (``_rowid`` for ``events_since``,
        ``_created_at``); everything else is exactly what was published.
        """
        event: dict[str, Any] = json.loads(row["record"])
        event["_rowid"] = row["id"]
        event["_created_at"] = row["created_at"]
        return event

    # ---------------------------------------------------------------- lifecycle

    def begin_session(self) -> int:
        """Start a new session (one per daemon start) and return its number.

        The session number goes into every payload so the back end can tell a restart (where
        in-flight messages may be re-sent) from a gap.
        """
        self._session = self._write(lambda conn: self._bump_meta("session"))
        log.info("store session %d begins", self._session)
        return self._session

    @property
    def session(self) -> int:
        return self._session

    def add_outbox_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` after each commit that adds outbox rows (it must not block)."""
        with self._lock:
            self._listeners.append(callback)

    def close(self) -> None:
        """Checkpoint the WAL into the main file and close. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self.read_only:
                self._conn.close()
                return
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                # The data is safe in the WAL; the next open replays it.
                log.warning("WAL checkpoint on close failed: %s", exc)
            finally:
                self._conn.close()
        log.info("event store closed: %s", self.path)

    def __enter__(self) -> SqliteEventStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- writes

    def record(self, event: ScreeningEvent) -> int:
        """Write ``event`` and its outbox message(s) in one durable transaction.

        Returns the event's row id. When this returns the rows are on the medium (WAL, FULL sync);
        if it raises, nothing was written and ``seq`` was not consumed.
        """
        record = _jsonable(event.as_record())
        record_json = _dumps(record)
        topics = [(self.topic_screening, PRIORITY_EVENT)]
        if event.alarm:
            topics.append((self.topic_alarm, PRIORITY_ALARM))

        def tx(conn: sqlite3.Connection) -> int:
            now = time.time()
            cur = conn.execute(
                "INSERT INTO events(event_id, ts, decision, reason, alarm, temperature_c, "
                "code_colour, lane, record, created_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    event.event_id,
                    event.wall_ts,
                    event.decision.value,
                    event.reason,
                    int(event.alarm),
                    record["temperature_c"],
                    event.code_colour.value if event.code_colour else None,
                    event.lane,
                    record_json,
                    now,
                ),
            )
            rowid = int(cur.lastrowid or 0)
            seq = self._bump_meta("seq")
            for topic, priority in topics:
                self._enqueue(
                    conn, topic, priority, seq=seq, ts=record["ts"], clock_synced=bool(event.clock_synced), body={"event": record}, now=now
                )
            return rowid

        rowid: int = self._write(tx)
        self._notify_listeners()
        return rowid

    def _enqueue(
        self,
        conn: sqlite3.Connection,
        topic: str,
        priority: int,
        *,
        seq: int,
        ts: Any,
        clock_synced: bool | None,
        body: Mapping[str, Any],
        now: float,
    ) -> str:
        """Queue one outbox message with the common envelope (schema, msg_id, station, seq,
        session, ts, clock_synced) plus ``body``; runs inside the caller's transaction."""
        msg_id = self._new_msg_id()
        payload = {
            "schema": PAYLOAD_SCHEMA,
            "msg_id": msg_id,
            "station_id": self.station_id,
            "site": self.site,
            "seq": seq,
            "session": self._session,
            "ts": ts,
            "clock_synced": clock_synced,
            **body,
        }
        conn.execute(
            "INSERT INTO outbox(msg_id, topic, payload, qos, priority, created_at) VALUES (?, ?, ?, 1, ?, ?)",
            (msg_id, topic, _dumps(payload).encode("utf-8"), priority, int(now * 1000)),
        )
        return msg_id

    def record_vehicle(self, record: Mapping[str, Any]) -> int:
        """Write a vehicle event (``resident_vehicle`` / ``outsider_vehicle``) and its outbox
        message on ``events/vehicle`` in one durable transaction; returns the row id.

        ``record`` needs ``vehicle_id``, ``ts`` (unix time), ``type`` and ``plate``. A vehicle event
        consumes a ``seq`` like a screening (the centre detects gaps across both). It is never an
        alarm: ordinary priority, and nothing goes to ``events/alarm``.
        """
        rec = _jsonable(dict(record))
        for key in ("vehicle_id", "ts", "type", "plate"):
            if rec.get(key) in (None, ""):
                raise ValueError(f"vehicle record needs {key!r}")
        rec["alarm"] = False  # by definition: resident / outsider plates are information only

        def tx(conn: sqlite3.Connection) -> int:
            now = time.time()
            cur = conn.execute(
                "INSERT INTO vehicles(vehicle_id, ts, kind, plate, confidence, record, created_at) VALUES (?,?,?,?,?,?,?)",
                (rec["vehicle_id"], float(rec["ts"]), rec["type"], rec["plate"], rec.get("confidence"), _dumps(rec), now),
            )
            seq = self._bump_meta("seq")
            self._enqueue(
                conn,
                self.topic_vehicle,
                PRIORITY_EVENT,
                seq=seq,
                ts=rec["ts"],
                clock_synced=rec.get("clock_synced"),
                body={"vehicle": rec},
                now=now,
            )
            return int(cur.lastrowid or 0)

        rowid: int = self._write(tx)
        self._notify_listeners()
        return rowid

    _COUNT_KEYS = ("entry", "exit")

    def direction_counts(self) -> dict[str, int]:
        """Entry / exit totals as last saved (``meta.count_entry`` / ``count_exit``; 0 when never saved)."""
        rows = self._query("SELECT key, value FROM meta WHERE key IN ('count_entry', 'count_exit')")
        saved = {r["key"].removeprefix("count_"): int(r["value"]) for r in rows}
        return {k: saved.get(k, 0) for k in self._COUNT_KEYS}

    def save_direction_counts(self, counts: Mapping[str, int]) -> None:
        """Persist the entry / exit totals (one small transaction; the caller rate-limits it)."""
        values = [(f"count_{k}", str(int(counts.get(k, 0)))) for k in self._COUNT_KEYS]

        def tx(conn: sqlite3.Connection) -> None:
            conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", values)

        self._write(tx)

    def vehicles_tail(self, n: int) -> list[dict[str, Any]]:
        """The last ``n`` vehicle records, oldest first."""
        rows = self._query("SELECT record FROM (SELECT id, record FROM vehicles ORDER BY id DESC LIMIT ?) ORDER BY id", (n,))
        return [json.loads(r["record"]) for r in rows]

    def _notify_listeners(self) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for callback in listeners:
            try:
                callback()
            except Exception:  # logged; a listener must not undo a committed write
                log.exception("outbox listener %r failed", callback)

    def record_gate_result(self, result: GateResult) -> None:
        """Log what the gate did for an event (audit trail; durable on return)."""

        def tx(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO gate_actions(event_id, action, executed, reason, t_mono, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (result.event_id, result.action.value, int(result.executed), result.reason, result.t, time.time()),
            )

        self._write(tx)

    def record_remote_gate_action(self, result: GateResult, command: Mapping[str, Any]) -> None:
        """Audit a gate action asked for over MQTT (``cmd/open-gate``), carried out or refused.

        One transaction writes the ``gate_actions`` row and an outbox message on ``events/audit``
        (priority 1: exempt from the outbox bounds, like alarms), so the command centre receives
        the audit record with the same at-least-once guarantee as the screenings.
        """
        topic = self.topic_screening.rsplit("/", 1)[0] + "/audit"
        body = _jsonable(dict(command))

        def tx(conn: sqlite3.Connection) -> None:
            now = time.time()
            conn.execute(
                "INSERT INTO gate_actions(event_id, action, executed, reason, t_mono, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (result.event_id, result.action.value, int(result.executed), result.reason, result.t, now),
            )
            msg_id = self._new_msg_id()
            payload = {
                "schema": PAYLOAD_SCHEMA,
                "msg_id": msg_id,
                "station_id": self.station_id,
                "site": self.site,
                "seq": self._meta_int("seq"),
                "session": self._session,
                "ts": now,
                "clock_synced": None,
                "kind": "remote_gate_action",
                "audit_id": result.event_id,
                "action": result.action.value,
                "executed": bool(result.executed),
                "reason": result.reason,
                "command": body,
            }
            conn.execute(
                "INSERT INTO outbox(msg_id, topic, payload, qos, priority, created_at) VALUES (?, ?, ?, 1, 1, ?)",
                (msg_id, topic, _dumps(payload).encode("utf-8"), int(now * 1000)),
            )

        self._write(tx)
        self._notify_listeners()

    def record_operator_action(
        self, action: str, operator: str, ok: bool, reason: str, *, event_id: str | None = None, detail: Mapping[str, Any] | None = None
    ) -> int:
        """Audit one operator request from the touch screen, carried out or refused (station/web).

        Like :meth:`record_remote_gate_action`: one transaction writes the ``operator_actions`` row
        and its ``events/audit`` outbox message: priority 1 (exempt from the outbox bounds) for an
        action carried out, ordinary priority for a refusal (a guessing script's refusals may be
        dropped by the bounds; station/web/desk.py also rate-limits them). Returns the row id. The
        PIN itself is never passed here.
        """
        priority = 1 if ok else PRIORITY_EVENT
        topic = self.topic_screening.rsplit("/", 1)[0] + "/audit"
        body = _jsonable(dict(detail or {}))

        def tx(conn: sqlite3.Connection) -> int:
            now = time.time()
            cur = conn.execute(
                "INSERT INTO operator_actions(ts, action, operator, event_id, ok, reason, detail) VALUES (?,?,?,?,?,?,?)",
                (now, action, operator, event_id, int(ok), reason, _dumps(body)),
            )
            msg_id = self._new_msg_id()
            payload = {
                "schema": PAYLOAD_SCHEMA,
                "msg_id": msg_id,
                "station_id": self.station_id,
                "site": self.site,
                "seq": self._meta_int("seq"),
                "session": self._session,
                "ts": now,
                "clock_synced": None,
                "kind": "operator_action",
                "action": action,
                "operator": operator,
                "event_id": event_id,
                "ok": bool(ok),
                "reason": reason,
                "detail": body,
            }
            conn.execute(
                "INSERT INTO outbox(msg_id, topic, payload, qos, priority, created_at) VALUES (?, ?, ?, 1, ?, ?)",
                (msg_id, topic, _dumps(payload).encode("utf-8"), priority, int(now * 1000)),
            )
            return int(cur.lastrowid or 0)

        rowid: int = self._write(tx)
        self._notify_listeners()
        return rowid

    COMMAND_AUDIT_KEEP = 10_000
    """Rows kept in ``command_audit``; older ones are deleted as new ones come (a hard bound)."""

    def record_command_audit(
        self,
        command: str,
        request_id: str | None,
        ok: bool,
        reason: str,
        *,
        signer: str | None,
        body: str,
        outbox: bool = True,
        priority: int = 5,
    ) -> int:
        """Audit one remote command (``station.link.commands``): the row, and (``outbox``) its ``events/audit``
        message in the same transaction. The caller caps ``body`` and rate-limits refusals."""
        topic = self.topic_screening.rsplit("/", 1)[0] + "/audit"

        def tx(conn: sqlite3.Connection) -> int:
            now = time.time()
            cur = conn.execute(
                "INSERT INTO command_audit(ts, command, request_id, ok, reason, signer, body) VALUES (?,?,?,?,?,?,?)",
                (now, command, request_id, int(ok), reason, signer, body),
            )
            rowid = int(cur.lastrowid or 0)
            conn.execute("DELETE FROM command_audit WHERE id <= ?", (rowid - self.COMMAND_AUDIT_KEEP,))
            if outbox:
                msg_id = self._new_msg_id()
                payload = {
                    "schema": PAYLOAD_SCHEMA,
                    "msg_id": msg_id,
                    "station_id": self.station_id,
                    "site": self.site,
                    "seq": self._meta_int("seq"),
                    "session": self._session,
                    "ts": now,
                    "clock_synced": None,
                    "kind": "remote_command",
                    "command": command,
                    "id": request_id,
                    "ok": bool(ok),
                    "reason": reason,
                    "signer": signer,
                }
                conn.execute(
                    "INSERT INTO outbox(msg_id, topic, payload, qos, priority, created_at) VALUES (?, ?, ?, 1, ?, ?)",
                    (msg_id, topic, _dumps(payload).encode("utf-8"), priority, int(now * 1000)),
                )
            return rowid

        rowid: int = self._write(tx)
        if outbox:
            self._notify_listeners()
        return rowid

    def command_audit(self, *, limit: int = 100) -> list[dict[str, Any]]:
        """Remote command audit rows, newest first."""
        rows = self._query("SELECT * FROM command_audit ORDER BY id DESC LIMIT ?", (limit,))
        for r in rows:
            r["ok"] = bool(r["ok"])
        return rows

    def operator_actions(self, *, event_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Operator actions, newest first (all, or those about one event)."""
        where, params = ("WHERE event_id = ?", [event_id]) if event_id is not None else ("", [])
        rows = self._query(f"SELECT * FROM operator_actions {where} ORDER BY id DESC LIMIT ?", [*params, limit])
        for r in rows:
            r["ok"] = bool(r["ok"])
            r["detail"] = json.loads(r["detail"])
        return rows

    def alarms(self, limit: int = 20, since_ts: float | None = None) -> list[dict[str, Any]]:
        """Alarm events, newest first, each with its acknowledgement (``ack``: operator and time) if any."""
        rows = self._query(
            "SELECT e.event_id, e.ts, e.decision, e.reason, e.temperature_c, e.code_colour, "
            "a.operator AS ack_operator, a.ts AS ack_ts FROM events e "
            "LEFT JOIN operator_actions a ON a.id = (SELECT min(id) FROM operator_actions "
            "WHERE event_id = e.event_id AND action = 'ack' AND ok = 1) "
            "WHERE e.alarm = 1 AND e.ts >= ? ORDER BY e.id DESC LIMIT ?",
            (since_ts if since_ts is not None else 0.0, limit),
        )
        for r in rows:
            op, at = r.pop("ack_operator"), r.pop("ack_ts")
            r["ack"] = {"operator": op, "ts": at} if op is not None else None
        return rows

    def event(self, event_id: str) -> dict[str, Any] | None:
        """One event by id (see :meth:`_event_dict`), or None."""
        rows = self._query("SELECT id, record, created_at FROM events WHERE event_id = ?", (event_id,))
        return self._event_dict(rows[0]) if rows else None

    # ---------------------------------------------------------------- reads

    def tail(self, n: int) -> list[dict[str, Any]]:
        """The last ``n`` events, oldest first (newest last); see :meth:`_event_dict`."""
        if n < 0:
            raise ValueError("n must be >= 0")
        rows = self._query(
            "SELECT id, record, created_at FROM (SELECT id, record, created_at FROM events ORDER BY id DESC LIMIT ?) ORDER BY id",
            (n,),
        )
        return [self._event_dict(r) for r in rows]

    def events_since(self, rowid: int, limit: int = 1000) -> list[dict[str, Any]]:
        """Events with a row id greater than ``rowid``, in order (at most ``limit``)."""
        rows = self._query(
            "SELECT id, record, created_at FROM events WHERE id > ? ORDER BY id LIMIT ?",
            (rowid, limit),
        )
        return [self._event_dict(r) for r in rows]

    def last_event(self) -> dict[str, Any] | None:
        rows = self.tail(1)
        return rows[0] if rows else None

    def counts(self, since_ts: float | None = None) -> dict[str, int]:
        """Number of events per decision, optionally only those decided at or after ``since_ts``."""
        if since_ts is None:
            rows = self._query("SELECT decision, count(*) AS n FROM events GROUP BY decision")
        else:
            rows = self._query(
                "SELECT decision, count(*) AS n FROM events WHERE ts >= ? GROUP BY decision",
                (since_ts,),
            )
        return {r["decision"]: int(r["n"]) for r in rows}

    def gate_actions(self, event_id: str) -> list[dict[str, Any]]:
        """Gate actions logged for one event, in order."""
        rows = self._query("SELECT * FROM gate_actions WHERE event_id = ? ORDER BY id", (event_id,))
        for r in rows:
            r["executed"] = bool(r["executed"])
        return rows

    # ---------------------------------------------------------------- outbox

    _PENDING = "acked_at IS NULL AND dropped_at IS NULL"

    def outbox_stats(self) -> dict[str, Any]:
        """Depth of the outbox: pending rows, age of the oldest (s), payload bytes, alarms."""
        rows = self._query(
            f"SELECT count(*) AS pending, min(created_at) AS oldest, "
            f"coalesce(sum(length(payload)), 0) AS bytes, "
            f"coalesce(sum(priority <= {PRIORITY_ALARM}), 0) AS alarms "
            f"FROM outbox WHERE {self._PENDING}"
        )
        r = rows[0]
        oldest = r["oldest"]
        # The wall clock may step (no RTC until NTP syncs): never report a negative age.
        age = max(0.0, time.time() - oldest / 1000.0) if oldest is not None else 0.0
        dropped = self._query("SELECT value FROM meta WHERE key = 'outbox_dropped'")
        pending, size = int(r["pending"]), int(r["bytes"])
        return {
            "pending": pending,
            "oldest_age_s": age,
            "bytes": size,
            "alarms_pending": int(r["alarms"]),
            "dropped": int(dropped[0]["value"]) if dropped else 0,
            "bounds_alarm": self._bounds_alarm(pending, size, age),
        }

    def _bounds_alarm(self, pending: int, size: int, age: float) -> str | None:
        b = self.outbox_bounds
        if b is None:
            return None
        near = [
            name
            for name, value, limit in (("rows", pending, b.max_rows), ("bytes", size, b.max_bytes), ("age", age, b.max_age_s))
            if value >= b.NEAR * limit
        ]
        return f"outbox near or over its limit: {', '.join(near)}" if near else None

    def outbox_enforce_bounds(self, now: float | None = None) -> int:
        """Drop the oldest ordinary rows beyond :attr:`outbox_bounds`; returns how many.

        In the same transaction the drop is counted (``meta.outbox_dropped``, shown by
        :meth:`outbox_stats`) and announced by an alarm-priority message on ``events/alarm``
        (``"kind": "outbox_overflow"``), so the command centre learns of the gap. Alarm rows are
        never dropped, even when they alone exceed a bound.
        """
        b = self.outbox_bounds
        if b is None:
            return 0
        now = time.time() if now is None else now
        ordinary = f"{self._PENDING} AND priority > 1"

        def tx(conn: sqlite3.Connection) -> tuple[int, list[str]]:
            before = conn.total_changes
            reasons = []
            cutoff_ms = int((now - b.max_age_s) * 1000)
            conn.execute(f"DELETE FROM outbox WHERE {ordinary} AND created_at < ?", (cutoff_ms,))
            if conn.total_changes > before:
                reasons.append("age")
            n, size = conn.execute(f"SELECT count(*), coalesce(sum(length(payload)), 0) FROM outbox WHERE {self._PENDING}").fetchone()
            if n > b.max_rows:
                mark = conn.total_changes
                conn.execute(
                    f"DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE {ordinary} ORDER BY id LIMIT ?)", (n - b.max_rows,)
                )
                if conn.total_changes > mark:
                    reasons.append("rows")
                size = conn.execute(f"SELECT coalesce(sum(length(payload)), 0) FROM outbox WHERE {self._PENDING}").fetchone()[0]
            if size > b.max_bytes:
                cut = conn.execute(
                    f"SELECT id FROM (SELECT id, sum(length(payload)) OVER (ORDER BY id) AS cum FROM outbox "
                    f"WHERE {ordinary}) WHERE cum >= ? ORDER BY id LIMIT 1",
                    (size - b.max_bytes,),
                ).fetchone()
                if cut is not None:
                    conn.execute(f"DELETE FROM outbox WHERE {ordinary} AND id <= ?", (cut[0],))
                    reasons.append("bytes")
            dropped = conn.total_changes - before
            if dropped:
                conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('outbox_dropped', '0')")
                conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + ? WHERE key = 'outbox_dropped'", (dropped,))
                total = int(conn.execute("SELECT value FROM meta WHERE key = 'outbox_dropped'").fetchone()[0])
                msg_id = self._new_msg_id()
                payload = {
                    "schema": PAYLOAD_SCHEMA,
                    "msg_id": msg_id,
                    "station_id": self.station_id,
                    "site": self.site,
                    "seq": self._meta_int("seq"),
                    "session": self._session,
                    "ts": now,
                    "clock_synced": None,
                    "kind": "outbox_overflow",
                    "dropped": dropped,
                    "dropped_total": total,
                    "reasons": reasons,
                    "bounds": {"max_rows": b.max_rows, "max_bytes": b.max_bytes, "max_age_s": b.max_age_s},
                }
                conn.execute(
                    "INSERT INTO outbox(msg_id, topic, payload, qos, priority, created_at) VALUES (?, ?, ?, 1, ?, ?)",
                    (msg_id, self.topic_alarm, _dumps(payload).encode("utf-8"), PRIORITY_ALARM, int(now * 1000)),
                )
            return dropped, reasons

        dropped, reasons = self._write(tx)
        if dropped:
            log.error("outbox over its bounds: dropped oldest ordinary rows dropped=%d reasons=%s", dropped, ",".join(reasons))
            self._notify_listeners()
        return dropped

    def outbox_pending(self, limit: int, exclude_ids: AbstractSet[int] = frozenset()) -> list[OutboxRow]:
        """Up to ``limit`` undelivered rows, highest priority first, then oldest first.

        ``exclude_ids`` are rows already in flight (published, PUBACK not yet seen).
        """
        if limit <= 0:
            return []
        rows = self._query(
            f"SELECT id, msg_id, topic, payload, qos, priority, created_at, attempts FROM outbox "
            f"WHERE {self._PENDING} AND id NOT IN (SELECT value FROM json_each(?)) "
            f"ORDER BY priority, id LIMIT ?",
            (json.dumps(sorted(exclude_ids)), limit),
        )
        return [
            OutboxRow(
                id=r["id"],
                msg_id=r["msg_id"],
                topic=r["topic"],
                payload=bytes(r["payload"]),
                qos=r["qos"],
                priority=r["priority"],
                created_at=r["created_at"],
                attempts=r["attempts"],
            )
            for r in rows
        ]

    def outbox_rows_after(self, after_id: int, limit: int = 1000) -> list[OutboxRow]:
        """Undelivered rows with ``id > after_id`` in local order (for export; pages by id)."""
        rows = self._query(
            f"SELECT id, msg_id, topic, payload, qos, priority, created_at, attempts FROM outbox "
            f"WHERE {self._PENDING} AND id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        )
        return [
            OutboxRow(
                id=r["id"],
                msg_id=r["msg_id"],
                topic=r["topic"],
                payload=bytes(r["payload"]),
                qos=r["qos"],
                priority=r["priority"],
                created_at=r["created_at"],
                attempts=r["attempts"],
            )
            for r in rows
        ]

    def outbox_mark_sent(self, row_id: int) -> None:
        """Count a publish attempt of one row."""
        self.outbox_mark_sent_many((row_id,))

    def outbox_mark_sent_many(self, row_ids: Iterable[int]) -> None:
        """Count a publish attempt for several rows in one transaction (one fsync, not N)."""
        ids = [(int(i),) for i in row_ids]
        if not ids:
            return
        now_ms = int(time.time() * 1000)

        def tx(conn: sqlite3.Connection) -> None:
            conn.executemany(f"UPDATE outbox SET attempts = attempts + 1, sent_at = {now_ms} WHERE id = ?", ids)

        self._write(tx)

    def outbox_ack(self, row_id: int) -> None:
        """The broker acknowledged the row: delete it."""
        self.outbox_ack_many((row_id,))

    def outbox_ack_many(self, row_ids: Iterable[int]) -> int:
        """Delete several acknowledged rows in one transaction; returns how many existed."""
        ids = [(int(i),) for i in row_ids]
        if not ids:
            return 0

        def tx(conn: sqlite3.Connection) -> int:
            before = conn.total_changes
            conn.executemany("DELETE FROM outbox WHERE id = ?", ids)
            return conn.total_changes - before

        deleted: int = self._write(tx)
        return deleted

    def outbox_settle(self, acked_ids: Iterable[int], sent_ids: Iterable[int]) -> int:
        """Delete acknowledged rows and count publish attempts, in one transaction (one fsync).

        The attempt counts are bookkeeping (a crash before this commit only under-counts them);
        folding them into the ack transaction halves the pump's fsyncs during a catch-up.
        Returns how many acknowledged rows existed.
        """
        acked = [(int(i),) for i in acked_ids]
        sent = [(int(i),) for i in sent_ids]
        if not acked and not sent:
            return 0
        now_ms = int(time.time() * 1000)

        def tx(conn: sqlite3.Connection) -> int:
            if sent:
                conn.executemany(f"UPDATE outbox SET attempts = attempts + 1, sent_at = {now_ms} WHERE id = ?", sent)
            before = conn.total_changes
            conn.executemany("DELETE FROM outbox WHERE id = ?", acked)
            return conn.total_changes - before

        deleted: int = self._write(tx)
        return deleted

    # ---------------------------------------------------------------- health

    def integrity_check(self) -> str:
        """``PRAGMA quick_check``: ``"ok"`` or the problems found, one per line."""
        with self._lock:
            self._check_open()
            rows = self._conn.execute("PRAGMA quick_check").fetchall()
        return "\n".join(str(r[0]) for r in rows)
