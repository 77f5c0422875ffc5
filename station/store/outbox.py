"""The transactional outbox: the message envelope, and the ``outbox`` rows the pump delivers.

A record and the messages that announce it are written in one transaction (:func:`enqueue` runs
inside the caller's), so after a crash or power cut either both exist or neither does, and the
outbox pump (``station.link.sync``) delivers what is in the table without consulting another store.

Every message carries the same envelope: ``schema``, ``msg_id`` (the idempotency key), station and
site, ``seq`` (per station, never reused) and ``session`` (one per daemon start), so the back end can
detect gaps and restarts (Sparkplug's ``seq``/``bdSeq``). Rows leave the outbox only when the broker
acknowledged them (PUBACK): delivery is at-least-once and consumers de-duplicate by ``msg_id``.

The functions here take the store's connection and run under its lock; the store
(``station.store.events.SqliteEventStore``) owns the transactions.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from enum import Enum
from typing import Any

from station.ops.clock import WALL_FLOOR
from station.store.meta import add_to_meta, meta_int

log = logging.getLogger("station.store.outbox")

PAYLOAD_SCHEMA = 1
"""Version of the JSON envelope published for each outbox row (the ``schema`` key)."""

PRIORITY_ALARM = 0
"""Outbox priority of alarm messages. Priorities 0-1 are exempt from any capacity policy."""

PRIORITY_AUDIT = 1
"""Outbox priority of audit records of actions carried out: exempt from the bounds, like alarms."""

PRIORITY_EVENT = 5
"""Outbox priority of ordinary screening messages."""

PRIORITY_RESEND = 6
"""Outbox priority of records sent again on the centre's ``resend`` command: behind every live message."""

KEEP_TABLES = {"events": "event_row", "vehicles": "vehicle_row", "visits": "visit_row", "registrations": "registration_row"}
"""Record tables whose messages are kept for a re-send (``seq_messages``), and the column naming the row."""

PENDING = "acked_at IS NULL AND dropped_at IS NULL"
"""SQL condition of a row still to be delivered."""

_ORDINARY = f"{PENDING} AND priority > {PRIORITY_AUDIT}"  # rows the bounds may drop
_ROW_COLUMNS = "id, msg_id, topic, payload, qos, priority, created_at, attempts"
# Re-sent copies (PRIORITY_RESEND) go before live rows, the oldest first: the centre can ask for them again.
_DROP_ORDER = "priority DESC, id"


@dataclass(frozen=True, slots=True)
class OutboxBounds:
    """Capacity of the outbox (Kura's ``store.capacity``, ThingsBoard's TTL).

    Beyond any bound the oldest *ordinary* rows are dropped; alarm rows (priority <= 1) never are.
    """

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


def new_msg_id() -> str:
    """Return a new UUIDv7-layout id as 32 hex digits: 48-bit unix ms, version 7, 74 random bits.

    Time-ordered ids keep the ``msg_id`` index append-mostly; uniqueness comes from the random
    bits, so a wall clock that steps back (no RTC before NTP) cannot produce duplicates.
    """
    ms = time.time_ns() // 1_000_000 & ((1 << 48) - 1)
    rand = secrets.randbits(74)
    value = (ms << 80) | (0x7 << 76) | ((rand >> 62) << 64) | (0b10 << 62) | (rand & ((1 << 62) - 1))
    return f"{value:032x}"


@dataclass(frozen=True, slots=True)
class Sender:
    """Who the messages come from: the envelope fields that are the same for every message of a session."""

    station_id: str
    site: str
    session: int
    new_msg_id: Callable[[], str] = new_msg_id
    """Source of idempotency keys (the store passes its own, which tests override to inject faults)."""


