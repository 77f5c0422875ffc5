"""Vehicle visits and outsider registrations in the event store: durable rows, their messages, retention.

A **visit** (``events/visit``) is one vehicle at the lane with everything that happened while it was
there: its plate read, direction, resident / outsider, the registration recognised, and the
screenings of its occupants. The visit's row, its occupant links (``visit_occupants``: visit id →
screening event id) and its outbox message are written in one transaction when the visit closes.

A **registration** (``events/registration``, 外来车辆登记) is an outsider vehicle registered by the
operator: plate, reason, destination, and the contact phone as a keyed hash plus its last four digits
only. Row and message go in one transaction too.

Both are personal data: :func:`purge` deletes them after ``retention.events_days`` (never while
their message is undelivered, like screenings), :func:`erase_registrations` deletes registrations on
request, and every deletion writes a ``data_audit`` row.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from station.store import outbox
from station.store.meta import bump_meta
from station.store.outbox import PENDING, PRIORITY_EVENT, compact_json, jsonable
from station.store.retention import BATCH, DAY_S, audit

if TYPE_CHECKING:
    from station.store.events import SqliteEventStore

_PENDING_IDS = (
    "SELECT json_extract(CAST(payload AS TEXT), '$.visit.visit_id') AS vid, "
    f"json_extract(CAST(payload AS TEXT), '$.registration.registration_id') AS rid FROM outbox WHERE {PENDING}"
)


def record_visit(store: SqliteEventStore, record: Mapping[str, Any]) -> int:
    """Write a closed visit, its occupant links and its ``events/visit`` message in one durable transaction.

    ``record`` needs ``visit_id``, ``ts``, ``closed_ts``, ``kind`` and ``occupants`` (a list of
    screenings, each with ``event_id``); it consumes a ``seq`` like a vehicle event. Never an alarm
    (each occupant's own screening is); a visit with a denied occupant is ``flagged``. Returns the row id.
    """
    rec = jsonable(dict(record))
    for key in ("visit_id", "ts", "closed_ts", "kind"):
        if rec.get(key) in (None, ""):
            raise ValueError(f"visit record needs {key!r}")
    occupants = rec.get("occupants")
    if not isinstance(occupants, list) or not all(isinstance(o, dict) and o.get("event_id") for o in occupants):
        raise ValueError("visit record needs 'occupants': a list of screenings with their event_id")
    summary = rec.get("summary") or {}
    rec["alarm"] = False

    def tx(conn: sqlite3.Connection) -> int:
        now = time.time()
        cur = conn.execute(
            "INSERT INTO visits(visit_id, ts, closed_ts, kind, plate, occupants, fever, denied, flagged, registration_id, "
            "record, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                rec["visit_id"],
                float(rec["ts"]),
                float(rec["closed_ts"]),
                rec["kind"],
                rec.get("plate"),
                len(occupants),
                int(summary.get("fever", 0)),
                int(summary.get("denied", 0)),
                int(bool(rec.get("flagged"))),
                rec.get("registration_id"),
                compact_json(rec),
                now,
            ),
        )
        conn.executemany(
            "INSERT OR IGNORE INTO visit_occupants(visit_id, event_id) VALUES (?, ?)", [(rec["visit_id"], o["event_id"]) for o in occupants]
        )
        outbox.enqueue(
            conn,
            store._sender(),
            topic=store.topic_visit,
            priority=PRIORITY_EVENT,
            seq=bump_meta(conn, "seq"),
            ts=rec["closed_ts"],
            clock_synced=rec.get("clock_synced"),
            body={"visit": rec},
            now=now,
            keep=("visits", int(cur.lastrowid or 0)),
        )
        return int(cur.lastrowid or 0)

    rowid = store.write_transaction(tx)
    store._notify_listeners()
    return rowid


def record_registration(store: SqliteEventStore, record: Mapping[str, Any]) -> int:
    """Write an outsider registration and its ``events/registration`` message in one durable transaction.

    ``record`` needs ``registration_id``, ``ts``, ``plate``, ``reason``, ``destination``,
    ``phone_hash``, ``phone_last4`` and ``operator`` (station/web/registration.py builds it; the phone
    number itself is never passed here). Returns the row id.
    """
    rec = jsonable(dict(record))
    for key in ("registration_id", "ts", "plate", "reason", "destination", "phone_hash", "phone_last4", "operator"):
        if rec.get(key) in (None, ""):
            raise ValueError(f"registration record needs {key!r}")

    def tx(conn: sqlite3.Connection) -> int:
        now = time.time()
        cur = conn.execute(
            "INSERT INTO registrations(registration_id, ts, plate, reason, destination, phone_hash, phone_last4, operator, "
            "vehicle_id, record, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                rec["registration_id"],
                float(rec["ts"]),
                rec["plate"],
                rec["reason"],
                rec["destination"],
                rec["phone_hash"],
                rec["phone_last4"],
                rec["operator"],
                rec.get("vehicle_id"),
                compact_json(rec),
                now,
            ),
        )
        outbox.enqueue(
            conn,
            store._sender(),
            topic=store.topic_registration,
            priority=PRIORITY_EVENT,
            seq=bump_meta(conn, "seq"),
            ts=rec["ts"],
            clock_synced=rec.get("clock_synced"),
            body={"registration": rec},
            now=now,
            keep=("registrations", int(cur.lastrowid or 0)),
        )
        return int(cur.lastrowid or 0)

    rowid = store.write_transaction(tx)
    store._notify_listeners()
    return rowid


def registration_for(store: SqliteEventStore, plate: str, since_ts: float) -> dict[str, Any] | None:
    """Return the newest registration of ``plate`` (normalised) made at or after ``since_ts``, or None."""
    rows = store._query("SELECT record FROM registrations WHERE plate = ? AND ts >= ? ORDER BY ts DESC, id DESC LIMIT 1", (plate, since_ts))
    return json.loads(rows[0]["record"]) if rows else None


def visits_tail(store: SqliteEventStore, n: int) -> list[dict[str, Any]]:
    """Return the last ``n`` visits, oldest first."""
    rows = store._query("SELECT record FROM (SELECT id, record FROM visits ORDER BY id DESC LIMIT ?) ORDER BY id", (n,))
    return [json.loads(r["record"]) for r in rows]


def registrations_tail(store: SqliteEventStore, n: int, since_ts: float = 0.0) -> list[dict[str, Any]]:
    """Return the last ``n`` registrations made at or after ``since_ts``, newest first."""
    rows = store._query("SELECT record FROM registrations WHERE ts >= ? ORDER BY id DESC LIMIT ?", (since_ts, n))
    return [json.loads(r["record"]) for r in rows]


def visit_of_event(store: SqliteEventStore, event_id: str) -> str | None:
    """Return the id of the visit a screening event belongs to, or None."""
    rows = store._query("SELECT visit_id FROM visit_occupants WHERE event_id = ? LIMIT 1", (event_id,))
    return str(rows[0]["visit_id"]) if rows else None


@dataclass
class VisitPurge:
    """What one retention pass deleted of visits and registrations, and what it kept back (undelivered)."""

    visits: int = 0
    visit_occupants: int = 0
    registrations: int = 0
    held: int = 0


def _pending(conn: sqlite3.Connection) -> tuple[set[str], set[str]]:
    visits: set[str] = set()
    regs: set[str] = set()
    for vid, rid in conn.execute(_PENDING_IDS):
        if vid:
            visits.add(str(vid))
        if rid:
            regs.add(str(rid))
    return visits, regs


def purge(store: SqliteEventStore, events_days: int, now: float | None = None) -> VisitPurge:
    """Delete visits (with their occupant links) and registrations older than ``events_days``.

    A visit or registration whose message is still undelivered is kept (counted in ``held``), like
    a screening. Deletes run in transactions of at most :data:`~station.store.retention.BATCH` rows.
    """
    cutoff = (time.time() if now is None else now) - events_days * DAY_S
    result = VisitPurge()

    def batch(table: str, id_col: str, pending_index: int) -> Any:
        def tx(conn: sqlite3.Connection) -> bool:
            pending = _pending(conn)[pending_index]
            sql = f"SELECT id, {id_col} FROM {table} WHERE ts < ? ORDER BY ts LIMIT ?"
            rows = conn.execute(sql, (cutoff, BATCH + len(pending))).fetchall()
            doomed = [(rid, key) for rid, key in rows if key not in pending][:BATCH]
            keys = [k for _r, k in doomed]
            if table == "visits":
                for i in range(0, len(keys), 500):
                    chunk = keys[i : i + 500]
                    result.visit_occupants += conn.execute(
                        f"DELETE FROM visit_occupants WHERE visit_id IN ({','.join('?' * len(chunk))})", chunk
                    ).rowcount
            ids = [r for r, _k in doomed]
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                n = conn.execute(f"DELETE FROM {table} WHERE id IN ({','.join('?' * len(chunk))})", chunk).rowcount
                if table == "visits":
                    result.visits += n
                else:
                    result.registrations += n
            return len(doomed) == BATCH

        return tx

    while store.write_transaction(batch("visits", "visit_id", 0)):
        pass
    while store.write_transaction(batch("registrations", "registration_id", 1)):
        pass
    result.held = int(
        store._read(
            lambda conn: conn.execute(
                "SELECT (SELECT count(*) FROM visits WHERE ts < ?) + (SELECT count(*) FROM registrations WHERE ts < ?)", (cutoff, cutoff)
            ).fetchone()[0]
        )
    )
    return result


def registrations_where(since: float | None, until: float | None, ids: Iterable[str], plates: Iterable[str]) -> tuple[str, list[Any]]:
    """Return `` WHERE …`` selecting registrations by time range, ids and/or plates (empty with no criterion), and its parameters."""
    clauses: list[str] = []
    params: list[Any] = []
    id_list, plate_list = list(ids), list(plates)
    if id_list:
        clauses.append(f"registration_id IN ({','.join('?' * len(id_list))})")
        params.extend(id_list)
    if plate_list:
        clauses.append(f"plate IN ({','.join('?' * len(plate_list))})")
        params.extend(plate_list)
    if since is not None:
        clauses.append("ts >= ?")
        params.append(since)
    if until is not None:
        clauses.append("ts < ?")
        params.append(until)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def export_registrations(
    store: SqliteEventStore, *, since: float | None = None, until: float | None = None, ids: Iterable[str] = (), plates: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """Return the selected registrations as recorded (and published), oldest first."""
    where, params = registrations_where(since, until, ids, plates)
    return [json.loads(r["record"]) for r in store._query(f"SELECT record FROM registrations{where} ORDER BY ts, id", params)]


def erase_registrations(
    store: SqliteEventStore,
    *,
    since: float | None = None,
    until: float | None = None,
    ids: Iterable[str] = (),
    plates: Iterable[str] = (),
    include_pending: bool = False,
    actor: str = "stationctl registrations erase",
    note: str = "",
) -> dict[str, Any]:
    """Delete the selected registrations and every outbox copy of them; audited in ``data_audit``.

    Without ``include_pending`` a registration whose message is still undelivered is kept and
    listed under ``held``; with it, the message is deleted too and never sent. Refuses to erase
    everything without a criterion (``ValueError``).
    """
    id_list, plate_list = sorted(set(ids)), sorted(set(plates))
    if since is None and until is None and not id_list and not plate_list:
        raise ValueError("give a time range, registration ids or plates")

    def tx(conn: sqlite3.Connection) -> dict[str, Any]:
        pending = _pending(conn)[1]
        where, params = registrations_where(since, until, id_list, plate_list)
        rows = conn.execute(f"SELECT id, registration_id FROM registrations{where}", params).fetchall()
        held = sorted(r for _i, r in rows if r in pending)
        chosen = rows if include_pending else [(i, r) for i, r in rows if r not in pending]
        wanted = {r for _i, r in chosen}
        counts: dict[str, Any] = {"registrations": 0, "outbox": 0}
        for i in range(0, len(chosen), 500):
            chunk = [rowid for rowid, _r in chosen[i : i + 500]]
            counts["registrations"] += conn.execute(f"DELETE FROM registrations WHERE id IN ({','.join('?' * len(chunk))})", chunk).rowcount
        if wanted:
            out_ids = [
                oid
                for oid, rid in conn.execute("SELECT id, json_extract(CAST(payload AS TEXT), '$.registration.registration_id') FROM outbox")
                if rid in wanted
            ]
            for i in range(0, len(out_ids), 500):
                chunk = out_ids[i : i + 500]
                counts["outbox"] += conn.execute(f"DELETE FROM outbox WHERE id IN ({','.join('?' * len(chunk))})", chunk).rowcount
        counts["held"] = [] if include_pending else held
        # The plates themselves are not kept in the audit: it says that data went and why, not what it was.
        criteria = {
            "since": since,
            "until": until,
            "registration_ids": id_list,
            "plates": len(plate_list),
            "include_pending": include_pending,
        }
        audit(conn, actor, criteria, counts, note)
        return counts

    return store.write_transaction(tx)
