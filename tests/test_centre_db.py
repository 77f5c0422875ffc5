"""The centre's writer against a real PostgreSQL: idempotent batches, day partitions, retention, gaps, the report, users.

Messages come from a real station store (tests/support/centre_messages.py); the writer is the real
``Ingestor`` with its own connection; acknowledgements are recorded in the order the writer sends them.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import psycopg
import pytest

from station.board.auth import verify_password
from station.centre import db
from station.centre.ingest import Ingestor
from station.centre.mqtt import Delivery
from tests.support.centre_messages import deliveries, station_outbox
from tests.support.postgres import pg_server, pg_url

__all__ = ["pg_server", "pg_url"]

ROOT = Path(__file__).resolve().parents[1]
P = "checkpoint/v1"


class Acks:
    """The writer's acknowledgements, in order (what the subscriber would send to the broker)."""

    def __init__(self) -> None:
        self.mids: list[int] = []

    def __call__(self, delivery: Delivery) -> bool:
        self.mids.append(delivery.mid)
        return True


def _writer(url: str, acks: Acks, **kw: object) -> Ingestor:
    writer = Ingestor(url, acks, **kw)  # type: ignore[arg-type]
    writer.open()
    return writer


def _count(url: str, sql: str, *args: object) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql, args).fetchone()
    return int(row[0]) if row else 0


def test_a_batch_is_stored_once_however_often_it_is_delivered_and_acked_after_commit(pg_url: str, tmp_path: Path) -> None:
    msgs = station_outbox(tmp_path / "st.db", 10, alarm_every=5)  # 10 screenings + 2 alarm copies
    acks = Acks()
    writer = _writer(pg_url, acks)
    first = writer.process(deliveries(msgs))
    assert first is not None and first.inserted == 12 and first.duplicates == 0
    assert acks.mids == list(range(1, 13))
    again = writer.process(deliveries(msgs[3:] + msgs[:3], start_mid=100))  # a broker's redelivery, another order
    assert again is not None and again.inserted == 0 and again.duplicates == 12
    assert acks.mids[12:] == list(range(100, 112)), "duplicates are acknowledged too"
    assert _count(pg_url, "SELECT count(*) FROM events") == 12
    assert _count(pg_url, "SELECT count(DISTINCT msg_id) FROM events") == 12
    assert _count(pg_url, "SELECT count(*) FROM stations WHERE site = 'gate-a' AND station = 'st-01'") == 1
    writer.flush_summary(force=True)
    assert _count(pg_url, "SELECT max_seq FROM stations") == 10
    assert _count(pg_url, "SELECT last_session FROM stations") == 1
    stats = writer.stats()
    assert (stats["received"], stats["inserted"], stats["duplicates"], stats["pending"]) == (0, 12, 12, 0)
    writer.stop()


def test_hostile_messages_in_a_batch_are_counted_and_acknowledged_and_the_rest_is_stored(pg_url: str, tmp_path: Path) -> None:
    good = station_outbox(tmp_path / "st.db", 3)
    bad: list[tuple[str, bytes]] = [
        (f"{P}/gate-a/st-01/events/screening", b"\x00\xff"),
        (f"{P}/gate-a/st-01/events/screening", b'{"msg_id": "x"}'),
        (f"{P}/gate-a/st-01/events/nonsense", b"{}"),
        (f"{P}/gate-a/st-01/events/screening", b"[" * 70000),
        ("", b""),
    ]
    acks = Acks()
    writer = _writer(pg_url, acks)
    writer.start()
    batch = deliveries(bad[:2] + good + bad[2:])
    for d in batch:
        writer.offer(d)
    deadline = time.monotonic() + 10
    while len(acks.mids) < len(batch) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sorted(acks.mids) == [d.mid for d in batch]
    stats = writer.stats()
    assert stats["dropped"] == {"not_utf8": 1, "no_event": 1, "unknown_kind": 1, "too_large": 1, "not_ours": 1}
    assert stats["inserted"] == 3 and stats["writer_alive"]
    assert _count(pg_url, "SELECT count(*) FROM events") == 3
    writer.stop()