def jsonable(value: Any) -> Any:
    """Return ``value`` converted into plain JSON types.

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
        return jsonable(value.value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    tolist = getattr(value, "tolist", None)  # numpy scalars and arrays
    if callable(tolist):
        return jsonable(tolist())
    raise TypeError(f"value of type {type(value).__name__} is not JSON-serialisable")


def compact_json(value: Any) -> str:
    """Return the compact JSON text of a value already passed through :func:`jsonable`."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def enqueue(
    conn: sqlite3.Connection,
    sender: Sender,
    *,
    topic: str,
    priority: int,
    seq: int,
    ts: Any,
    clock_synced: bool | None,
    body: Mapping[str, Any],
    now: float,
    keep: tuple[str, int] | None = None,
) -> str:
    """Queue one message: the envelope plus ``body``, inside the caller's transaction; return its ``msg_id``.

    ``body`` must already be JSON-able (:func:`jsonable`); its keys follow the envelope's. ``keep``
    (record table, row id) also notes the message in ``seq_messages`` so it can be sent again with the
    same ``msg_id`` (:mod:`station.store.resend`): ``body`` is then the one record stored in that row.
    """
    msg_id = sender.new_msg_id()
    payload = {
        "schema": PAYLOAD_SCHEMA,
        "msg_id": msg_id,
        "station_id": sender.station_id,
        "site": sender.site,
        "seq": seq,
        "session": sender.session,
        "ts": ts,
        "clock_synced": clock_synced,
        **body,
    }
    text = compact_json(payload)
    conn.execute(
        "INSERT INTO outbox(msg_id, topic, payload, qos, priority, created_at) VALUES (?, ?, ?, 1, ?, ?)",
        (msg_id, topic, text.encode("utf-8"), priority, int(now * 1000)),
    )
    if keep is not None:
        _keep(conn, keep, seq=seq, msg_id=msg_id, topic=topic, text=text, body=body)
    return msg_id


def _keep(
    conn: sqlite3.Connection, keep: tuple[str, int], *, seq: int, msg_id: str, topic: str, text: str, body: Mapping[str, Any]
) -> None:
    """Note one message in ``seq_messages``: its payload up to the record, which the record's own row holds."""
    table, row = keep
    record = compact_json(next(iter(body.values()))) if len(body) == 1 else ""
    if not record or not text.endswith(record + "}"):  # by construction it does; never fail the record over it
        log.error("message not kept for a re-send: its body is not one record topic=%s seq=%d", topic, seq)
        return
    conn.execute(
        f"INSERT INTO seq_messages(seq, msg_id, topic, head, {KEEP_TABLES[table]}) VALUES (?, ?, ?, ?, ?)",
        (seq, msg_id, topic, text[: len(text) - len(record) - 1], row),
    )


def stats(conn: sqlite3.Connection, bounds: OutboxBounds | None, delivered_ids: AbstractSet[int] = frozenset()) -> dict[str, Any]:
    """Return the depth of the outbox: pending rows, age of the oldest (s), payload bytes, alarms, drops.

    ``delivered_ids`` are rows acknowledged whose DELETE has not been written yet: not counted.
    """
    pending, oldest, size, alarms = conn.execute(
        f"SELECT count(*), min(created_at), coalesce(sum(length(payload)), 0), "
        f"coalesce(sum(priority <= {PRIORITY_ALARM}), 0) FROM outbox WHERE {PENDING} "
        f"AND id NOT IN (SELECT value FROM json_each(?))",
        (json.dumps(sorted(delivered_ids)),),
    ).fetchone()
    # The wall clock may step (no RTC until NTP syncs): never report a negative age.
    age = max(0.0, time.time() - oldest / 1000.0) if oldest is not None else 0.0
    dropped = conn.execute("SELECT value FROM meta WHERE key = 'outbox_dropped'").fetchone()
    return {
        "pending": int(pending),
        "oldest_age_s": age,
        "bytes": int(size),
        "alarms_pending": int(alarms),
        "dropped": int(dropped[0]) if dropped else 0,
        "bounds_alarm": _bounds_alarm(bounds, int(pending), int(size), age),
    }


def _bounds_alarm(bounds: OutboxBounds | None, pending: int, size: int, age: float) -> str | None:
    """Name the bounds the outbox is near or over, or return None."""
    if bounds is None:
        return None
    near = [
        name
        for name, value, limit in (("rows", pending, bounds.max_rows), ("bytes", size, bounds.max_bytes), ("age", age, bounds.max_age_s))
        if value >= bounds.NEAR * limit
    ]
    return f"outbox near or over its limit: {', '.join(near)}" if near else None


