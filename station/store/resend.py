"""Send a ``seq`` range again: the kept messages of those records back into the outbox, same ``msg_id``, same payload.

The centre asks (a signed ``resend`` command, station/link/handlers.py) when a gap in a station's
numbers stays open: a broker restart that dropped a shared subscription acknowledged messages to the
station and delivered them to nobody (docs/centre.md "The broker restart hole"). Every numbered
record's messages are noted in ``seq_messages`` when they are first queued (station/store/outbox.py
``keep``); here they are queued again at :data:`PRIORITY_RESEND`, behind every live message, with
their original ``msg_id``, so the centre drops any copy it already has.

The work is split into write transactions of :data:`BATCH_SEQS` numbers, so a screening's
``record()`` waits at most one batch, and it stops where the outbox would pass half of a bound: a
re-send must never make the bounds drop live rows (``no_room`` — the centre asks again later).
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from station.store.outbox import KEEP_TABLES, PENDING, PRIORITY_RESEND

if TYPE_CHECKING:
    from station.store.events import SqliteEventStore

MAX_RANGE = 5000
"""Most numbers one ``resend`` may name."""

BATCH_SEQS = 200
"""Numbers re-queued per write transaction."""

ROOM_FRACTION = 0.5
"""A re-send fills the outbox up to this fraction of a bound at most, leaving the rest to live records."""

_RECORD_JOIN = " ".join(f"LEFT JOIN {table} ON {table}.id = m.{column}" for table, column in KEEP_TABLES.items())
_RECORD = "coalesce(" + ", ".join(f"{table}.record" for table in KEEP_TABLES) + ")"


@dataclass
class ResendResult:
    """What one ``resend`` did, in messages (``requeued``, ``already_pending``, ``no_room``) and numbers (``not_found``)."""

    first_seq: int
    last_seq: int
    requeued: int = 0
    already_pending: int = 0  # the original is still in the outbox (never acknowledged): it goes anyway
    not_found: int = 0  # numbers with no record kept: purged by retention, erased, or made before messages were kept
    no_room: int = 0  # left out so the outbox stays within half its bounds; ask again
    seqs_found: int = 0

    def as_dict(self) -> dict[str, Any]:
        """Return the counts as the command's result."""
        return asdict(self)


def _room(conn: sqlite3.Connection, store: SqliteEventStore) -> tuple[float, float]:
    """Return how many more rows and payload bytes a re-send may add (infinite without bounds)."""
    bounds = store.outbox_bounds
    if bounds is None:
        return float("inf"), float("inf")
    rows, size = conn.execute(f"SELECT count(*), coalesce(sum(length(payload)), 0) FROM outbox WHERE {PENDING}").fetchone()
    return bounds.max_rows * ROOM_FRACTION - rows, bounds.max_bytes * ROOM_FRACTION - size


def requeue_range(store: SqliteEventStore, first_seq: int, last_seq: int) -> ResendResult:
    """Queue the kept messages numbered ``first_seq``..``last_seq`` again; return the counts.

    The caller has checked the range (``1 <= first <= last``, at most :data:`MAX_RANGE` numbers).
    """
    result = ResendResult(first_seq, last_seq)

    def batch(lo: int, hi: int) -> None:
        def tx(conn: sqlite3.Connection) -> None:
            rows = conn.execute(
                f"SELECT m.seq, m.msg_id, m.topic, m.head, {_RECORD} FROM seq_messages m {_RECORD_JOIN} "
                f"WHERE m.seq BETWEEN ? AND ? ORDER BY m.seq, m.id",
                (lo, hi),
            ).fetchall()
            found = {seq for seq, *_rest, record in rows if record is not None}
            result.seqs_found += len(found)
            result.not_found += (hi - lo + 1) - len(found)
            room_rows, room_bytes = _room(conn, store)
            now_ms = int(time.time() * 1000)
            for _seq, msg_id, topic, head, record in rows:
                if record is None:
                    continue  # a record row gone without its cascade (a recovered file): counted as not found
                payload = f"{head}{record}}}".encode()
                if room_rows < 1 or room_bytes < len(payload):
                    result.no_room += 1
                    continue
                cur = conn.execute(
                    "INSERT OR IGNORE INTO outbox(msg_id, topic, payload, qos, priority, created_at) VALUES (?, ?, ?, 1, ?, ?)",
                    (msg_id, topic, payload, PRIORITY_RESEND, now_ms),
                )
                if cur.rowcount:
                    result.requeued += 1
                    room_rows -= 1
                    room_bytes -= len(payload)
                else:
                    result.already_pending += 1

        store.write_transaction(tx)

    for lo in range(first_seq, last_seq + 1, BATCH_SEQS):
        batch(lo, min(lo + BATCH_SEQS - 1, last_seq))
    if result.requeued:
        store._notify_listeners()  # wake the outbox pump
    return result
