"""Retention and erasure of personal data in the event store.

Screening events carry a temperature, a health-code colour and (in vehicle lanes) a plate: personal
data that must not stay on a box at a roadside forever. ``[retention]`` sets how long it stays
(events 90 days, face crops 7 days by default); the daemon runs :func:`purge` every
``retention.interval_s`` on its own thread (:class:`RetentionThread`, started by ``StationApp``),
and ``stationctl data erase`` deletes on request through :func:`erase`.

One rule beats the clock: **an event whose MQTT message is still undelivered is never purged.**
The outbox row *is* the copy for the command centre; deleting the event would not delete that
message (it stays in the outbox and is sent later), and deleting the message would lose the record
centrally. So the purge skips events (and vehicle events) referenced by a pending outbox row —
pending = neither acknowledged nor dropped by the outbox bounds — and counts them as ``held``; they
go in a later purge once the broker has acknowledged them or ``mqtt.outbox_max_age_days`` has
dropped the message. Delivered or dropped outbox rows older than the cut-off go with their events.
An explicit erase may include pending messages (``--include-pending``): then they are deleted and
never sent, which is what an erasure request asks for.

Crops kept with an event (``event_crops``: the face JPEG and thermal PNG under ``<data_dir>/crops``
that ``station.lane.capture.CropWriter`` writes for alarms) go after ``retention.face_crops_days``
(their link row and file together), with their event when the event goes first, and on an erase
with their event. Files under ``crops/`` that no row names (a write cut short) go by their age.

Operator actions (``operator_actions``, the touch display's acknowledgements and overrides, some
with a clinical re-check reading) follow the same age limit, and go with their event on an erase.

Every deletion (purge or erase) that removed anything writes one row to ``data_audit`` with what
was asked and how many rows went, so an inspector can see that data was deleted and why without the
data itself.
"""

from __future__ import annotations

import functools
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from station.store.outbox import PENDING

if TYPE_CHECKING:
    from station.store.events import SqliteEventStore

log = logging.getLogger("station.store.retention")

CROPS_DIR = "crops"
DAY_S = 86400.0
BATCH = 2000  # rows per transaction: the daemon's screening writes wait at most one batch

# Pending outbox rows and the event / vehicle ids inside their payloads (station.store.outbox.enqueue
# envelopes). Every pending row is read (on a read-only connection, outside the store's lock): an
# event's write time, not its decision time, dates its message, and a late-recorded event must still
# be held.
_PENDING_IDS = (
    "SELECT json_extract(CAST(payload AS TEXT), '$.event.event_id') AS eid, "
    f"json_extract(CAST(payload AS TEXT), '$.vehicle.vehicle_id') AS vid FROM outbox WHERE {PENDING}"
)