def enforce_bounds(conn: sqlite3.Connection, bounds: OutboxBounds, sender: Sender, alarm_topic: str, now: float) -> tuple[int, list[str]]:
    """Drop the oldest ordinary rows beyond ``bounds`` (re-sent copies first), inside the caller's transaction.

    Returns how many rows went and which bounds were exceeded. A drop is counted
    (``meta.outbox_dropped``) and announced by an alarm-priority message on ``alarm_topic``
    (``"kind": "outbox_overflow"``), so the command centre learns of the gap. Alarm and audit rows
    are never dropped, even when they alone exceed a bound.
    """
    before = conn.total_changes
    reasons = []
    cutoff_ms = int((now - bounds.max_age_s) * 1000)
    # A row written by a clock that read before WALL_FLOOR (a Pi at 1970 before NTP) has no known age:
    # once the clock is stepped it would look decades old. The row and byte bounds still hold it in.
    conn.execute(f"DELETE FROM outbox WHERE {_ORDINARY} AND created_at >= ? AND created_at < ?", (int(WALL_FLOOR * 1000), cutoff_ms))
    if conn.total_changes > before:
        reasons.append("age")
    n, size = conn.execute(f"SELECT count(*), coalesce(sum(length(payload)), 0) FROM outbox WHERE {PENDING}").fetchone()
    if n > bounds.max_rows:
        mark = conn.total_changes
        conn.execute(
            f"DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE {_ORDINARY} ORDER BY {_DROP_ORDER} LIMIT ?)",
            (n - bounds.max_rows,),
        )
        if conn.total_changes > mark:
            reasons.append("rows")
        size = conn.execute(f"SELECT coalesce(sum(length(payload)), 0) FROM outbox WHERE {PENDING}").fetchone()[0]
    if size > bounds.max_bytes:
        mark = conn.total_changes
        # Every row whose bytes before it (in drop order) are short of the excess: up to and including the one that
        # covers it; nothing when the ordinary rows together cannot cover it (as before re-sent copies existed).
        conn.execute(
            f"DELETE FROM outbox WHERE id IN (SELECT id FROM (SELECT id, length(payload) AS n, sum(length(payload)) OVER "
            f"(ORDER BY {_DROP_ORDER}) AS cum FROM outbox WHERE {_ORDINARY}) WHERE cum - n < ?1) "
            f"AND (SELECT coalesce(sum(length(payload)), 0) FROM outbox WHERE {_ORDINARY}) >= ?1",
            (size - bounds.max_bytes,),
        )
        if conn.total_changes > mark:
            reasons.append("bytes")
    dropped = conn.total_changes - before
    if dropped:
        total = add_to_meta(conn, "outbox_dropped", dropped)
        enqueue(
            conn,
            sender,
            topic=alarm_topic,
            priority=PRIORITY_ALARM,
            seq=meta_int(conn, "seq"),
            ts=now,
            clock_synced=None,
            body={
                "kind": "outbox_overflow",
                "dropped": dropped,
                "dropped_total": total,
                "reasons": reasons,
                "bounds": {"max_rows": bounds.max_rows, "max_bytes": bounds.max_bytes, "max_age_s": bounds.max_age_s},
            },
            now=now,
        )
    return dropped, reasons


def _rows(cursor: sqlite3.Cursor) -> list[OutboxRow]:
    """Return the rows of a query selecting :data:`_ROW_COLUMNS`."""
    return [
        OutboxRow(id=i, msg_id=m, topic=t, payload=bytes(p), qos=q, priority=pr, created_at=c, attempts=a)
        for i, m, t, p, q, pr, c, a in cursor.fetchall()
    ]


def pending(conn: sqlite3.Connection, limit: int, exclude_ids: AbstractSet[int] = frozenset()) -> list[OutboxRow]:
    """Return up to ``limit`` undelivered rows, highest priority first, then oldest first.

    ``exclude_ids`` are rows already in flight (published, PUBACK not yet seen).
    """
    if limit <= 0:
        return []
    return _rows(
        conn.execute(
            f"SELECT {_ROW_COLUMNS} FROM outbox WHERE {PENDING} AND id NOT IN (SELECT value FROM json_each(?)) "
            f"ORDER BY priority, id LIMIT ?",
            (json.dumps(sorted(exclude_ids)), limit),
        )
    )


def rows_after(conn: sqlite3.Connection, after_id: int, limit: int) -> list[OutboxRow]:
    """Return undelivered rows with ``id > after_id`` in local order (for export; pages by id)."""
    return _rows(conn.execute(f"SELECT {_ROW_COLUMNS} FROM outbox WHERE {PENDING} AND id > ? ORDER BY id LIMIT ?", (after_id, limit)))


def settle(conn: sqlite3.Connection, acked_ids: Iterable[int], sent_ids: Iterable[int], now_ms: int) -> int:
    """Delete acknowledged rows and count a publish attempt of sent ones; return how many acknowledged rows existed."""
    sent = [(int(i),) for i in sent_ids]
    if sent:
        conn.executemany("UPDATE outbox SET attempts = attempts + 1, sent_at = ? WHERE id = ?", [(now_ms, i) for (i,) in sent])
    before = conn.total_changes
    conn.executemany("DELETE FROM outbox WHERE id = ?", [(int(i),) for i in acked_ids])
    return conn.total_changes - before
