"""The centre's writer: take deliveries, parse them, commit them to PostgreSQL in batches, then acknowledge them.

One thread owns the database connection. It takes up to ``batch_size`` deliveries, or what arrived
within ``batch_window_s`` of the first, parses each (``station.centre.parse``: a hostile message is
counted by reason and dropped, never raised), places each row in its day partition (creating
partitions ahead as needed, within the kept window), commits the batch in one transaction and only
then acknowledges its messages to the broker. A dropped message is acknowledged too: a message that
can never be stored must not come back for ever.

Failures: a lost database connection or a deadlock is retried with back-off, the batch kept and
nothing acknowledged meanwhile (the broker's Receive Maximum stops the flow). A row the database
refuses (which the parser should have caught) is isolated by writing the batch row by row; that row
alone is counted (``db_rejected``) and dropped. Every ``maintenance_interval_s`` the partitions of
the next days are created and the days beyond ``retention_days`` dropped.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

from station.centre import db
from station.centre.mqtt import Delivery
from station.centre.parse import ClockCorrection, EventRow, Rejected, parse_message
from station.ops.ratelimit import FailureLog
from station.ops.redact import redact_url

log = logging.getLogger("station.centre.ingest")

COMPACT_INTERVAL_S = 5.0
"""How often a writer folds the numbers noted by the batches into ``station_seq_runs`` (db.compact_seq_runs)."""
QOS0_QUEUE_MAX = 20_000
"""QoS 0 deliveries queued at most (stations publish events at QoS 1; QoS 1 is bounded by Receive Maximum)."""


class Ingestor:
    """Batch, parse, store and acknowledge the deliveries offered by the subscriber (see the module docstring)."""

    def __init__(
        self,
        db_url: str,
        ack: Callable[[Delivery], bool],
        *,
        prefix: str = "checkpoint/v1",
        timezone: str | None = None,
        retention_days: int = 400,
        future_days: int = 2,
        batch_size: int = 200,
        batch_window_s: float = 0.1,
        maintenance_interval_s: float = 600.0,
        wall: Callable[[], float] = time.time,
        on_fatal: Callable[[BaseException], None] | None = None,
    ) -> None:
        if batch_size < 1 or retention_days < 1 or future_days < 1:
            raise ValueError("batch_size, retention_days and future_days must be >= 1")
        self.db_url = db_url
        self._ack = ack
        self.prefix = prefix.rstrip("/")
        self.requested_timezone = timezone
        self.retention_days = retention_days
        self.future_days = future_days
        self.batch_size = batch_size
        self.batch_window_s = batch_window_s
        self.maintenance_interval_s = maintenance_interval_s
        self.wall = wall
        self.on_fatal = on_fatal
        self.fatal: BaseException | None = None
        self.tz = ZoneInfo(timezone or "UTC")
        self._queue: queue.SimpleQueue[Delivery | None] = queue.SimpleQueue()
        self._qos0 = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: psycopg.Connection[Any] | None = None
        self._partitions: set[dt.date] = set()
        self._known_stations: set[tuple[str, str]] = set()
        self._summary: dict[tuple[str, str], list[Any]] = {}
        self._summary_at = time.monotonic()
        self.summary_interval_s = 1.0
        self._maintained_at = -1e18
        self._failures = FailureLog(log, "centre database write")
        self._lock = threading.Lock()
        # counters (read by /healthz and /metrics)
        self.received = 0
        self.inserted = 0
        self.duplicates = 0
        self.misdated = 0
        self.corrections = 0
        self.duplicate_corrections = 0
        self.clock_corrected = 0  # stored records given a corrected time
        self.batches = 0
        self.seq_notes_folded = 0
        self._compacted_at = 0.0
        self.acked = 0
        self.dropped: Counter[str] = Counter()
        self.by_kind: Counter[str] = Counter()
        self.db_errors = 0
        self.db_ok = False
        self.last_commit_at: float | None = None
        self.last_commit_ms: float | None = None
        self.last_event_age_s: float | None = None
        self.last_ack_delay_s: float | None = None
        self.pending = 0

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        """Connect, create or check the schema, learn the time zone and create today's partitions; raise when impossible."""
        conn = self._connection()
        self.tz = ZoneInfo(db.ensure_schema(conn, self.requested_timezone))
        self._maintain(force=True)

    def start(self) -> None:
        """Start the writer thread (after :meth:`open`)."""
        self._thread = threading.Thread(target=self._guarded_run, name="centre-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Commit and acknowledge what is queued, then stop the thread and close the connection."""
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if not self.alive():
            self.flush_summary(force=True)  # a writer driven by process() alone (or one that ended) folds it here
        if self._conn is not None:
            self._conn.close()

    def alive(self) -> bool:
        """Return whether the writer thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def offer(self, delivery: Delivery) -> None:
        """Queue one delivery (paho's thread: never blocks, never touches the database)."""
        with self._lock:
            self.received += 1
            self.pending += 1
            if delivery.qos == 0:
                if self._qos0 >= QOS0_QUEUE_MAX:
                    self.pending -= 1
                    self.dropped["overload_qos0"] += 1
                    return
                self._qos0 += 1
        self._queue.put(delivery)

    # ------------------------------------------------------------------ the writer thread

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            self._conn = db.connect(self.db_url)
            self._partitions = db.existing_partitions(self._conn)
            self._conn.commit()
        return self._conn

    def _guarded_run(self) -> None:
        """Run the writer; an error it does not handle ends the replica (``on_fatal``) rather than leave it deaf.

        Nothing of the batch in hand was acknowledged, so the broker gives it again to the next start.
        """
        try:
            self._run()
        except BaseException as exc:
            self.fatal = exc
            log.critical("centre writer failed; stopping this replica error=%r", exc, exc_info=True)
            if self.on_fatal is not None:
                self.on_fatal(exc)

    def _run(self) -> None:
        closing = False
        while not closing and not self._stop.is_set():
            try:
                first = self._queue.get(timeout=self.summary_interval_s)
            except queue.Empty:  # quiet: fold the summary and look after the partitions all the same
                self.flush_summary()
                self.compact_seq_runs()
                self._maintain()
                continue
            if first is None:
                closing = True
                batch: list[Delivery] = []
            else:
                batch = [first]
            deadline = time.monotonic() + self.batch_window_s
            while len(batch) < self.batch_size:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic())) if not closing else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    closing = True
                    continue
                batch.append(item)
            if batch and self.process(batch) is not None:
                with self._lock:
                    self.pending -= len(batch)
                    self._qos0 -= sum(1 for d in batch if d.qos == 0)
            self.flush_summary(force=closing)
            self.compact_seq_runs(force=closing)
            if not closing:
                self._maintain()

    def process(self, batch: Sequence[Delivery]) -> db.BatchResult | None:
        """Parse, store and acknowledge one batch; return what it did, or None when stopped before it was stored."""
        rows: list[EventRow] = []
        corrections: list[ClockCorrection] = []
        rejected: Counter[str] = Counter()
        for delivery in batch:
            verdict = parse_message(self.prefix, delivery.topic, delivery.payload)
            if isinstance(verdict, Rejected):
                rejected[verdict.reason] += 1
            elif isinstance(verdict, ClockCorrection):
                corrections.append(verdict)
            else:
                rows.append(verdict)
        result = self._store(rows) if rows else db.BatchResult()
        if result is None:
            return None
        # After the rows: a correction in the same batch as the records it names dates them at once.
        fixed = self._store_corrections(corrections) if corrections else db.CorrectionResult()
        if fixed is None:
            return None
        self._merge_summary(result.stations)
        now = self.wall()
        acked = sum(1 for d in batch if self._ack(d))
        with self._lock:
            self.batches += 1
            self.acked += acked
            self.inserted += result.inserted
            self.duplicates += result.duplicates
            self.misdated += result.misdated
            self.corrections += fixed.new
            self.duplicate_corrections += fixed.duplicates
            self.clock_corrected += result.corrected + fixed.corrected
            self.by_kind.update(result.by_kind)
            self.dropped.update(rejected)
            self.last_commit_at = now
            self.last_ack_delay_s = max(now - d.received_wall for d in batch)
            dated = [r.ts for r in rows if r.clock_synced is not False]  # a 1970 stamp is not a 56-year lag
            if dated:
                self.last_event_age_s = max(0.0, now - max(dated))
        for reason, n in rejected.items():
            total = self.dropped[reason]
            if total == n or total in (10, 100, 1000) or total % 10000 == 0:  # a hostile flood must not flood the journal too
                log.warning("centre dropped messages reason=%s count=%d total=%d", reason, n, total)
        return result

    def _place(self, rows: Sequence[EventRow], conn: psycopg.Connection[Any]) -> tuple[list[EventRow], list[EventRow]]:
        """Split rows into those with a day partition (creating missing ones in the kept window) and misdated ones."""
        today = db.day_of(self.wall(), self.tz)
        lo, hi = today - dt.timedelta(days=self.retention_days), today + dt.timedelta(days=self.future_days)
        days = [db.day_of(r.ts, self.tz) for r in rows]
        wanted = {d for d in days if d not in self._partitions and lo <= d <= hi}
        if wanted:
            db.create_partitions(conn, wanted, self.tz)
            self._partitions |= wanted
        placed: list[EventRow] = []
        misdated: list[EventRow] = []
        for row, day in zip(rows, days, strict=True):
            (placed if day in self._partitions and lo <= day else misdated).append(row)
        return placed, misdated

    def _store(self, rows: list[EventRow]) -> db.BatchResult | None:
        delay = 0.2
        while True:
            try:
                conn = self._connection()
                placed, misdated = self._place(rows, conn)
                t0 = time.monotonic()
                result = db.write_batch(conn, placed, misdated, self._known_stations)
                self.last_commit_ms = (time.monotonic() - t0) * 1000.0
                self.db_ok = True
                return result
            except psycopg.OperationalError as exc:  # connection lost, server restarting, deadlock: try the batch again
                self.db_ok = False
                self.db_errors += 1
                self._failures.report(type(exc).__name__, None, db=redact_url(self.db_url), error=str(exc).strip()[:200])
                if self._conn is not None and (self._conn.broken or self._conn.closed):
                    self._conn = None
            except psycopg.Error as exc:  # a row the database refuses, or a partition dropped meanwhile
                self.db_errors += 1
                self._failures.report(type(exc).__name__, None, error=str(exc).strip()[:200])
                return self._store_row_by_row(rows)
            if self._stop.wait(delay):
                return None
            delay = min(delay * 2, 5.0)

    def _store_corrections(self, corrections: list[ClockCorrection]) -> db.CorrectionResult | None:
        """Store a batch's clock corrections, retrying like rows; one the database refuses is counted and dropped alone."""
        delay = 0.2
        while True:
            try:
                return db.write_corrections(self._connection(), corrections)
            except psycopg.OperationalError as exc:
                self.db_ok = False
                self.db_errors += 1
                self._failures.report(type(exc).__name__, None, db=redact_url(self.db_url), error=str(exc).strip()[:200])
                if self._conn is not None and (self._conn.broken or self._conn.closed):
                    self._conn = None
            except psycopg.Error as exc:
                if len(corrections) == 1:
                    with self._lock:
                        self.dropped["db_rejected"] += 1
                    log.error(
                        "centre: the database refused a clock correction station=%s/%s error=%s",
                        corrections[0].site,
                        corrections[0].station,
                        exc,
                    )
                    return db.CorrectionResult()
                total = db.CorrectionResult()
                for one in corrections:
                    got = self._store_corrections([one])
                    if got is None:
                        return None
                    total.new, total.duplicates, total.corrected = (
                        total.new + got.new,
                        total.duplicates + got.duplicates,
                        total.corrected + got.corrected,
                    )
                return total
            if self._stop.wait(delay):
                return None
            delay = min(delay * 2, 5.0)

    def _store_row_by_row(self, rows: list[EventRow]) -> db.BatchResult | None:
        """Write each row in its own transaction; count and drop the rows the database refuses."""
        total = db.BatchResult()
        for row in rows:
            try:
                conn = self._connection()
                self._partitions = db.existing_partitions(conn)
                conn.commit()
                placed, misdated = self._place([row], conn)
                one = db.write_batch(conn, placed, misdated, self._known_stations)
            except psycopg.OperationalError:
                return self._store(rows)  # the database went away: back to the retrying path, nothing acknowledged yet
            except psycopg.Error as exc:
                with self._lock:
                    self.dropped["db_rejected"] += 1
                log.error("centre: the database refused a row kind=%s station=%s/%s error=%s", row.kind, row.site, row.station, exc)
                continue
            total.inserted += one.inserted
            total.duplicates += one.duplicates
            total.misdated += one.misdated
            total.corrected += one.corrected
            for k, n in one.by_kind.items():
                total.by_kind[k] = total.by_kind.get(k, 0) + n
            self._merge_summary(one.stations)
        self.db_ok = True
        return total

    def _merge_summary(self, stations: dict[tuple[str, str], list[Any]]) -> None:
        for key, (ts, session, seq) in stations.items():
            entry = self._summary.setdefault(key, [ts, session, seq])
            entry[0] = max(entry[0], ts)
            entry[1] = session if entry[1] is None else (max(entry[1], session) if session is not None else entry[1])
            entry[2] = seq if entry[2] is None else (max(entry[2], seq) if seq is not None else entry[2])

    def flush_summary(self, force: bool = False) -> None:
        """Fold the stations' summary into the database, at most every ``summary_interval_s`` unless forced; keep it on failure."""
        if not self._summary or (not force and time.monotonic() - self._summary_at < self.summary_interval_s):
            return
        try:
            db.fold_summary(self._connection(), self._summary, self.wall())
        except psycopg.Error as exc:
            self.db_errors += 1
            self._failures.report("summary", None, error=str(exc).strip()[:200])
            return
        self._summary = {}
        self._summary_at = time.monotonic()

    def compact_seq_runs(self, force: bool = False) -> None:
        """Fold the received numbers noted by the writers into ``station_seq_runs``, at most every ``COMPACT_INTERVAL_S`` unless forced."""
        if not force and time.monotonic() - self._compacted_at < COMPACT_INTERVAL_S:
            return
        self._compacted_at = time.monotonic()
        try:
            folded = db.compact_seq_runs(self._connection())
        except psycopg.Error as exc:  # the notes stay and are read as they are; the next turn folds them
            self.db_errors += 1
            self._failures.report("seq_runs", None, error=str(exc).strip()[:200])
            return
        if folded:
            self.seq_notes_folded += folded

    def _maintain(self, force: bool = False) -> None:
        """Create the coming days' partitions and drop expired ones, at most every ``maintenance_interval_s``."""
        now = time.monotonic()
        if not force and now - self._maintained_at < self.maintenance_interval_s:
            return
        self._maintained_at = now
        try:
            conn = self._connection()
            today = db.day_of(self.wall(), self.tz)
            ahead = {today + dt.timedelta(days=i) for i in range(self.future_days + 1)}
            db.create_partitions(conn, ahead - self._partitions, self.tz)
            db.drop_expired(conn, today - dt.timedelta(days=self.retention_days))
            self._partitions = db.existing_partitions(conn)
            conn.commit()
            self.db_ok = True
        except psycopg.Error as exc:
            self.db_ok = False
            self.db_errors += 1
            self._failures.report("maintenance", None, error=str(exc).strip()[:200])
            if force:
                raise

    # ------------------------------------------------------------------ reading

    def stats(self) -> dict[str, Any]:
        """Return the writer's counters and lags (``/healthz``)."""
        with self._lock:
            return {
                "received": self.received,
                "inserted": self.inserted,
                "duplicates": self.duplicates,
                "misdated": self.misdated,
                "clock_corrections": self.corrections,
                "clock_corrections_duplicate": self.duplicate_corrections,
                "clock_corrected": self.clock_corrected,
                "dropped": dict(self.dropped),
                "by_kind": dict(self.by_kind),
                "batches": self.batches,
                "seq_notes_folded": self.seq_notes_folded,
                "acked": self.acked,
                "pending": self.pending,
                "db_ok": self.db_ok,
                "db_errors": self.db_errors,
                "last_commit_at": self.last_commit_at,
                "last_commit_ms": self.last_commit_ms,
                "last_event_age_s": self.last_event_age_s,
                "last_ack_delay_s": self.last_ack_delay_s,
                "timezone": self.tz.key,
                "partitions": len(self._partitions),
                "writer_alive": self.alive(),
            }
