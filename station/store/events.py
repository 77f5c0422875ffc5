"""The station's durable local log: screenings, vehicles, gate and operator actions, command audit.

One SQLite file (:data:`DB_NAME` in the data directory) holds everything, so a screening and the
messages that announce it are written in **one transaction** (:mod:`station.store.outbox`). The
schema and its upgrades are in :mod:`station.store.migrations`.

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
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any, TypeVar

from station.domain.model import GateResult, ScreeningEvent
from station.ops.clock import StorePosition
from station.store import clock_corrections, migrations, outbox
from station.store.errors import SchemaTooNewError, StoreError
from station.store.health import StorageHealth, is_storage_error
from station.store.meta import bump_meta, meta_int
from station.store.migrations import MIGRATIONS, SCHEMA_VERSION
from station.store.outbox import (
    PAYLOAD_SCHEMA,
    PRIORITY_ALARM,
    PRIORITY_AUDIT,
    PRIORITY_EVENT,
    OutboxBounds,
    OutboxRow,
    Sender,
    compact_json,
    jsonable,
    new_msg_id,
)
from station.store.recovery import Recovery, check_and_recover

# Other modules import these from here (the store's public face); they live in the modules above.
__all__ = [
    "BUSY_TIMEOUT_MS",
    "DB_NAME",
    "MIGRATIONS",
    "PAYLOAD_SCHEMA",
    "PRIORITY_ALARM",
    "PRIORITY_AUDIT",
    "PRIORITY_EVENT",
    "SCHEMA_VERSION",
    "OutboxBounds",
    "OutboxRow",
    "SchemaTooNewError",
    "SqliteEventStore",
    "StoreError",
    "new_msg_id",
]

log = logging.getLogger("station.store.events")

DB_NAME = "events.sqlite3"
"""File name of the event database in the station's data directory."""

BUSY_TIMEOUT_MS = 5000
"""How long a statement waits for another process's lock before failing."""

_T = TypeVar("_T")


def _check_topic_level(name: str, value: str) -> None:
    """Refuse a value that cannot be one level of an MQTT topic."""
    if not value or any(c in value for c in "/+#\0"):
        raise ValueError(f"{name} {value!r} cannot be used as an MQTT topic level")


def _configure(conn: sqlite3.Connection) -> None:
    """Set the writer's pragmas: WAL journal, full sync, busy timeout, foreign keys."""
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


