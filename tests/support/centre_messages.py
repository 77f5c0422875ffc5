"""Station messages for centre tests, made by the real station store: a SQLite event log and its outbox rows.

``station_outbox(path, n, …)`` records ``n`` screenings (every ``alarm_every``-th a fever alarm) in a
real ``SqliteEventStore`` and returns its outbox rows as ``(topic, payload)`` pairs: exactly what the
station's pump would publish (envelope, ``seq``, ``session``, ``msg_id``).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from station.centre.mqtt import Delivery
from station.store.events import OutboxBounds, SqliteEventStore
from tests.support.events import make_event


def station_outbox(
    path: Path,
    n: int,
    *,
    alarm_every: int = 0,
    site: str = "gate-a",
    station: str = "st-01",
    ts: float | None = None,
    drop_to_rows: int | None = None,
) -> list[tuple[str, bytes]]:
    """Record ``n`` events in a real station store and return its pending outbox messages (oldest first).

    ``drop_to_rows``: enforce an outbox row bound first (the oldest ordinary rows go, an overflow alarm is added).
    """
    store = SqliteEventStore(path, station_id=station, site=site)
    store.begin_session()
    for i in range(n):
        event = make_event(i, alarm=bool(alarm_every) and i % alarm_every == alarm_every - 1, ts=ts)
        store.record(event)
    if drop_to_rows is not None:
        store.outbox_bounds = OutboxBounds(max_rows=drop_to_rows, max_bytes=10**9, max_age_s=10**9)
        store.outbox_enforce_bounds()
    store.close()
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT topic, payload FROM outbox WHERE acked_at IS NULL AND dropped_at IS NULL ORDER BY id").fetchall()
    return [(t, bytes(p)) for t, p in rows]


def deliveries(messages: list[tuple[str, bytes]], start_mid: int = 1, qos: int = 1) -> list[Delivery]:
    """Return the messages as the subscriber would hand them over (one connection, increasing packet ids)."""
    import time

    now, mono = time.time(), time.monotonic()
    return [Delivery(t, p, start_mid + i, qos, 1, now, mono) for i, (t, p) in enumerate(messages)]
