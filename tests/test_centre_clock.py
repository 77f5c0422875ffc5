"""Clock corrections at the centre, against a real PostgreSQL: a 1970 boot's records are dated by their correction, never rewritten.

The station side is real: a ``SqliteEventStore`` and a ``ClockWatch`` over a clock the test steps
(tests/test_clock_corrections.py); its outbox rows are what the pump would publish. The writer is the
real ``Ingestor``; the report is ``db.report`` (``station centre report``) and ``reports.period_report``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sqlite3
from pathlib import Path
from zoneinfo import ZoneInfo

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from station.board.auth import hash_password
from station.centre import db, reports, tracing
from station.centre.ingest import Ingestor
from station.centre.parse import ClockCorrection, EventRow, Rejected, parse_message
from station.ops.clock import ClockWatch
from station.store.events import SqliteEventStore
from tests.support.centre_messages import deliveries
from tests.support.clocks import EPOCH_1970, ManualClock
from tests.support.events import make_event
from tests.support.postgres import pg_server, pg_url
from tests.support.waiting import wait_until

__all__ = ["pg_server", "pg_url"]

P = "checkpoint/v1"
UTC = ZoneInfo("UTC")
TODAY = dt.datetime.now(dt.UTC).date()
TRUE_NOW = dt.datetime.combine(TODAY, dt.time(12), tzinfo=dt.UTC).timestamp()  # noon: the records cannot straddle midnight


def _station(
    path: Path, unsynced: int, *, fever_at: int = 1, boot_wall: float = EPOCH_1970
) -> tuple[list[tuple[str, bytes]], list[str], str]:
    """Boot at 1970, record ``unsynced`` screenings, sync, record one more; return the outbox, the 1970 ids, the synced id."""
    store = SqliteEventStore(path, station_id="st-01", site="gate-a")
    store.begin_session()
    manual = ManualClock(wall=boot_wall, mono=50.0, synced=False)
    clock = ClockWatch(manual, step_threshold_s=1.0)
    clock.attach(store)

    def stamp(i: int) -> str:
        event = dataclasses.replace(make_event(i, alarm=i == fever_at), wall_ts=clock.wall(), clock_synced=clock.synced())
        store.record(event)
        manual.advance(2.0)
        return event.event_id

    early = [stamp(i) for i in range(unsynced)]
    manual.step(TRUE_NOW - manual.wall_s)
    manual.is_synced = True
    synced = stamp(unsynced)
    assert clock.check() == 1
    store.close()
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT topic, payload FROM outbox WHERE acked_at IS NULL ORDER BY id").fetchall()
    return [(t, bytes(p)) for t, p in rows], early, synced


def _split(messages: list[tuple[str, bytes]]) -> tuple[list[tuple[str, bytes]], tuple[str, bytes]]:
    records = [m for m in messages if not m[0].endswith("/events/clock")]
    (correction,) = [m for m in messages if m[0].endswith("/events/clock")]
    return records, correction


def _report(url: str, day: dt.date = TODAY) -> dict:
    with psycopg.connect(url) as conn:
        return db.report(conn, day, UTC)


def test_a_1970_boot_is_counted_on_its_true_day_once_its_correction_arrives_and_keeps_its_ts(pg_url: str, tmp_path: Path) -> None:
    messages, early, synced = _station(tmp_path / "st.db", 3)
    records, correction = _split(messages)
    writer = Ingestor(pg_url, lambda d: True)
    writer.open()
    first = writer.process(deliveries(records[:3]))
    assert first is not None and first.misdated == 3, "screenings and the fever's alarm copy stamped 1970 are kept, misdated"
    assert writer.stats()["last_event_age_s"] is None, "a 1970 stamp is not a 56-year lag"
    rest = writer.process(deliveries(records[3:], start_mid=20))
    assert rest is not None and rest.misdated == 1
    before = _report(pg_url)
    assert before["screened"] == 1 and before["by_decision"] == {"pass": 1}, "until corrected only the synced one is today's"

    assert writer.process(deliveries([correction], start_mid=50)) is not None
    after = _report(pg_url)
    assert after["screened"] == 4 and after["by_decision"] == {"deny_fever": 1, "pass": 3}
    assert after["alarms"] == 1 and after["stations"] == 1
    assert after["missing_events"] == 0, "the misdated records are received, not missing"
    with psycopg.connect(pg_url) as conn:
        offset_ms = conn.execute("SELECT offset_ms FROM clock_corrections").fetchone()[0]  # type: ignore[index]
        kept = conn.execute(
            "SELECT event_id, extract(epoch FROM ts)::float8, extract(epoch FROM corrected_ts)::float8 FROM events_misdated "
            "ORDER BY ts, kind"
        ).fetchall()
        assert {r[0] for r in kept} == set(early)
        for _, ts, corrected in kept:
            assert ts < EPOCH_1970 + 60, "the original ts stays"
            assert corrected == pytest.approx(ts + offset_ms / 1000.0, abs=1e-3)
            assert db.day_of(corrected, UTC) == TODAY
        assert conn.execute("SELECT corrected_ts FROM events WHERE event_id = %s", (synced,)).fetchone() == (None,)
        weekly = reports.period_report(conn, TODAY, 1, UTC)
        assert weekly["totals"]["screened"] == 4 and weekly["totals"]["fevers"] == 1 and weekly["totals"]["alarms"] == 1
        # The tracer sees the fever at its true time, not in 1970.
        tracing.ensure_tracing_schema(conn)
        db.add_user(conn, "tina", "tracer", hash_password("correct horse battery"))
        conn.commit()
        start = dt.datetime.combine(TODAY, dt.time(), tzinfo=dt.UTC)
        (fever,) = tracing.fever_passages(conn, "tina", "fever after a cold boot", "gate-a", "st-01", start, start + dt.timedelta(days=1))
        assert fever["event_id"] == early[1] and fever["ts"].date() == TODAY

    # The same correction again (an at-least-once redelivery, or a re-send after a crash): stored once, same result.
    again = json.loads(correction[1])
    again["msg_id"] = "f" * 32
    writer.process(deliveries([correction, (correction[0], json.dumps(again).encode())], start_mid=60))
    stats = writer.stats()
    assert stats["clock_corrections"] == 1 and stats["clock_corrections_duplicate"] == 2
    assert stats["clock_corrected"] == 4
    assert _report(pg_url)["screened"] == 4
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM clock_corrections").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM clock_correction_records").fetchone() == (3,)
    writer.stop()


def test_a_correction_that_arrives_before_its_records_dates_them_when_they_come(pg_url: str, tmp_path: Path) -> None:
    messages, early, _ = _station(tmp_path / "st.db", 2, fever_at=-1)
    records, correction = _split(messages)
    writer = Ingestor(pg_url, lambda d: True)
    writer.open()
    assert writer.process(deliveries([correction])) is not None
    assert _report(pg_url)["screened"] == 0
    result = writer.process(deliveries(records, start_mid=10))
    assert result is not None and result.corrected == 2
    assert _report(pg_url)["screened"] == 3
    writer.stop()


def test_a_clock_a_day_behind_moves_its_records_from_yesterdays_count_to_todays(pg_url: str, tmp_path: Path) -> None:
    yesterday = TODAY - dt.timedelta(days=1)
    messages, early, _ = _station(tmp_path / "st.db", 2, fever_at=-1, boot_wall=TRUE_NOW - 86_400.0)  # fake-hwclock's last save
    records, correction = _split(messages)
    writer = Ingestor(pg_url, lambda d: True)
    writer.open()
    result = writer.process(deliveries(records))
    assert result is not None and result.misdated == 0, "a day off is inside the kept window: yesterday's partition"
    assert (_report(pg_url, yesterday)["screened"], _report(pg_url)["screened"]) == (2, 1)
    assert writer.process(deliveries([correction], start_mid=10)) is not None
    assert (_report(pg_url, yesterday)["screened"], _report(pg_url)["screened"]) == (0, 3)
    with psycopg.connect(pg_url) as conn:
        stored = conn.execute("SELECT tableoid::regclass::text FROM events WHERE event_id = ANY(%s)", (early,)).fetchall()
        assert stored == [(db.partition_name(yesterday),)] * 2, "the rows stay where their ts put them"
        per_day = reports.period_report(conn, yesterday, 2, UTC)
        assert per_day["totals"]["screened"] == 3
    writer.stop()


def test_past_2000_ids_the_seq_range_names_the_records_whichever_comes_first(pg_url: str, tmp_path: Path) -> None:
    writer = Ingestor(pg_url, lambda d: True)
    writer.open()
    for station, correction_first in (("st-01", False), ("st-02", True)):
        messages, _, _ = _station(tmp_path / f"{station}.db", 3, fever_at=-1)
        records, (topic, payload) = _split(messages)
        body = json.loads(payload)
        body["correction"].update(event_ids=[], ids_complete=False)  # what a station sends when it had more than 2000 to name
        records = [(t.replace("/st-01/", f"/{station}/"), p.replace(b'"st-01"', f'"{station}"'.encode())) for t, p in records]
        correction = (topic.replace("/st-01/", f"/{station}/"), json.dumps(body).encode().replace(b'"st-01"', f'"{station}"'.encode()))
        order = [correction, *records] if correction_first else [*records, correction]
        for i, message in enumerate(order):  # one message a batch: the later one must find the earlier
            assert writer.process(deliveries([message], start_mid=100 * i)) is not None
    assert writer.stats()["clock_corrected"] == 6
    report = _report(pg_url)
    assert report["screened"] == 8 and report["missing_events"] == 0
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM events_misdated WHERE corrected_ts IS NULL").fetchone() == (0,)
    writer.stop()


def _clock_message(correction: object, **envelope: object) -> bytes:
    body = {"schema": 1, "msg_id": "a" * 32, "station_id": "st-01", "site": "gate-a", "seq": 5, "session": 1, "ts": TRUE_NOW}
    body.update(envelope)
    body["correction"] = correction
    return json.dumps(body).encode()


def _good(**changes: object) -> dict:
    c = {
        "kind": "clock_correction",
        "correction_id": "c" * 32,
        "offset_ms": 1_700_000_000_000,
        "seq_first": 1,
        "seq_last": 2,
        "count": 2,
        "event_ids": ["ev-1", "ev-2"],
        "vehicle_ids": [],
        "visit_ids": [],
        "registration_ids": [],
        "ids_complete": True,
        "late": False,
    }
    c.update(changes)
    return c


HOSTILE = [
    (_clock_message(_good(offset_ms="1700000000000")), "bad_offset"),
    (_clock_message(_good(offset_ms=10**16)), "bad_offset"),
    (_clock_message(_good(offset_ms=1.5)), "bad_offset"),
    (_clock_message(_good(offset_ms=float("nan"))), "bad_offset"),  # json.dumps writes NaN, json.loads reads it: not finite
    (_clock_message(_good(event_ids=[f"ev-{i}" for i in range(2001)])), "too_many_ids"),
    (_clock_message(_good(event_ids="ev-1")), "bad_ids"),
    (_clock_message(_good(event_ids=["ev 1; DROP TABLE events"])), "bad_ids"),
    (_clock_message(_good(event_ids=[{"$ne": 1}])), "bad_ids"),
    (_clock_message(_good(seq_first=9, seq_last=2)), "bad_seq_range"),
    (_clock_message(_good(seq_first=1, seq_last=None)), "bad_seq_range"),
    (_clock_message(_good(ids_complete="yes")), "bad_correction"),
    (_clock_message(_good(correction_id=None)), "bad_correction_id"),
    (_clock_message(_good(event_ids=[], seq_first=None, seq_last=None)), "empty_correction"),
    (_clock_message([1, 2]), "no_correction"),
    (_clock_message(_good(), station_id="st-99"), "sender_mismatch"),
    (_clock_message(_good(padding="x" * 300_000)), "too_large"),
]


@pytest.mark.parametrize(("payload", "reason"), HOSTILE, ids=[f"{i}-{r}" for i, (_, r) in enumerate(HOSTILE)])
def test_a_hostile_correction_is_a_verdict_with_its_reason(payload: bytes, reason: str) -> None:
    assert parse_message(P, f"{P}/gate-a/st-01/events/clock", payload) == Rejected(reason)


def test_a_good_correction_parses_and_a_station_may_not_list_more_than_2000_ids() -> None:
    ids = [f"{i:032x}" for i in range(2000)]  # a full list of station ids: larger than an event's 64 KiB cap
    verdict = parse_message(P, f"{P}/gate-a/st-01/events/clock", _clock_message(_good(event_ids=ids, ids_complete=False)))
    assert isinstance(verdict, ClockCorrection) and len(verdict.records) == 2000 and not verdict.ids_complete
    assert verdict.offset_ms == 1_700_000_000_000 and (verdict.seq_first, verdict.seq_last) == (1, 2)


def test_hostile_corrections_are_counted_and_dropped_and_one_station_cannot_date_anothers_records(pg_url: str, tmp_path: Path) -> None:
    messages, _, _ = _station(tmp_path / "st.db", 2)
    records, correction = _split(messages)
    # Another station replays st-01's correction under its own topic: it names st-01's ids but dates only its own records.
    body = json.loads(correction[1])
    body.update(station_id="st-02", msg_id="b" * 32)
    foreign = (f"{P}/gate-a/st-02/events/clock", json.dumps(body).encode())
    acked: list[int] = []
    writer = Ingestor(pg_url, lambda d: acked.append(d.mid) is None)
    writer.open()
    writer.start()
    batch = deliveries([(f"{P}/gate-a/st-01/events/clock", p) for p, _ in HOSTILE] + records + [foreign])
    for d in batch:
        writer.offer(d)
    wait_until(lambda: len(acked) == len(batch), timeout=15, what="every message acknowledged, the hostile ones too")
    stats = writer.stats()
    expected: dict[str, int] = {}
    for _, reason in HOSTILE:
        expected[reason] = expected.get(reason, 0) + 1
    assert stats["dropped"] == expected and stats["writer_alive"]
    assert stats["clock_corrections"] == 1 and stats["clock_corrected"] == 0
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT station FROM clock_corrections").fetchall() == [("st-02",)]
        assert conn.execute("SELECT count(*) FROM events_misdated WHERE corrected_ts IS NOT NULL").fetchone() == (0,)
    assert _report(pg_url)["screened"] == 1
    writer.stop()


JUNK = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.sampled_from(["ts", "event_ids", "offset_ms", "seq_first", "x"]), c, max_size=6),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["clock", "screening", "vehicle", "visit", "registration", "alarm"]), JUNK, JUNK)
def test_any_correction_or_unsynced_record_gives_a_verdict_never_a_parser_failure(kind: str, junk: object, ts: object) -> None:
    bodies = [
        json.loads(_clock_message(junk)),
        json.loads(_clock_message(_good(offset_ms=junk, seq_first=ts, seq_last=junk, event_ids=[junk]))),
        {"msg_id": "a" * 32, "seq": 3, "clock_synced": False, "ts": ts, "event": junk, "vehicle": junk, "visit": junk},
        {"msg_id": "a" * 32, "seq": 3, "clock_synced": False, "ts": ts, kind: {"event_id": "ev-1", "ts": junk, "closed_ts": junk}},
    ]
    for body in bodies:
        try:
            payload = json.dumps(body).encode()
        except ValueError:
            continue
        verdict = parse_message(P, f"{P}/gate-a/st-01/events/{kind}", payload)
        assert isinstance(verdict, EventRow | ClockCorrection | Rejected)
        assert not (isinstance(verdict, Rejected) and verdict.reason.startswith("parser_")), verdict
        if isinstance(verdict, EventRow):
            assert 0.0 <= verdict.ts <= 4.2e9
