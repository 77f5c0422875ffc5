"""Deferred outbox deletes (card wear): delivered rows leave with the next screening's write, never a loss.

Real SQLite files; the write-ahead log's growth is the bytes a transaction costs the card.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from station.domain.model import GateAction, GateResult
from station.store.events import SqliteEventStore
from station.store.outbox import OutboxBounds
from tests.support.events import make_event

FRAME = 4096 + 24


def open_store(path: Path) -> SqliteEventStore:
    store = SqliteEventStore(path, station_id="st-01", site="gate-a")
    store._conn.execute("PRAGMA wal_autocheckpoint=0")  # the WAL only grows: its size is the bytes written
    store.begin_session()
    return store


def wal_size(path: Path) -> int:
    return Path(f"{path}-wal").stat().st_size


def rows_in_file(path: Path) -> int:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as other:  # another process's view
        return int(other.execute("SELECT count(*) FROM outbox").fetchone()[0])


def deliver(store: SqliteEventStore) -> list[int]:
    """Publish and acknowledge every pending row the way the pump does (sent, then acked, deferred)."""
    ids = [r.id for r in store.outbox_pending(100)]
    store.outbox_settle(ids, ids, defer=True)
    return ids


def test_delivered_rows_leave_every_read_at_once_and_the_file_with_the_next_screening(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    store = open_store(path)
    store.record(make_event(1, alarm=True))  # a screening and its alarm message
    before = wal_size(path)
    assert len(deliver(store)) == 2
    assert wal_size(path) == before, "a deferred settle wrote to the card"
    assert store.outbox_stats()["pending"] == 0 and store.outbox_pending(10) == [] and store.outbox_rows_after(0) == []
    assert rows_in_file(path) == 2  # still in the file, for now
    store.record(make_event(2))
    assert rows_in_file(path) == 1, "the next screening's write did not take the delivered rows with it"
    assert [r.payload.count(b"ev-000002") for r in store.outbox_pending(10)] == [1]
    store.close()


def test_a_deferred_delete_costs_no_frame_of_its_own(tmp_path: Path) -> None:
    def frames_per_screening(defer: bool) -> float:
        path = tmp_path / f"defer-{defer}" / "events.sqlite3"
        store = open_store(path)
        for i in range(40):  # warm: the tables' last pages exist
            store.record(make_event(i))
            deliver(store)
        store.outbox_flush_deferred()
        start = wal_size(path)
        for i in range(40, 60):
            event = make_event(i)
            store.record(event)
            store.record_gate_result(GateResult(event.event_id, GateAction.OPEN, True, "ok", time.monotonic()))
            ids = [r.id for r in store.outbox_pending(10)]
            store.outbox_settle(ids, ids, defer=defer)
        used = (wal_size(path) - start) / FRAME / 20
        store.close()
        return used

    now, deferred = frames_per_screening(False), frames_per_screening(True)
    assert deferred <= now - 2.5, f"frames per screening: {now:.1f} settled at once, {deferred:.1f} deferred"


def test_a_quiet_lane_flushes_after_the_wait_and_close_flushes_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    store = open_store(path)
    store.record(make_event(1))
    deliver(store)
    assert store.outbox_flush_deferred(older_than_s=60) is False
    assert rows_in_file(path) == 1
    assert store.outbox_flush_deferred() is True
    assert rows_in_file(path) == 0
    store.record(make_event(2))
    deliver(store)
    store.close()
    assert rows_in_file(path) == 0, "close left delivered rows behind (they would be sent again)"


def test_a_row_still_in_flight_keeps_its_attempt_count_written_now(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    store = open_store(path)
    store.record(make_event(1))
    store.record(make_event(2))
    first, second = (r.id for r in store.outbox_pending(10))
    store.outbox_settle([first], [first, second], defer=True)  # second published, not yet acknowledged
    assert [r.attempts for r in store.outbox_pending(10)] == [1]
    assert rows_in_file(path) == 1, "the acknowledged row went with the attempt count's write"
    store.close()


def test_bounds_within_limits_write_nothing_and_never_count_delivered_rows(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    store = open_store(path)
    store.outbox_bounds = OutboxBounds(max_rows=3, max_bytes=10_000_000, max_age_s=3600)
    for i in range(3):
        store.record(make_event(i))
    deliver(store)
    store.record(make_event(3))
    before = wal_size(path)
    assert store.outbox_enforce_bounds() == 0
    assert wal_size(path) == before, "a bounds check within its limits wrote a transaction"
    for i in range(4, 8):
        store.record(make_event(i))
    assert store.outbox_enforce_bounds() == 2  # 5 undelivered, bound 3: the 2 oldest undelivered go
    assert store.outbox_stats()["dropped"] == 2
    store.close()