@dataclass
class PurgeResult:
    """What one retention pass deleted (row counts per table, crop files) and what it kept back."""

    events: int = 0
    gate_actions: int = 0
    operator_actions: int = 0
    vehicles: int = 0
    outbox: int = 0
    held: int = 0  # events/vehicles kept only because their message is still undelivered
    crops: int = 0
    visits: int = 0  # vehicle visits and their occupant links (station/store/visits.py)
    registrations: int = 0  # outsider registrations
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Return the counts as a dict (for ``data_audit``, ``stationctl --json`` and the daemon's stats)."""
        return {
            "events": self.events,
            "gate_actions": self.gate_actions,
            "operator_actions": self.operator_actions,
            "vehicles": self.vehicles,
            "outbox": self.outbox,
            "held": self.held,
            "crops": self.crops,
            "visits": self.visits,
            "registrations": self.registrations,
            "errors": self.errors,
        }

    @property
    def deleted(self) -> int:
        """Number of rows and files deleted in all."""
        personal = self.events + self.gate_actions + self.operator_actions + self.vehicles + self.visits + self.registrations
        return personal + self.outbox + self.crops


def events_where(since: float | None, until: float | None, event_ids: Iterable[str]) -> tuple[str, list[Any]]:
    """`` WHERE …`` selecting events by time range and/or ids (empty when no criterion), and its parameters."""
    ids = list(event_ids)
    clauses: list[str] = []
    params: list[Any] = []
    if ids:
        clauses.append(f"event_id IN ({','.join('?' * len(ids))})")
        params.extend(ids)
    if since is not None:
        clauses.append("ts >= ?")
        params.append(since)
    if until is not None:
        clauses.append("ts < ?")
        params.append(until)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def _read(path: Path) -> sqlite3.Connection:
    """Open a read-only connection of its own: scans run beside the daemon without holding its store lock."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def _pending_ids(conn: sqlite3.Connection) -> tuple[set[str], set[str]]:
    """Return the event ids and vehicle ids that pending outbox rows announce."""
    events: set[str] = set()
    vehicles: set[str] = set()
    for eid, vid in conn.execute(_PENDING_IDS):
        if eid:
            events.add(str(eid))
        if vid:
            vehicles.add(str(vid))
    return events, vehicles


def _unsynced_young(conn: sqlite3.Connection, cutoff: float) -> tuple[set[str], set[str]]:
    """Return the ids of events and vehicles stamped unsynced whose ``ts`` says "old" but whose true age does not.

    A record stamped before the clock was synchronised (a Pi boots at 1970) has a ``ts`` that means
    nothing: once NTP steps the clock it would look decades old and be purged at once. Its true time
    is ``ts`` plus the offset of the clock correction that names it (station/store/clock_corrections.py);
    without one, it is old only if a later record (rowid order is time order) with a trusted ``ts``
    is itself past the cutoff.
    """
    offsets: dict[str, float] = {}
    if _has_table(conn, "clock_corrections"):
        for (text,) in conn.execute("SELECT record FROM clock_corrections"):
            c = json.loads(text)
            for rid in [*c.get("event_ids", []), *c.get("vehicle_ids", [])]:
                offsets[str(rid)] = float(c["offset_ms"]) / 1000.0
    young: list[set[str]] = []
    for table, key in (("events", "event_id"), ("vehicles", "vehicle_id")):
        keep: set[str] = set()
        if _has_table(conn, table):
            trusted = conn.execute(
                f"SELECT coalesce(max(id), 0) FROM {table} WHERE ts < ? AND json_extract(record, '$.clock_synced') = 1", (cutoff,)
            ).fetchone()[0]
            rows = conn.execute(f"SELECT id, {key}, ts FROM {table} WHERE ts < ? AND json_extract(record, '$.clock_synced') = 0", (cutoff,))
            for rowid, rid, ts in rows:
                offset = offsets.get(str(rid))
                if (ts + offset >= cutoff) if offset is not None else rowid > trusted:
                    keep.add(str(rid))
        young.append(keep)
    return young[0], young[1]


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    """Tell whether the database has a table called ``name``."""
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


def audit(conn: sqlite3.Connection, actor: str, criteria: dict[str, Any], counts: dict[str, Any], note: str = "") -> None:
    """Write one ``data_audit`` row inside the caller's transaction."""
    conn.execute(
        "INSERT INTO data_audit(ts, actor, criteria, counts, note) VALUES (?, ?, ?, ?, ?)",
        (time.time(), actor, json.dumps(criteria, sort_keys=True), json.dumps(counts, sort_keys=True), note),
    )


def _delete_ids(conn: sqlite3.Connection, table: str, column: str, ids: list[Any]) -> int:
    """Delete the rows of ``table`` whose ``column`` is in ``ids``; return how many went."""
    n = 0
    for i in range(0, len(ids), 500):  # SQLite's bound-parameter limit
        chunk = ids[i : i + 500]
        n += conn.execute(f"DELETE FROM {table} WHERE {column} IN ({','.join('?' * len(chunk))})", chunk).rowcount
    return n


def purge_store(store: SqliteEventStore, events_days: int, now: float | None = None) -> PurgeResult:
    """Delete events, gate actions, vehicle events and settled outbox rows older than ``events_days``.

    ``store`` must be writable. The scans (which messages are still pending, which
    gate actions are orphans) run on a separate read-only connection; the deletes run in write
    transactions of at most :data:`BATCH` rows each, so a screening's ``record()`` never waits long
    behind the purge. A row that became pending after the scan belongs to a new event, which is not
    old enough to be purged.
    """
    now = time.time() if now is None else now
    cutoff = now - events_days * DAY_S
    cutoff_ms = int(cutoff * 1000)
    result = PurgeResult()
    reader = _read(store.path)
    try:
        pending_events, pending_vehicles = _pending_ids(reader)
        young_events, young_vehicles = _unsynced_young(reader, cutoff)  # kept like pending ones
        pending_events |= young_events
        pending_vehicles |= young_vehicles
        has_vehicles = _has_table(reader, "vehicles")
        has_operator = _has_table(reader, "operator_actions")  # the operator display's audit (station/web)
    finally:
        reader.close()

    def events_batch(conn: sqlite3.Connection) -> bool:
        # Enough rows that BATCH non-pending ones are among them if they exist.
        rows = conn.execute(
            "SELECT id, event_id FROM events WHERE ts < ? ORDER BY ts LIMIT ?", (cutoff, BATCH + len(pending_events))
        ).fetchall()
        doomed = [(rid, eid) for rid, eid in rows if eid not in pending_events][:BATCH]
        result.gate_actions += _delete_ids(conn, "gate_actions", "event_id", [eid for _rid, eid in doomed])
        result.events += _delete_ids(conn, "events", "id", [rid for rid, _eid in doomed])
        return len(doomed) == BATCH

    def vehicles_batch(conn: sqlite3.Connection) -> bool:
        rows = conn.execute(
            "SELECT id, vehicle_id FROM vehicles WHERE ts < ? ORDER BY ts LIMIT ?", (cutoff, BATCH + len(pending_vehicles))
        ).fetchall()
        doomed = [rid for rid, vid in rows if vid not in pending_vehicles][:BATCH]
        result.vehicles += _delete_ids(conn, "vehicles", "id", doomed)
        return len(doomed) == BATCH

    def outbox_batch(conn: sqlite3.Connection) -> bool:
        # Settled (acknowledged or dropped) messages: delivery bookkeeping, and a copy of the data.
        gone = int(
            conn.execute(
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE created_at < ? AND "
                "(acked_at IS NOT NULL OR dropped_at IS NOT NULL) LIMIT ?)",
                (cutoff_ms, BATCH),
            ).rowcount
        )
        result.outbox += gone
        return gone == BATCH

    def operator_batch(conn: sqlite3.Connection) -> bool:
        # Acknowledgements and overrides, some with a clinical re-check reading: same age limit.
        gone = int(
            conn.execute(
                "DELETE FROM operator_actions WHERE id IN (SELECT id FROM operator_actions WHERE ts < ? LIMIT ?)", (cutoff, BATCH)
            ).rowcount
        )
        result.operator_actions += gone
        return gone == BATCH

    while store.write_transaction(events_batch):
        pass
    while has_vehicles and store.write_transaction(vehicles_batch):
        pass
    while store.write_transaction(outbox_batch):
        pass
    while has_operator and store.write_transaction(operator_batch):
        pass
    reader = _read(store.path)
    try:
        # Gate actions whose event never made it into the table (a store failure) are audit records
        # of their own; they age out by their write time.
        orphans = [
            r[0]
            for r in reader.execute(
                "SELECT id FROM gate_actions WHERE created_at < ? AND event_id NOT IN (SELECT event_id FROM events)", (cutoff,)
            )
        ]
        result.held = int(reader.execute("SELECT count(*) FROM events WHERE ts < ?", (cutoff,)).fetchone()[0])
        if has_vehicles:
            result.held += int(reader.execute("SELECT count(*) FROM vehicles WHERE ts < ?", (cutoff,)).fetchone()[0])
    finally:
        reader.close()
    for i in range(0, len(orphans), BATCH):
        chunk = orphans[i : i + BATCH]
        result.gate_actions += store.write_transaction(functools.partial(_delete_ids, table="gate_actions", column="id", ids=chunk))
    return result


def _unlink_crops(crops_dir: Path, names: Iterable[str]) -> tuple[int, list[str]]:
    """Delete the named crop files (names only, never a path out of ``crops_dir``); return (count, errors)."""
    n, errors = 0, []
    for name in names:
        if not name or Path(name).name != name:
            continue
        path = crops_dir / name
        try:
            path.unlink()
            n += 1
        except FileNotFoundError:
            pass
        except OSError as exc:
            errors.append(f"{path}: {exc.strerror}")
    return n, errors


def purge_crop_links(store: SqliteEventStore, crops_dir: Path, face_crops_days: int, now: float | None = None) -> tuple[int, list[str]]:
    """Delete the crops linked to events that are older than ``face_crops_days`` (all for 0) or whose event is gone.

    Rows and files go together; returns (files deleted, errors).
    """
    now = time.time() if now is None else now
    cutoff = now + 1.0 if face_crops_days == 0 else now - face_crops_days * DAY_S
    reader = _read(store.path)
    try:
        if not _has_table(reader, "event_crops"):
            return 0, []
    finally:
        reader.close()

    def tx(conn: sqlite3.Connection) -> list[str]:
        rows = conn.execute(
            "SELECT rowid, file FROM event_crops WHERE created_at < ? OR event_id NOT IN (SELECT event_id FROM events)", (cutoff,)
        ).fetchall()
        _delete_ids(conn, "event_crops", "rowid", [r for r, _f in rows])
        return [f for _r, f in rows]

    names = store.write_transaction(tx)
    return _unlink_crops(crops_dir, names)


def purge_crops(crops_dir: Path, face_crops_days: int, now: float | None = None) -> tuple[int, list[str]]:
    """Delete crop files older than ``face_crops_days`` (all of them for 0); return (count, errors)."""
    now = time.time() if now is None else now
    cutoff = now - face_crops_days * DAY_S
    n, errors = 0, []
    if not crops_dir.is_dir():
        return 0, []
    for path in sorted(crops_dir.rglob("*")):
        try:
            if path.is_file() and (face_crops_days == 0 or path.stat().st_mtime < cutoff):
                path.unlink()
                n += 1
        except OSError as exc:
            errors.append(f"{path}: {exc.strerror}")
    return n, errors


def _has_visit_tables(store: SqliteEventStore) -> bool:
    """Tell whether the store has the visit and registration tables (a current schema)."""
    reader = _read(store.path)
    try:
        return _has_table(reader, "visits") and _has_table(reader, "registrations")
    finally:
        reader.close()


def purge(store: SqliteEventStore, data_dir: Path, events_days: int, face_crops_days: int, now: float | None = None) -> PurgeResult:
    """Run the whole retention pass: store rows, then crop files; audited when anything went."""
    result = purge_store(store, events_days, now)
    if _has_visit_tables(store):
        from station.store import visits

        gone = visits.purge(store, events_days, now)
        result.visits, result.registrations, result.held = gone.visits, gone.registrations, result.held + gone.held
    crops_dir = Path(data_dir) / CROPS_DIR
    linked, link_errors = purge_crop_links(store, crops_dir, face_crops_days, now)
    # Then the files no row names (a write cut short), by their age.
    loose, loose_errors = purge_crops(crops_dir, face_crops_days, now)
    result.crops, result.errors = linked + loose, link_errors + loose_errors
    if result.deleted:
        store.write_transaction(
            lambda conn: audit(
                conn, "retention", {"events_days": events_days, "face_crops_days": face_crops_days}, result.as_dict(), "scheduled purge"
            )
        )
    return result


def erase(
    store: SqliteEventStore,
    *,
    since: float | None = None,
    until: float | None = None,
    event_ids: Iterable[str] = (),
    include_pending: bool = False,
    actor: str = "stationctl data erase",
    note: str = "",
) -> dict[str, Any]:
    """Delete the events selected by time range (``since`` ≤ ts < ``until``) and/or event ids.

    Without ``include_pending``, events whose message is still undelivered are kept and listed under
    ``held``; with it, those messages are deleted too and never sent. The crops kept with the
    erased events (``event_crops`` and their files in ``crops/`` beside the database) go with them.
    Returns the counts; one ``data_audit`` row records the request.
    """
    ids = sorted(set(event_ids))
    if since is None and until is None and not ids:
        raise ValueError("give a time range or event ids")

    reader = _read(store.path)
    try:
        pending_events, _ = _pending_ids(reader)
        has_operator = _has_table(reader, "operator_actions")
        has_crops = _has_table(reader, "event_crops")
    finally:
        reader.close()
    crop_files: list[str] = []

    def tx(conn: sqlite3.Connection) -> dict[str, Any]:
        where, params = events_where(since, until, ids)
        rows = conn.execute(f"SELECT id, event_id FROM events{where}", params).fetchall()
        held = sorted(eid for _rid, eid in rows if eid in pending_events)
        chosen = rows if include_pending else [(r, e) for r, e in rows if e not in pending_events]
        counts: dict[str, Any] = {"events": 0, "gate_actions": 0, "operator_actions": 0, "outbox": 0}
        eids = [e for _r, e in chosen]
        counts["gate_actions"] = _delete_ids(conn, "gate_actions", "event_id", eids)
        if has_operator:
            counts["operator_actions"] = _delete_ids(conn, "operator_actions", "event_id", eids)
        if has_crops:
            for i in range(0, len(eids), 500):  # SQLite's bound-parameter limit
                chunk = eids[i : i + 500]
                crop_files.extend(
                    f for (f,) in conn.execute(f"SELECT file FROM event_crops WHERE event_id IN ({','.join('?' * len(chunk))})", chunk)
                )
            counts["crop_links"] = _delete_ids(conn, "event_crops", "event_id", eids)
        counts["events"] = _delete_ids(conn, "events", "id", [r for r, _e in chosen])
        if eids:
            # Every outbox copy of these events: pending ones (include_pending) and settled ones.
            wanted = set(eids)
            # ($.event_id: the operator display's audit messages about the event.)
            out_ids = [
                oid
                for oid, eid in conn.execute(
                    "SELECT id, coalesce(json_extract(CAST(payload AS TEXT), '$.event.event_id'), "
                    "json_extract(CAST(payload AS TEXT), '$.event_id')) FROM outbox"
                )
                if eid in wanted
            ]
            counts["outbox"] = _delete_ids(conn, "outbox", "id", out_ids)
        counts["held"] = [] if include_pending else held
        counts["not_found"] = sorted(set(ids) - {e for _r, e in rows})
        criteria = {"since": since, "until": until, "event_ids": ids, "include_pending": include_pending}
        audit(conn, actor, criteria, {k: v for k, v in counts.items() if k != "not_found"}, note)
        return counts

    result: dict[str, Any] = store.write_transaction(tx)
    # After the commit: a file is never gone while its event still is there.
    result["crops"], errors = _unlink_crops(Path(store.path).parent / CROPS_DIR, crop_files)
    if errors:
        result["errors"] = errors
    log.warning(
        "data erased actor=%s events=%s outbox=%s crops=%s held=%s",
        actor,
        result["events"],
        result["outbox"],
        result["crops"],
        len(result["held"]),
    )
    return result


class RetentionThread:
    """The daemon's periodic purge (first pass shortly after start, then every ``interval_s``)."""

    FIRST_DELAY_S = 5.0  # let start-up finish; retention is not urgent to the second

    def __init__(self, store: SqliteEventStore, data_dir: Path, events_days: int, face_crops_days: int, interval_s: float) -> None:
        """Prepare the thread; nothing runs before :meth:`start`."""
        self.store = store
        self.data_dir = Path(data_dir)
        self.events_days = events_days
        self.face_crops_days = face_crops_days
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="station-retention", daemon=True)
        self.runs = 0
        self.last: dict[str, Any] | None = None
        self.last_error = ""

    def start(self) -> None:
        """Start the thread (first pass after :attr:`FIRST_DELAY_S`)."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, waiting up to 10 s for a pass in progress to finish."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10.0)

    def run_once(self) -> PurgeResult:
        """Run one purge now and remember its result for :meth:`stats`."""
        t0 = time.monotonic()
        result = purge(self.store, self.data_dir, self.events_days, self.face_crops_days)
        self.runs += 1
        self.last = dict(result.as_dict(), at=time.time(), seconds=round(time.monotonic() - t0, 3))
        log.info(
            "retention purge events=%d vehicles=%d outbox=%d crops=%d held=%d",
            result.events,
            result.vehicles,
            result.outbox,
            result.crops,
            result.held,
        )
        return result

    def _run(self) -> None:
        """Purge every ``interval_s`` until stopped; a failed pass is logged and retried next period."""
        delay = self.FIRST_DELAY_S
        while not self._stop.wait(delay):
            delay = self.interval_s
            try:
                self.run_once()
            except (sqlite3.Error, OSError) as exc:  # logged and retried next period; the lane runs on
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.error("retention purge failed error=%s", self.last_error)
            except Exception as exc:  # a closed store at shutdown among them: same handling
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("retention purge failed error=%s", self.last_error)

    def stats(self) -> dict[str, Any]:
        """Return the runs so far, the last result and error, and the policy (for the daemon's status)."""
        return {
            "runs": self.runs,
            "last": self.last,
            "last_error": self.last_error,
            "events_days": self.events_days,
            "face_crops_days": self.face_crops_days,
            "interval_s": self.interval_s,
        }