class SqliteEventStore:
    """Durable screening log with a transactional outbox, in one SQLite file.

    Thread-safe: every public method may be called from any thread. Writes are serialised by one
    lock over one connection (the single writer); each returns only after its transaction is
    durable.
    """

    COMMAND_AUDIT_KEEP = 10_000
    """Rows kept in ``command_audit``; older ones are deleted as new ones come (a hard bound)."""

    _COUNT_KEYS = ("entry", "exit")

    def __init__(
        self,
        path: Path,
        station_id: str,
        site: str,
        topic_prefix: str = "checkpoint/v1",
        read_only: bool = False,
        recover: bool = False,
    ) -> None:
        """Open (and, unless ``read_only``, create or migrate) the database at ``path``.

        ``read_only`` is for readers beside the running daemon (stationctl): they never migrate,
        back up or write, and refuse a file that is missing or not at the current schema.
        ``recover`` is for the daemon's start, when nobody else writes the file: a damaged WAL or
        main file is kept aside and the store starts from what was readable (:attr:`recovery`).
        """
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
        self.topic_visit = f"{base}/events/visit"
        self.topic_registration = f"{base}/events/registration"
        self.topic_audit = f"{base}/events/audit"
        self.topic_clock = f"{base}/events/clock"  # clock corrections (station/store/clock_corrections.py)
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []
        self._closed = False
        # Whether the medium takes writes (station.store.health); a read-only or failing one is reopened
        # before the next write, so a card remounted (or replaced) by hand is used without a restart.
        self.storage = StorageHealth(self.path.parent)
        self._reopen_due = False
        # Acknowledged rows (and publish attempts) whose DELETE / UPDATE waits for the next write that
        # touches the outbox anyway (:meth:`outbox_settle` with ``defer``): the same pages, one commit
        # instead of two (bench/card_wear.py). Excluded from every outbox read meanwhile.
        self._deferred_acked: set[int] = set()
        self._deferred_since: float | None = None  # monotonic time of the oldest deferred acknowledgement
        self.outbox_bounds: OutboxBounds | None = None
        """Set by the composition root from ``mqtt.outbox_max_*``; enforced by :meth:`outbox_enforce_bounds`."""

        self.read_only = read_only
        self.recovery: Recovery | None = None
        """What was found damaged when the file was opened with ``recover`` (station.store.recovery), else None."""
        if recover and not read_only:
            self.recovery = check_and_recover(self.path)
        if read_only:
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
                migrations.require_current(conn, self.path)
            else:
                _configure(conn)
            if not read_only:
                migrations.migrate(conn, self.path)
            self._session = meta_int(conn, "session")
        except BaseException:
            conn.close()
            raise
        log.info("event store open: %s (schema v%d, session %d)", self.path, SCHEMA_VERSION, self._session)

    # ---------------------------------------------------------------- helpers

    def _check_open(self) -> None:
        """Refuse any use after :meth:`close`."""
        if self._closed:
            raise StoreError(f"event store {self.path} is closed")

    def _write(self, fn: Callable[[sqlite3.Connection], _T], *, carry: bool = False) -> _T:
        """Run ``fn`` in one ``BEGIN IMMEDIATE`` transaction; roll back on any error.

        With ``carry`` the deferred outbox bookkeeping (:meth:`outbox_settle`) is written in the same
        transaction, before ``fn``; it is forgotten only once that transaction committed.
        """
        with self._lock:
            self._check_open()
            if self.read_only:
                raise StoreError(f"event store {self.path} is open read-only")
            try:
                if self._reopen_due:
                    self._reopen()
                conn = self._conn
                conn.execute("BEGIN IMMEDIATE")
                try:
                    carried = self._settle_deferred(conn) if carry else False
                    result = fn(conn)
                    conn.execute("COMMIT")
                    if carried:
                        self._deferred_acked.clear()
                        self._deferred_since = None
                except BaseException:
                    if conn.in_transaction:
                        try:
                            conn.execute("ROLLBACK")
                        except sqlite3.Error as rollback_exc:  # the medium is gone: SQLite rolls back at the next open
                            log.warning("rollback after a failed write failed: %s", rollback_exc)
                    raise
            except Exception as exc:
                if is_storage_error(exc) and self.storage.failed(exc) in ("read_only", "io_error"):
                    self._reopen_due = True
                raise
        self.storage.succeeded()
        return result

    def _settle_deferred(self, conn: sqlite3.Connection) -> bool:
        """Inside the caller's write transaction: delete the deferred acknowledged rows."""
        if not self._deferred_acked:
            return False
        outbox.settle(conn, sorted(self._deferred_acked), (), int(time.time() * 1000))
        return True

    def _reopen(self) -> None:
        """Replace the connection with a new one on the same path (after a read-only or failing medium).

        The old handles may belong to a file system the kernel gave up on (ext4 ``errors=remount-ro``
        stays read-only until it is unmounted); a new open reaches whatever is mounted there now.
        The old connection is closed first: POSIX locks belong to the process, so SQLite defers
        closing a file's descriptor while another connection of the process has the file open, and
        closing it after the new open left one descriptor behind for good (the long soak's FD step).
        If the new open fails, a plain connection is kept for reads and the reopen is tried again.
        """
        try:
            self._conn.close()
        except sqlite3.Error as exc:
            log.warning("closing the old connection failed: %s", exc)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            _configure(conn)
            migrations.require_current(conn, self.path)
        except BaseException:
            self._conn = conn  # reads may still work; writes reopen again
            raise
        self._conn = conn
        self._reopen_due = False
        log.info("event store reopened after a storage fault: %s", self.path)  # once a second while it lasts

    def _read(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``fn`` on the connection under the lock, outside any transaction."""
        with self._lock:
            self._check_open()
            return fn(self._conn)

    def write_transaction(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``fn(conn)`` in one durable write transaction (maintenance: retention, data erase)."""
        return self._write(fn)

    def _new_msg_id(self) -> str:
        """Return the idempotency key of one outbox message (overridable to inject faults in tests)."""
        return new_msg_id()

    def _sender(self) -> Sender:
        """Return the envelope fields of this store's messages in the current session."""
        return Sender(self.station_id, self.site, self._session, self._new_msg_id)

    def _query(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[dict[str, Any]]:
        """Return the rows of one read query as dicts."""
        with self._lock:
            self._check_open()
            cur = self._conn.execute(sql, params)
            names = [c[0] for c in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur]

    @staticmethod
    def _event_dict(row: dict[str, Any]) -> dict[str, Any]:
        """Return an event as read back: the stored ``as_record()`` dict plus ``_``-prefixed row metadata.

        Keys starting with ``_`` are local bookkeeping (``_rowid`` for ``events_since``,
        ``_created_at``); everything else is exactly what was published.
        """
        event: dict[str, Any] = json.loads(row["record"])
        event["_rowid"] = row["id"]
        event["_created_at"] = row["created_at"]
        return event

    def _notify_listeners(self) -> None:
        """Tell the outbox listeners that rows were committed."""
        with self._lock:
            listeners = list(self._listeners)
        for callback in listeners:
            try:
                callback()
            except Exception:  # logged; a listener must not undo a committed write
                log.exception("outbox listener %r failed", callback)

    # ---------------------------------------------------------------- lifecycle

    def begin_session(self) -> int:
        """Start a new session (one per daemon start) and return its number.

        The session number goes into every payload so the back end can tell a restart (where
        in-flight messages may be re-sent) from a gap.
        """
        self._session = self._write(lambda conn: bump_meta(conn, "session"))
        log.info("store session %d begins", self._session)
        return self._session

    @property
    def session(self) -> int:
        """The current session number (see :meth:`begin_session`)."""
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
                if self._deferred_acked:  # delivered rows leave with the store
                    self._conn.execute("BEGIN IMMEDIATE")
                    self._settle_deferred(self._conn)
                    self._conn.execute("COMMIT")
            except sqlite3.Error as exc:  # they are sent again at the next start: duplicates, never a loss
                log.warning("deferred outbox deletes not written at close: %s", exc)
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                # The data is safe in the WAL; the next open replays it.
                log.warning("WAL checkpoint on close failed: %s", exc)
            finally:
                self._conn.close()
        log.info("event store closed: %s", self.path)

    def __enter__(self) -> SqliteEventStore:
        """Return the store itself; it is closed when the block ends."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the store."""
        self.close()

    # ---------------------------------------------------------------- writes

    def record(self, event: ScreeningEvent) -> int:
        """Write ``event`` and its outbox message(s) in one durable transaction.

        Returns the event's row id. When this returns the rows are on the medium (WAL, FULL sync);
        if it raises, nothing was written and ``seq`` was not consumed.
        """
        record = jsonable(event.as_record())
        record_json = compact_json(record)
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
            seq = bump_meta(conn, "seq")
            sender = self._sender()
            for topic, priority in topics:
                outbox.enqueue(
                    conn,
                    sender,
                    topic=topic,
                    priority=priority,
                    seq=seq,
                    ts=record["ts"],
                    clock_synced=bool(event.clock_synced),
                    body={"event": record},
                    now=now,
                    keep=("events", rowid),
                )
            return rowid

        rowid = self._write(tx, carry=True)
        self._notify_listeners()
        return rowid

    def record_vehicle(self, record: Mapping[str, Any]) -> int:
        """Write a vehicle event and its outbox message on ``events/vehicle`` in one durable transaction.

        ``record`` (``resident_vehicle`` / ``outsider_vehicle``) needs ``vehicle_id``, ``ts`` (unix
        time), ``type`` and ``plate``. A vehicle event consumes a ``seq`` like a screening (the centre
        detects gaps across both). It is never an alarm: ordinary priority, and nothing goes to
        ``events/alarm``. Returns the row id.
        """
        rec = jsonable(dict(record))
        for key in ("vehicle_id", "ts", "type", "plate"):
            if rec.get(key) in (None, ""):
                raise ValueError(f"vehicle record needs {key!r}")
        rec["alarm"] = False  # by definition: resident / outsider plates are information only

        def tx(conn: sqlite3.Connection) -> int:
            now = time.time()
            cur = conn.execute(
                "INSERT INTO vehicles(vehicle_id, ts, kind, plate, confidence, record, created_at) VALUES (?,?,?,?,?,?,?)",
                (rec["vehicle_id"], float(rec["ts"]), rec["type"], rec["plate"], rec.get("confidence"), compact_json(rec), now),
            )
            rowid = int(cur.lastrowid or 0)
            outbox.enqueue(
                conn,
                self._sender(),
                topic=self.topic_vehicle,
                priority=PRIORITY_EVENT,
                seq=bump_meta(conn, "seq"),
                ts=rec["ts"],
                clock_synced=rec.get("clock_synced"),
                body={"vehicle": rec},
                now=now,
                keep=("vehicles", rowid),
            )
            return rowid

        rowid = self._write(tx, carry=True)
        self._notify_listeners()
        return rowid

    def save_direction_counts(self, counts: Mapping[str, int]) -> None:
        """Persist the entry / exit totals (one small transaction; the caller rate-limits it)."""
        values = [(f"count_{k}", str(int(counts.get(k, 0)))) for k in self._COUNT_KEYS]

        def tx(conn: sqlite3.Connection) -> None:
            conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", values)

        self._write(tx)

    def record_gate_result(self, result: GateResult) -> None:
        """Log what the gate did for an event (audit trail; durable on return)."""

        def tx(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO gate_actions(event_id, action, executed, reason, t_mono, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (result.event_id, result.action.value, int(result.executed), result.reason, result.t, time.time()),
            )

        self._write(tx)

    def _enqueue_audit(self, conn: sqlite3.Connection, priority: int, body: Mapping[str, Any], now: float) -> None:
        """Queue one ``events/audit`` message; audit records carry the current ``seq`` without consuming one."""
        outbox.enqueue(
            conn,
            self._sender(),
            topic=self.topic_audit,
            priority=priority,
            seq=meta_int(conn, "seq"),
            ts=now,
            clock_synced=None,
            body=body,
            now=now,
        )

    def record_remote_gate_action(self, result: GateResult, command: Mapping[str, Any]) -> None:
        """Audit a gate action asked for over MQTT (``cmd/open-gate``), carried out or refused.

        One transaction writes the ``gate_actions`` row and an outbox message on ``events/audit``
        (priority 1: exempt from the outbox bounds, like alarms), so the command centre receives
        the audit record with the same at-least-once guarantee as the screenings.
        """
        body = jsonable(dict(command))

        def tx(conn: sqlite3.Connection) -> None:
            now = time.time()
            conn.execute(
                "INSERT INTO gate_actions(event_id, action, executed, reason, t_mono, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (result.event_id, result.action.value, int(result.executed), result.reason, result.t, now),
            )
            self._enqueue_audit(
                conn,
                PRIORITY_AUDIT,
                {
                    "kind": "remote_gate_action",
                    "audit_id": result.event_id,
                    "action": result.action.value,
                    "executed": bool(result.executed),
                    "reason": result.reason,
                    "command": body,
                },
                now,
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
        priority = PRIORITY_AUDIT if ok else PRIORITY_EVENT
        body = jsonable(dict(detail or {}))

        def tx(conn: sqlite3.Connection) -> int:
            now = time.time()
            cur = conn.execute(
                "INSERT INTO operator_actions(ts, action, operator, event_id, ok, reason, detail) VALUES (?,?,?,?,?,?,?)",
                (now, action, operator, event_id, int(ok), reason, compact_json(body)),
            )
            self._enqueue_audit(
                conn,
                priority,
                {
                    "kind": "operator_action",
                    "action": action,
                    "operator": operator,
                    "event_id": event_id,
                    "ok": bool(ok),
                    "reason": reason,
                    "detail": body,
                },
                now,
            )
            return int(cur.lastrowid or 0)

        rowid = self._write(tx)
        self._notify_listeners()
        return rowid

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
        priority: int = PRIORITY_EVENT,
    ) -> int:
        """Audit one remote command (``station.link.commands``) and return the row id.

        With ``outbox``, its ``events/audit`` message goes in the same transaction. The caller caps
        ``body`` and rate-limits refusals.
        """

        def tx(conn: sqlite3.Connection) -> int:
            now = time.time()
            cur = conn.execute(
                "INSERT INTO command_audit(ts, command, request_id, ok, reason, signer, body) VALUES (?,?,?,?,?,?,?)",
                (now, command, request_id, int(ok), reason, signer, body),
            )
            rowid = int(cur.lastrowid or 0)
            conn.execute("DELETE FROM command_audit WHERE id <= ?", (rowid - self.COMMAND_AUDIT_KEEP,))
            if outbox:
                self._enqueue_audit(
                    conn,
                    priority,
                    {"kind": "remote_command", "command": command, "id": request_id, "ok": bool(ok), "reason": reason, "signer": signer},
                    now,
                )
            return rowid

        rowid = self._write(tx)
        if outbox:
            self._notify_listeners()
        return rowid

    # ---------------------------------------------------------------- reads

    def command_audit(self, *, limit: int = 100) -> list[dict[str, Any]]:
        """Return remote command audit rows, newest first."""
        rows = self._query("SELECT * FROM command_audit ORDER BY id DESC LIMIT ?", (limit,))
        for r in rows:
            r["ok"] = bool(r["ok"])
        return rows

    def operator_actions(self, *, event_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Return operator actions, newest first (all, or those about one event)."""
        where, params = ("WHERE event_id = ?", [event_id]) if event_id is not None else ("", [])
        rows = self._query(f"SELECT * FROM operator_actions {where} ORDER BY id DESC LIMIT ?", [*params, limit])
        for r in rows:
            r["ok"] = bool(r["ok"])
            r["detail"] = json.loads(r["detail"])
        return rows

    def alarms(self, limit: int = 20, since_ts: float | None = None) -> list[dict[str, Any]]:
        """Return alarm events, newest first, each with its acknowledgement (``ack``: operator and time) if any."""
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
        """Return one event by id (see :meth:`_event_dict`), or None."""
        rows = self._query("SELECT id, record, created_at FROM events WHERE event_id = ?", (event_id,))
        return self._event_dict(rows[0]) if rows else None

    def tail(self, n: int) -> list[dict[str, Any]]:
        """Return the last ``n`` events, oldest first (newest last); see :meth:`_event_dict`."""
        if n < 0:
            raise ValueError("n must be >= 0")
        rows = self._query(
            "SELECT id, record, created_at FROM (SELECT id, record, created_at FROM events ORDER BY id DESC LIMIT ?) ORDER BY id",
            (n,),
        )
        return [self._event_dict(r) for r in rows]

    def events_since(self, rowid: int, limit: int = 1000) -> list[dict[str, Any]]:
        """Return events with a row id greater than ``rowid``, in order (at most ``limit``)."""
        rows = self._query(
            "SELECT id, record, created_at FROM events WHERE id > ? ORDER BY id LIMIT ?",
            (rowid, limit),
        )
        return [self._event_dict(r) for r in rows]

    def last_event(self) -> dict[str, Any] | None:
        """Return the newest event, or None when there is none."""
        rows = self.tail(1)
        return rows[0] if rows else None

    def counts(self, since_ts: float | None = None) -> dict[str, int]:
        """Return the number of events per decision, optionally only those decided at or after ``since_ts``."""
        if since_ts is None:
            rows = self._query("SELECT decision, count(*) AS n FROM events GROUP BY decision")
        else:
            rows = self._query(
                "SELECT decision, count(*) AS n FROM events WHERE ts >= ? GROUP BY decision",
                (since_ts,),
            )
        return {r["decision"]: int(r["n"]) for r in rows}

    def gate_actions(self, event_id: str) -> list[dict[str, Any]]:
        """Return the gate actions logged for one event, in order."""
        rows = self._query("SELECT * FROM gate_actions WHERE event_id = ? ORDER BY id", (event_id,))
        for r in rows:
            r["executed"] = bool(r["executed"])
        return rows

    def direction_counts(self) -> dict[str, int]:
        """Return the entry / exit totals as last saved (``meta.count_entry`` / ``count_exit``; 0 when never saved)."""
        rows = self._query("SELECT key, value FROM meta WHERE key IN ('count_entry', 'count_exit')")
        saved = {r["key"].removeprefix("count_"): int(r["value"]) for r in rows}
        return {k: saved.get(k, 0) for k in self._COUNT_KEYS}

    def record_crops(self, event_id: str, files: Mapping[str, tuple[str, int]]) -> None:
        """Link kept crop files (kind → (file name under ``<data_dir>/crops``, bytes)) to ``event_id``."""
        now = time.time()

        def tx(conn: sqlite3.Connection) -> None:
            for kind, (name, nbytes) in files.items():
                conn.execute(
                    "INSERT OR REPLACE INTO event_crops(event_id, kind, file, bytes, created_at) VALUES (?, ?, ?, ?, ?)",
                    (event_id, kind, name, nbytes, now),
                )

        self._write(tx)

    def crops(self, event_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        """Return the crop files kept for each of ``event_ids`` that has any: event id → kind → file name."""
        out: dict[str, dict[str, str]] = {}
        ids = list(event_ids)
        for i in range(0, len(ids), 500):  # SQLite's bound-parameter limit
            chunk = ids[i : i + 500]
            rows = self._query(f"SELECT event_id, kind, file FROM event_crops WHERE event_id IN ({','.join('?' * len(chunk))})", chunk)
            for r in rows:
                out.setdefault(r["event_id"], {})[r["kind"]] = r["file"]
        return out

    def vehicles_tail(self, n: int) -> list[dict[str, Any]]:
        """Return the last ``n`` vehicle records, oldest first."""
        rows = self._query("SELECT record FROM (SELECT id, record FROM vehicles ORDER BY id DESC LIMIT ?) ORDER BY id", (n,))
        return [json.loads(r["record"]) for r in rows]

    # ---------------------------------------------------------------- clock corrections (station.ops.clock.ClockWatch)

    def clock_position(self) -> StorePosition:
        """Return the newest event and vehicle rowids and the last ``seq`` (where a clock segment begins)."""
        return self._read(clock_corrections.position)

    def unsynced_records(self, after: StorePosition, upto: StorePosition | None) -> dict[str, list[tuple[str, float]]]:
        """Return (id, ts) of the events and vehicles in (after, upto] stamped with ``clock_synced`` false."""
        return self._read(lambda conn: clock_corrections.unsynced_ids(conn, after, upto))

    def record_clock_correction(self, correction: Mapping[str, Any]) -> int:
        """Write a clock correction and its ``events/clock`` message in one durable transaction; return the row id."""
        rowid = self._write(lambda conn: clock_corrections.record(conn, self._sender(), self.topic_clock, correction, time.time()))
        self._notify_listeners()
        return rowid

    def clock_state(self) -> str | None:
        """Return the clock watch's saved unsynced stretches (JSON), or None."""
        return self._read(clock_corrections.load_state)

    def save_clock_state(self, text: str | None) -> None:
        """Save (None: forget) the clock watch's unsynced stretches in one small transaction."""
        self._write(lambda conn: clock_corrections.save_state(conn, text))

    def clock_corrections(self, limit: int = 100) -> list[dict[str, Any]]:
        """Return the clock corrections written, newest first, as published."""
        return self._read(lambda conn: clock_corrections.corrections(conn, limit))

    # ---------------------------------------------------------------- outbox (see station.store.outbox)

    def outbox_stats(self) -> dict[str, Any]:
        """Return the depth of the outbox: pending rows, age of the oldest (s), payload bytes, alarms, drops."""
        bounds = self.outbox_bounds
        return self._read(lambda conn: outbox.stats(conn, bounds, self._deferred_acked))

    def outbox_enforce_bounds(self, now: float | None = None) -> int:
        """Drop the oldest ordinary rows beyond :attr:`outbox_bounds`; return how many.

        In the same transaction the drop is counted (``meta.outbox_dropped``, shown by
        :meth:`outbox_stats`) and announced by an alarm-priority message on ``events/alarm``
        (``"kind": "outbox_overflow"``), so the command centre learns of the gap. Alarm rows are
        never dropped, even when they alone exceed a bound.
        """
        bounds = self.outbox_bounds
        if bounds is None:
            return 0
        at = time.time() if now is None else now
        depth = self.outbox_stats()
        age = depth["oldest_age_s"] + (at - time.time()) if depth["pending"] else 0.0  # as of ``at``
        if depth["pending"] <= bounds.max_rows and depth["bytes"] <= bounds.max_bytes and age <= bounds.max_age_s:
            return 0  # within every bound: no write transaction (it ran every 10 s)
        dropped, reasons = self._write(lambda conn: outbox.enforce_bounds(conn, bounds, self._sender(), self.topic_alarm, at), carry=True)
        if dropped:
            log.error("outbox over its bounds: dropped oldest ordinary rows dropped=%d reasons=%s", dropped, ",".join(reasons))
            self._notify_listeners()
        return dropped

    def outbox_pending(self, limit: int, exclude_ids: AbstractSet[int] = frozenset()) -> list[OutboxRow]:
        """Return up to ``limit`` undelivered rows, highest priority first, then oldest first.

        ``exclude_ids`` are rows already in flight (published, PUBACK not yet seen).
        """
        return self._read(lambda conn: outbox.pending(conn, limit, set(exclude_ids) | self._deferred_acked))

    def outbox_rows_after(self, after_id: int, limit: int = 1000) -> list[OutboxRow]:
        """Return undelivered rows with ``id > after_id`` in local order (for export; pages by id)."""
        return self._read(lambda conn: [r for r in outbox.rows_after(conn, after_id, limit) if r.id not in self._deferred_acked])

    def outbox_mark_sent(self, row_id: int) -> None:
        """Count a publish attempt of one row."""
        self.outbox_mark_sent_many((row_id,))

    def outbox_mark_sent_many(self, row_ids: Iterable[int]) -> None:
        """Count a publish attempt for several rows in one transaction (one fsync, not N)."""
        self.outbox_settle((), row_ids)

    def outbox_ack(self, row_id: int) -> None:
        """Delete one row the broker acknowledged."""
        self.outbox_ack_many((row_id,))

    def outbox_ack_many(self, row_ids: Iterable[int]) -> int:
        """Delete several acknowledged rows in one transaction; return how many existed."""
        return self.outbox_settle(row_ids, ())

    DEFER_SETTLE_MAX = 256
    """Deferred acknowledged rows and attempts beyond which :meth:`outbox_settle` writes them at once."""

    def outbox_settle(self, acked_ids: Iterable[int], sent_ids: Iterable[int], *, defer: bool = False) -> int:
        """Delete acknowledged rows and count publish attempts, in one transaction (one fsync).

        The attempt counts are bookkeeping (a crash before this commit only under-counts them);
        folding them into the ack transaction halves the pump's fsyncs during a catch-up.
        Returns how many acknowledged rows existed.

        With ``defer`` (the outbox pump), when every row sent is also acknowledged (the usual case:
        its attempt count would be updated just before its DELETE), nothing is written now: the rows
        are left out of every outbox read and deleted by the next screening's or vehicle's write,
        which touches the same outbox pages anyway, or at close, or once :data:`DEFER_SETTLE_MAX`
        wait. A crash before that sends them again (a duplicate, which consumers drop by ``msg_id``;
        never a loss). Returns how many acknowledged rows were handed over.
        """
        acked = [int(i) for i in acked_ids]
        sent = [int(i) for i in sent_ids]
        if not acked and not sent:
            return 0  # no transaction, no fsync
        if defer:
            with self._lock:
                self._check_open()
                known = self._deferred_acked.union(acked)
                deferrable = all(i in known for i in sent)  # a row still in flight keeps its attempt count now
                if deferrable:
                    self._deferred_acked = known
                    if self._deferred_since is None:
                        self._deferred_since = time.monotonic()
            if deferrable:
                if len(known) >= self.DEFER_SETTLE_MAX:
                    self._write(lambda conn: None, carry=True)
                return len(acked)
        now_ms = int(time.time() * 1000)
        return self._write(lambda conn: outbox.settle(conn, acked, sent, now_ms), carry=True)

    def outbox_flush_deferred(self, older_than_s: float = 0.0) -> bool:
        """Write the deferred deletes now if the oldest waited ``older_than_s`` (0: whatever their age); return whether it wrote.

        The pump calls it every step with :data:`station.link.sync.DEFER_SETTLE_S`, so on a quiet
        lane delivered rows leave the file within that time, and with 0 once it drained.
        """
        with self._lock:
            since = self._deferred_since
        if since is None or (older_than_s > 0 and time.monotonic() - since < older_than_s):
            return False
        self._write(lambda conn: None, carry=True)
        return True

    # ---------------------------------------------------------------- health

    def integrity_check(self) -> str:
        """Return the result of ``PRAGMA quick_check``: ``"ok"`` or the problems found, one per line."""
        rows = self._read(lambda conn: conn.execute("PRAGMA quick_check").fetchall())
        return "\n".join(str(r[0]) for r in rows)
