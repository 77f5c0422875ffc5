"""Records stamped while the wall clock was not synchronised get a correction once it is, never a rewrite.

A ``ClockWatch`` over a clock the test steps, and the real SQLite store: the records keep their
``ts`` and ``clock_synced`` false; one ``clock_corrections`` row (and its ``events/clock`` outbox
message) per segment of constant offset names them by ``seq`` range and id with the offset to add.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest

from station.ops.clock import ClockWatch, SystemClock
from station.store.events import SqliteEventStore
from tests.support.clocks import EPOCH_1970, ManualClock
from tests.support.events import make_event

TRUE_NOW = 1_780_000_000.0  # the time NTP will say it is (2026)


@pytest.fixture
def store(tmp_path: Path):
    s = SqliteEventStore(tmp_path / "events.sqlite3", station_id="st-01", site="gate-a")
    s.begin_session()
    yield s
    s.close()


def stamp(store: SqliteEventStore, clock: ClockWatch, i: int) -> str:
    """Record event ``i`` the way the pipeline stamps it: wall time and sync state read from the clock."""
    event = dataclasses.replace(make_event(i), wall_ts=clock.wall(), clock_synced=clock.synced())
    store.record(event)
    return event.event_id


def clock_messages(store: SqliteEventStore) -> list[dict]:
    return [json.loads(r.payload) for r in store.outbox_rows_after(0) if r.topic.endswith("/events/clock")]


def test_boot_at_1970_then_ntp_sync_writes_one_correction_with_the_offset_seq_range_and_ids(store):
    manual = ManualClock(wall=EPOCH_1970, mono=50.0, synced=False)
    clock = ClockWatch(manual, step_threshold_s=1.0)
    clock.attach(store)
    before = [stamp(store, clock, i) for i in range(3)]  # unsynced: stamped at 1970
    manual.advance(30.0)
    before.append(stamp(store, clock, 3))
    assert clock.check() == 0, "nothing to correct while the clock is still unsynced"
    # NTP steps the clock to the true time and the kernel says it is synchronised.
    manual.step(TRUE_NOW - manual.wall_s)
    manual.is_synced = True
    after = stamp(store, clock, 4)
    assert clock.check() == 1
    assert clock.check() == 0, "written once"

    (corr,) = store.clock_corrections()
    assert corr["offset_ms"] == round((TRUE_NOW - (EPOCH_1970 + 30.0)) * 1000)
    assert corr["event_ids"] == before and after not in corr["event_ids"]
    assert (corr["seq_first"], corr["seq_last"]) == (1, 4) and corr["count"] == 4 and corr["ids_complete"]
    # The original rows are untouched: 1970 and clock_synced false, the synced one true.
    for eid in before:
        ev = store.event(eid)
        assert ev is not None and ev["clock_synced"] is False and ev["ts"] < EPOCH_1970 + 60
    assert store.event(after)["clock_synced"] is True  # type: ignore[index]
    # The correction goes to the centre like every event: through the outbox, exempt from the bounds.
    (msg,) = clock_messages(store)
    assert msg["correction"] == corr and msg["clock_synced"] is True and msg["seq"] == 5
    assert [r.priority for r in store.outbox_rows_after(0) if r.topic.endswith("/events/clock")] == [1]
    assert clock.state()["corrections"] == 1 and clock.state()["synced"] is True


def test_a_step_while_unsynced_starts_a_segment_of_its_own_with_its_own_offset(store):
    manual = ManualClock(wall=TRUE_NOW - 86_400.0, mono=10.0, synced=False)  # fake-hwclock: a day behind
    clock = ClockWatch(manual, step_threshold_s=1.0)
    clock.attach(store)
    day_behind = [stamp(store, clock, i) for i in range(2)]
    manual.advance(5.0)
    manual.step(+3 * 3600.0)  # someone sets the date by hand: now 21 h behind
    three_later = [stamp(store, clock, 10 + i) for i in range(2)]
    manual.advance(5.0)
    manual.step(-1 * 3600.0)  # and back an hour: 22 h behind
    hour_back = [stamp(store, clock, 20)]
    manual.advance(5.0)
    manual.step(TRUE_NOW + 15.0 - manual.wall_s)  # NTP: the true time
    manual.is_synced = True
    assert clock.check() == 3
    by_first = {c["event_ids"][0]: c for c in store.clock_corrections()}
    assert by_first[day_behind[0]]["event_ids"] == day_behind
    assert by_first[day_behind[0]]["offset_ms"] == 86_400_000
    assert by_first[three_later[0]]["event_ids"] == three_later
    assert by_first[three_later[0]]["offset_ms"] == 21 * 3_600_000
    assert by_first[hour_back[0]]["event_ids"] == hour_back
    assert by_first[hour_back[0]]["offset_ms"] == 22 * 3_600_000
    assert [(c["seq_first"], c["seq_last"]) for c in reversed(store.clock_corrections())] == [(1, 2), (3, 4), (5, 5)]
    assert len(clock.steps) == 3


def test_a_record_stamped_unsynced_but_written_after_the_sync_gets_a_late_correction(store):
    manual = ManualClock(wall=EPOCH_1970, mono=10.0, synced=False)
    clock = ClockWatch(manual)
    clock.attach(store)
    stamp(store, clock, 1)
    held = dataclasses.replace(make_event(2), wall_ts=clock.wall(), clock_synced=clock.synced())  # decided, not yet written (disk full)
    manual.step(TRUE_NOW - manual.wall_s)
    manual.is_synced = True
    assert clock.check() == 1
    store.record(held)  # written once space came back
    assert clock.check() == 1
    late = store.clock_corrections()[0]
    assert late["event_ids"] == [held.event_id] and late["late"] is True and late["seq_first"] is None
    assert late["offset_ms"] == round((TRUE_NOW - EPOCH_1970) * 1000)


def test_vehicle_visit_and_registration_records_stamped_unsynced_are_corrected_too(store):
    from station.store import visits

    manual = ManualClock(synced=False)
    clock = ClockWatch(manual)
    clock.attach(store)
    eid = stamp(store, clock, 1)
    store.record_vehicle(
        {"vehicle_id": "v-1", "ts": clock.wall(), "type": "outsider_vehicle", "plate": "浙A12345", "clock_synced": clock.synced()}
    )
    visits.record_visit(
        store,
        {"visit_id": "vis-1", "ts": clock.wall(), "closed_ts": clock.wall(), "kind": "outsider_vehicle", "plate": "浙A12345",
         "occupants": [{"event_id": eid}], "clock_synced": clock.synced()},
    )  # fmt: skip
    visits.record_registration(
        store,
        {"registration_id": "reg-1", "ts": clock.wall(), "plate": "浙A12345", "reason": "visit", "destination": "3号楼",
         "phone_hash": "5e0f", "phone_last4": "8000", "operator": "Zhao", "clock_synced": clock.synced()},
    )  # fmt: skip
    manual.step(1000.0)
    manual.is_synced = True
    clock.check()
    (corr,) = store.clock_corrections()
    assert corr["offset_ms"] == 1_000_000 and corr["count"] == 4 and (corr["seq_first"], corr["seq_last"]) == (1, 4)
    assert (corr["event_ids"], corr["vehicle_ids"], corr["visit_ids"], corr["registration_ids"]) == ([eid], ["v-1"], ["vis-1"], ["reg-1"])


def test_a_clock_synced_from_the_start_writes_no_correction_and_a_step_after_sync_is_only_noted(store):
    manual = ManualClock(wall=TRUE_NOW, synced=True)
    clock = ClockWatch(manual)
    clock.attach(store)
    stamp(store, clock, 1)
    manual.step(-7200.0)
    stamp(store, clock, 2)
    assert clock.check() == 0 and store.clock_corrections() == []
    assert clock.steps and clock.steps[0]["delta_s"] == -7200.0 and clock.steps[0]["synced"] is True


def test_slewing_below_the_threshold_is_not_a_step(store):
    manual = ManualClock(synced=False)
    clock = ClockWatch(manual, step_threshold_s=1.0)
    clock.attach(store)
    for _ in range(50):
        manual.advance(1.0)
        manual.step(0.0005)  # NTP slews at most 500 ppm
        clock.wall()
    assert clock.steps == [] and clock.state()["unsynced_segments"] == 1


def test_a_store_that_refuses_the_write_gets_the_correction_at_a_later_check(store, monkeypatch):
    manual = ManualClock(synced=False)
    clock = ClockWatch(manual)
    clock.attach(store)
    stamp(store, clock, 1)
    manual.step(500.0)
    manual.is_synced = True
    real = store.record_clock_correction
    monkeypatch.setattr(store, "record_clock_correction", lambda c: (_ for _ in ()).throw(OSError(30, "Read-only file system")))
    assert clock.check() == 0
    monkeypatch.setattr(store, "record_clock_correction", real)
    assert clock.check() == 1
    assert store.clock_corrections()[0]["offset_ms"] == 500_000


def test_the_system_clock_is_never_synced_before_the_floor_whatever_the_kernel_says(tmp_path):
    flag = tmp_path / "synchronized"
    assert SystemClock(str(flag), kernel_status=lambda: True, wall_floor=time.time() + 3600).synced() is False
    assert SystemClock(str(flag), kernel_status=lambda: True).synced() is True
    assert SystemClock(str(flag), kernel_status=lambda: None).synced() is False
    flag.touch()
    assert SystemClock(str(flag), kernel_status=lambda: False).synced() is True


def test_a_daemon_restarted_before_the_sync_still_corrects_what_its_earlier_run_stamped(store):
    manual = ManualClock(wall=EPOCH_1970, mono=100.0, synced=False)
    first = ClockWatch(manual, boot=lambda: "boot-a")
    first.attach(store)
    before = [stamp(store, first, i) for i in range(2)]
    first.check()  # saves the stretch (the thread does this every second)
    # The daemon restarts (same boot: the same monotonic clock); meanwhile the clock was stepped by hand.
    manual.advance(20.0)
    manual.step(3600.0)
    second = ClockWatch(manual, boot=lambda: "boot-a")
    second.attach(store)
    after = [stamp(store, second, 10 + i) for i in range(2)]
    manual.step(TRUE_NOW - manual.wall_s)
    manual.is_synced = True
    assert second.check() == 2
    by_first = {c["event_ids"][0]: c for c in store.clock_corrections()}
    assert by_first[before[0]]["event_ids"] == before and by_first[after[0]]["event_ids"] == after
    assert by_first[before[0]]["offset_ms"] == round((TRUE_NOW - EPOCH_1970 - 20.0) * 1000)
    assert by_first[after[0]]["offset_ms"] == round((TRUE_NOW - EPOCH_1970 - 3620.0) * 1000)
    assert store.clock_state() is None, "forgotten once corrected"


def test_stretches_saved_in_an_earlier_boot_are_dropped_not_misapplied(store):
    manual = ManualClock(synced=False)
    first = ClockWatch(manual, boot=lambda: "boot-a")
    first.attach(store)
    stamp(store, first, 1)
    first.check()
    assert store.clock_state() is not None
    second = ClockWatch(ManualClock(wall=TRUE_NOW, mono=5.0, synced=True), boot=lambda: "boot-b")
    second.attach(store)
    assert second.check() == 0 and store.clock_corrections() == [] and store.clock_state() is None


def test_retention_ages_a_record_stamped_at_1970_by_its_correction_not_by_its_ts(store):
    from station.store.retention import DAY_S, purge_store

    manual = ManualClock(wall=TRUE_NOW - 200 * DAY_S, synced=True)
    clock = ClockWatch(manual)
    clock.attach(store)
    old_synced = stamp(store, clock, 1)  # 200 days ago, clock right: past the 90-day cutoff
    manual.is_synced = False
    manual.step(-(manual.wall_s - EPOCH_1970))  # a reboot to 1970 and an unsynced stretch ... (one store, for brevity)
    old_unsynced = stamp(store, clock, 2)  # stamped between two trusted records that are both past the cutoff
    manual.is_synced = True
    manual.step(TRUE_NOW - 100 * DAY_S - manual.wall_s)
    stamp(store, clock, 3)  # 100 days ago, right
    clock = ClockWatch(ManualClock(wall=EPOCH_1970 + 5.0, mono=50.0, synced=False))
    clock.attach(store)
    recent_corrected = stamp(store, clock, 4)  # today, stamped at 1970
    clock.inner.step(TRUE_NOW - clock.inner.wall_s)  # type: ignore[attr-defined]
    clock.inner.is_synced = True  # type: ignore[attr-defined]
    clock.check()
    recent_uncorrected = dataclasses.replace(make_event(5), wall_ts=EPOCH_1970 + 9.0, clock_synced=False)
    store.record(recent_uncorrected)  # no correction names it, and no later trusted record is old
    store.outbox_ack_many(r.id for r in store.outbox_rows_after(0))  # all delivered: nothing held for the centre
    result = purge_store(store, 90, now=TRUE_NOW)
    assert store.event(old_synced) is None and store.event(old_unsynced) is None, "old records go, 1970 or not"
    assert store.event(recent_corrected) is not None, "today's record stamped at 1970 stays: its correction says today"
    assert store.event(recent_uncorrected.event_id) is not None, "its age is unknown and nothing says it is old: it stays"
    assert result.events == 3


def test_the_outbox_age_bound_never_drops_a_row_written_by_a_clock_at_1970(store):
    from station.store import outbox

    store.outbox_bounds = outbox.OutboxBounds(max_rows=1000, max_bytes=10**9, max_age_s=86_400.0)

    def row(now: float, n: int) -> None:
        store.write_transaction(
            lambda conn: outbox.enqueue(
                conn,
                store._sender(),
                topic=store.topic_screening,
                priority=outbox.PRIORITY_EVENT,
                seq=n,
                ts=now,
                clock_synced=now > EPOCH_1970 + 86_400,
                body={"event": {"n": n}},
                now=now,
            )
        )

    row(EPOCH_1970, 1)  # written before NTP: no known age
    row(TRUE_NOW - 2 * 86_400.0, 2)  # written by a right clock two days ago: past the one-day bound
    row(TRUE_NOW, 3)
    assert store.outbox_enforce_bounds(now=TRUE_NOW) == 1
    assert [json.loads(r.payload)["event"]["n"] for r in store.outbox_rows_after(0) if r.topic == store.topic_screening] == [1, 3]


def test_a_store_that_cannot_be_read_never_makes_a_clock_reading_raise(tmp_path):
    broken = SqliteEventStore(tmp_path / "e.sqlite3", station_id="st-01", site="gate-a")
    manual = ManualClock(synced=False)
    clock = ClockWatch(manual)
    clock.attach(broken)
    broken.close()  # every read now raises StoreError
    manual.step(3600.0)
    assert clock.wall() == manual.wall_s  # the step is seen; the executor stamping this record is not disturbed
    manual.is_synced = True
    assert clock.synced() is True and len(clock.steps) == 1
