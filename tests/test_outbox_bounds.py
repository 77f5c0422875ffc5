"""Outbox capacity: beyond its bounds the oldest ordinary rows go, alarms never do, and the drop is
counted, shown and announced (a real SQLite file)."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from station.store.events import OutboxBounds, SqliteEventStore
from tests.support.events import make_event


def _store(tmp_path: Path, bounds: OutboxBounds) -> SqliteEventStore:
    store = SqliteEventStore(tmp_path / "events.db", station_id="st-01", site="gate-a")
    store.begin_session()
    store.outbox_bounds = bounds
    return store


def _topics_and_kinds(path: Path) -> list[tuple[str, str | None, str]]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT topic, payload FROM outbox ORDER BY id").fetchall()
    out = []
    for topic, payload in rows:
        p = json.loads(payload)
        out.append((topic.rsplit("/", 1)[-1], p.get("kind"), (p.get("event") or {}).get("event_id", "")))
    return out


def test_row_bound_drops_oldest_ordinary_rows_keeps_alarms_and_announces(tmp_path: Path) -> None:
    store = _store(tmp_path, OutboxBounds(max_rows=50, max_bytes=10**9, max_age_s=10**6))
    events = [make_event(i, alarm=(i % 10 == 3)) for i in range(60)]  # 60 screening + 6 alarm rows
    for e in events:
        store.record(e)
    assert store.outbox_stats()["bounds_alarm"] == "outbox near or over its limit: rows"
    dropped = store.outbox_enforce_bounds()
    assert dropped == 16
    stats = store.outbox_stats()
    assert stats["dropped"] == 16 and stats["pending"] == 51  # 50 + the overflow alarm itself
    rows = _topics_and_kinds(store.path)
    assert sum(1 for t, k, _ in rows if t == "alarm" and k is None) == 6, "every fever alarm kept"
    kept = [eid for t, _, eid in rows if t == "screening"]
    assert kept == [e.event_id for e in events[16:]], "the oldest ordinary rows went first"
    overflow = [r for r in rows if r[1] == "outbox_overflow"]
    assert len(overflow) == 1
    assert store.outbox_enforce_bounds() == 1, "the overflow alarm is ordinary-free: one more ordinary row goes"
    assert store.outbox_stats()["dropped"] == 17
    store.close()


def test_age_and_byte_bounds_and_alarms_alone_are_never_dropped(tmp_path: Path) -> None:
    store = _store(tmp_path, OutboxBounds(max_rows=10**6, max_bytes=10**9, max_age_s=3600))
    for i in range(5):
        store.record(make_event(i, alarm=(i == 0)))
    assert store.outbox_enforce_bounds(now=time.time() + 60) == 0
    assert store.outbox_enforce_bounds(now=time.time() + 7200) == 5, "4 old screening rows + 1 old fever screening row"
    rows = _topics_and_kinds(store.path)
    assert [(t, k) for t, k, _ in rows] == [("alarm", None), ("alarm", "outbox_overflow")]

    store.outbox_bounds = OutboxBounds(max_rows=10**6, max_bytes=3000, max_age_s=10**6)
    newer = [make_event(i) for i in range(10, 20)]
    for e in newer:
        store.record(e)
    dropped = store.outbox_enforce_bounds()
    rows = _topics_and_kinds(store.path)
    assert [k for t, k, _ in rows if t == "alarm"] == [None, "outbox_overflow", "outbox_overflow"]
    kept = [eid for t, _, eid in rows if t == "screening"]
    assert kept == [e.event_id for e in newer[dropped:]], "the newest ordinary rows are kept"
    with sqlite3.connect(store.path) as conn:
        total = conn.execute("SELECT sum(length(payload)) FROM outbox").fetchone()[0]
        announcement = conn.execute("SELECT length(payload) FROM outbox ORDER BY id DESC LIMIT 1").fetchone()[0]
    assert total - announcement <= 3000 < total - announcement + 1500, "trimmed to the byte bound, not beyond"
    assert store.outbox_stats()["dropped"] == 5 + dropped
    store.close()
