"""Clock corrections in the event store: where the store stands, which records were stamped unsynced, the correction rows.

A record stamped while the wall clock was not synchronised keeps its ``ts`` and ``clock_synced``
false for ever; :func:`record` writes a separate ``clock_corrections`` row and its outbox message on
``events/clock`` in one transaction, so the centre (and ``stationctl``) can add ``offset_ms`` to
the records it names. :class:`station.ops.clock.ClockWatch` decides when and with what offset.

The functions take the store's connection and run under its lock, like :mod:`station.store.outbox`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from typing import Any

from station.ops.clock import StorePosition
from station.store.meta import meta_int
from station.store.outbox import PRIORITY_AUDIT, Sender, compact_json, enqueue, jsonable


def position(conn: sqlite3.Connection) -> StorePosition:
    """Return the newest event and vehicle rowids and the last ``seq`` handed out."""
    event = conn.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]
    vehicle = conn.execute("SELECT coalesce(max(id), 0) FROM vehicles").fetchone()[0]
    return StorePosition(int(event), int(vehicle), meta_int(conn, "seq"))


def unsynced_ids(conn: sqlite3.Connection, after: StorePosition, upto: StorePosition | None) -> dict[str, list[tuple[str, float]]]:
    """Return (id, ts) of the events and vehicles in (after, upto] whose record says ``clock_synced`` false."""
    out: dict[str, list[tuple[str, float]]] = {}
    for table, key, lo, hi in (
        ("events", "event_id", after.event_rowid, upto.event_rowid if upto else None),
        ("vehicles", "vehicle_id", after.vehicle_rowid, upto.vehicle_rowid if upto else None),
    ):
        sql = f"SELECT {key}, ts FROM {table} WHERE id > ?"
        params: list[Any] = [lo]
        if hi is not None:
            sql += " AND id <= ?"
            params.append(hi)
        # false, not null: a record that does not say (an old vehicle row) is left alone.
        sql += " AND json_extract(record, '$.clock_synced') = 0 ORDER BY id"
        out[f"{key}s"] = [(str(r[0]), float(r[1])) for r in conn.execute(sql, params)]
    return out


def record(conn: sqlite3.Connection, sender: Sender, topic: str, correction: Mapping[str, Any], now: float) -> int:
    """Write one correction row and its ``events/clock`` message (audit priority: exempt from the outbox bounds)."""
    body = jsonable(dict(correction))
    cur = conn.execute(
        "INSERT INTO clock_corrections(correction_id, offset_ms, seq_first, seq_last, records, record, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            body["correction_id"],
            int(body["offset_ms"]),
            body.get("seq_first"),
            body.get("seq_last"),
            int(body["count"]),
            compact_json(body),
            now,
        ),
    )
    enqueue(
        conn,
        sender,
        topic=topic,
        priority=PRIORITY_AUDIT,
        seq=meta_int(conn, "seq"),  # like audit records: the current seq, none consumed
        ts=now,
        clock_synced=True,
        body={"correction": body},
        now=now,
    )
    return int(cur.lastrowid or 0)


STATE_KEY = "clock_unsynced"
"""``meta`` key of the clock watch's unsynced stretches (JSON), so a daemon restarted before the sync still corrects them."""


def load_state(conn: sqlite3.Connection) -> str | None:
    """Return the saved unsynced stretches (JSON text), or None."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (STATE_KEY,)).fetchone()
    return str(row[0]) if row is not None else None


def save_state(conn: sqlite3.Connection, text: str | None) -> None:
    """Save (or, with None, forget) the unsynced stretches."""
    if text is None:
        conn.execute("DELETE FROM meta WHERE key = ?", (STATE_KEY,))
    else:
        conn.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", (STATE_KEY, text))


def corrections(conn: sqlite3.Connection, limit: int) -> list[dict[str, Any]]:
    """Return the corrections written, newest first, as published."""
    rows = conn.execute("SELECT record FROM clock_corrections ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
    return [json.loads(r[0]) for r in rows]