def test_days_get_partitions_a_wild_clock_goes_to_misdated_and_retention_drops_whole_days(pg_url: str, tmp_path: Path) -> None:
    now = time.time()
    acks = Acks()
    writer = _writer(pg_url, acks, retention_days=30)
    tz = ZoneInfo("UTC")
    today = db.day_of(now, tz)
    with psycopg.connect(pg_url) as conn:
        ahead = db.existing_partitions(conn)
    assert {today, today + dt.timedelta(days=1), today + dt.timedelta(days=2)} <= ahead, "partitions made ahead at start"
    old = station_outbox(tmp_path / "a.db", 2, ts=now - 20 * 86400, station="st-old")
    recent = station_outbox(tmp_path / "b.db", 2, ts=now, station="st-new")
    future = station_outbox(tmp_path / "c.db", 1, ts=now + 400 * 86400, station="st-wild")
    ancient = station_outbox(tmp_path / "d.db", 1, ts=now - 90 * 86400, station="st-ancient")
    result = writer.process(deliveries(old + recent + future + ancient))
    assert result is not None and result.inserted == 6 and result.misdated == 2
    with psycopg.connect(pg_url) as conn:
        parts = db.existing_partitions(conn)
        assert today - dt.timedelta(days=20) in parts, "a backlog's day got its partition"
        assert not any(d > today + dt.timedelta(days=2) or d < today - dt.timedelta(days=30) for d in parts), "no partition for a wild date"
        stored = conn.execute("SELECT tableoid::regclass::text, station FROM events ORDER BY station").fetchall()
        assert stored == [
            (db.partition_name(today), "st-new"),
            (db.partition_name(today), "st-new"),
            (db.partition_name(today - dt.timedelta(days=20)), "st-old"),
            (db.partition_name(today - dt.timedelta(days=20)), "st-old"),
        ]
        assert sorted(r[0] for r in conn.execute("SELECT station FROM events_misdated")) == ["st-ancient", "st-wild"]
        # Retention shortened to 10 days: the 20-day-old partition goes whole, and with it the need for its numbers.
        dropped = db.drop_expired(conn, today - dt.timedelta(days=10))
        assert dropped == [today - dt.timedelta(days=20)]
        assert conn.execute("SELECT count(*) FROM events WHERE station = 'st-old'").fetchone() == (0,)
        assert conn.execute("SELECT missing_events FROM station_missing WHERE station = 'st-old'").fetchone() == (0,)
    writer.stop()


def test_gaps_in_seq_are_missing_events_per_station_and_in_the_days_report(pg_url: str, tmp_path: Path) -> None:
    full = station_outbox(tmp_path / "a.db", 6, alarm_every=3, station="st-a")  # seq 1..6, alarm copies at 3 and 6
    holey = station_outbox(tmp_path / "b.db", 10, station="st-b")
    lost = {2, 3, 7}  # delivered never: seq 2, 3 and 7 of st-b
    kept = [m for m in holey if json.loads(m[1])["seq"] not in lost]
    # st-a lost the screening copy of seq 3 but its alarm copy arrived: the event is not missing.
    without_screening_3 = [m for m in full if not (json.loads(m[1])["seq"] == 3 and m[0].endswith("/screening"))]
    writer = _writer(pg_url, Acks())
    writer.process(deliveries(without_screening_3 + kept))
    writer.flush_summary(force=True)
    with psycopg.connect(pg_url) as conn:
        by_station = {r["station"]: r for r in db.missing_by_station(conn)}
        assert by_station["st-a"]["missing_events"] == 0
        assert (by_station["st-b"]["missing_events"], by_station["st-b"]["gaps"], by_station["st-b"]["max_seq"]) == (3, 2, 10)
        gaps = conn.execute("SELECT first_missing, last_missing, missing, session FROM station_gaps ORDER BY first_missing").fetchall()
        assert gaps == [(2, 3, 2, 1), (7, 7, 1, 1)]
        report = db.report(conn, db.day_of(time.time(), ZoneInfo("UTC")), ZoneInfo("UTC"))
    assert report["screened"] == 6 + 7
    assert report["by_decision"] == {"deny_fever": 2, "pass": 4 + 7}
    assert report["alarms"] == 2
    assert report["missing_events"] == 3 and report["missing_by_station"] == {"gate-a/st-b": 3}
    assert report["stations"] == 2
    writer.stop()


