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

RECORD_TABLES = (("events", "event_id"), ("vehicles", "vehicle_id"), ("visits", "visit_id"), ("registrations", "registration_id"))
"""Tables of records stamped with ``ts`` and ``clock_synced`` (each consumes a ``seq``), and their id column."""


def position(conn: sqlite3.Connection) -> StorePosition:
    """Return the newest rowid of each record table and the last ``seq`` handed out."""
    rowids = tuple(int(conn.execute(f"SELECT coalesce(max(id), 0) FROM {table}").fetchone()[0]) for table, _ in RECORD_TABLES)
    return StorePosition(rowids, meta_int(conn, "seq"))


def unsynced_ids(conn: sqlite3.Connection, after: StorePosition, upto: StorePosition | None) -> dict[str, list[tuple[str, float]]]:
    """Return (id, ts) per kind (``event_ids``, ``vehicle_ids``, …) of the records in (after, upto] stamped ``clock_synced`` false."""
    out: dict[str, list[tuple[str, float]]] = {}
    for i, (table, key) in enumerate(RECORD_TABLES):
        sql = f"SELECT {key}, ts FROM {table} WHERE id > ?"
        params: list[Any] = [after.rowids[i] if i < len(after.rowids) else 0]
        if upto is not None and i < len(upto.rowids):
            sql += " AND id <= ?"
            params.append(upto.rowids[i])
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