def test_two_writers_on_one_database_store_overlapping_batches_once_without_deadlock(pg_url: str, tmp_path: Path) -> None:
    msgs = []
    for i in range(6):
        msgs += station_outbox(tmp_path / f"{i}.db", 60, alarm_every=7, station=f"st-{i}")
    writers = [_writer(pg_url, Acks()), _writer(pg_url, Acks())]
    errors: list[BaseException] = []

    def feed(w: Ingestor, part: list[tuple[str, bytes]]) -> None:
        try:
            for i in range(0, len(part), 50):
                w.process(deliveries(part[i : i + 50]))
        except BaseException as exc:
            errors.append(exc)

    # Each writer gets two thirds: the middle third is delivered to both (a redelivery after a kill).
    third = len(msgs) // 3
    threads = [
        threading.Thread(target=feed, args=(writers[0], msgs[: 2 * third])),
        threading.Thread(target=feed, args=(writers[1], list(reversed(msgs[third:])))),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        assert not t.is_alive()
    assert not errors
    assert _count(pg_url, "SELECT count(*) FROM events") == len(msgs)
    assert sum(w.inserted for w in writers) == len(msgs)
    for w in writers:
        w.flush_summary(force=True)
    assert _count(pg_url, "SELECT count(*) FROM stations") == 6
    assert _count(pg_url, "SELECT min(max_seq) FROM stations") == 60
    assert _count(pg_url, "SELECT sum(missing_events) FROM station_missing") == 0
    for w in writers:
        w.stop()


def test_a_database_that_goes_away_is_retried_and_nothing_is_acknowledged_until_it_is_back(pg_server, pg_url: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    msgs = station_outbox(tmp_path / "st.db", 5)
    acks = Acks()
    writer = _writer(pg_url, acks)
    writer.start()
    assert writer._conn is not None
    with psycopg.connect(pg_server.dsn, autocommit=True) as admin:  # end the writer's session under its feet
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'checkpoint-centre' AND datname = %s",
            (pg_url.rsplit("/", 1)[1],),
        )
    for d in deliveries(msgs):
        writer.offer(d)
    deadline = time.monotonic() + 15
    while len(acks.mids) < 5 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert acks.mids == [1, 2, 3, 4, 5]
    assert _count(pg_url, "SELECT count(*) FROM events") == 5
    assert writer.stats()["db_errors"] >= 1
    writer.stop()


def test_a_writer_error_it_cannot_handle_ends_the_replica_instead_of_leaving_it_deaf(pg_url: str, tmp_path: Path) -> None:
    failures: list[BaseException] = []

    def ack_that_breaks(delivery: Delivery) -> bool:
        raise RuntimeError("paho went away")

    writer = Ingestor(pg_url, ack_that_breaks, on_fatal=failures.append)
    writer.open()
    writer.start()
    for d in deliveries(station_outbox(tmp_path / "st.db", 2)):
        writer.offer(d)
    deadline = time.monotonic() + 10
    while not failures and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [type(f) for f in failures] == [RuntimeError] and writer.fatal is failures[0]
    assert not writer.alive()
    assert writer.stats()["writer_alive"] is False
    writer.stop()


def _centre(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "station.cli.station_main", "centre", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


@pytest.mark.slow
def test_user_add_stores_an_scrypt_hash_and_report_prints_json(pg_url: str, tmp_path: Path) -> None:
    done = _centre("user", "add", "li.wei", "--role", "tracer", "--password-stdin", "--db", pg_url, stdin="correct horse battery\n")
    assert done.returncode == 0, done.stderr
    assert "added li.wei (tracer)" in done.stdout
    with psycopg.connect(pg_url) as conn:
        role, stored = conn.execute("SELECT role, password FROM centre_users WHERE name = 'li.wei'").fetchone()  # type: ignore[misc]
    assert role == "tracer" and stored.startswith("scrypt$") and "correct" not in stored
    assert verify_password("correct horse battery", stored) and not verify_password("wrong horse battery", stored)
    short = _centre("user", "add", "x", "--role", "admin", "--password-stdin", "--db", pg_url, stdin="short\n")
    assert short.returncode == 2 and "10 to 1024" in short.stderr
    bad_role = _centre("user", "add", "x", "--role", "root", "--password-stdin", "--db", pg_url, stdin="long enough pass\n")
    assert bad_role.returncode == 2

    writer = _writer(pg_url, Acks())
    writer.process(deliveries(station_outbox(tmp_path / "st.db", 4, alarm_every=4)))
    writer.stop()
    day = dt.datetime.now(dt.UTC).date().isoformat()
    out = _centre("report", "--db", pg_url, "--day", day, "--json")
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert {k: body[k] for k in ("day", "stations", "screened", "by_decision", "missing_events")} == {
        "day": day,
        "stations": 1,
        "screened": 4,
        "by_decision": {"deny_fever": 1, "pass": 3},
        "missing_events": 0,
    }
    assert _centre("report", "--db", pg_url, "--day", "yesterday").returncode == 2
    unreachable = _centre("report", "--db", "postgresql://nobody@127.0.0.1:1/x", "--day", day)
    assert unreachable.returncode == 1 and "database" in unreachable.stderr
