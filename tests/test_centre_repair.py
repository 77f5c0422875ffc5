"""The broker restart hole, repaired: what a restarted mosquitto acknowledged to a station and delivered to nobody comes
back on the centre's signed ``resend`` (real mosquitto with persistence, real PostgreSQL, the station's real store,
outbox pump and command link, the centre's real replica with its repair loop).

After the repair the centre's report equals the station's own SQLite counts, with no duplicate, and the gap is gone
from the missing events. A gap the station can no longer fill (its records purged by retention) is answered as such,
not asked again, and stays a missing event.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from drivers.publish.mqtt import MqttPublisher
from station.link.command_auth import CommandKeys, CommandVerifier, ReplayGuard, new_signing_key, private_pem
from station.link.commands import COMMAND_IDS_FILE, StationLink
from station.link.handlers import CommandHandlers
from station.link.sync import OutboxPump
from station.store.events import SqliteEventStore
from station.store.retention import purge_store
from tests.support.broker import Broker, mosquitto_available
from tests.support.command_rig import BASE, SITE, STATION, write_public_keys
from tests.support.events import make_event
from tests.support.postgres import pg_server, pg_url, postgres_available
from tests.support.waiting import wait_until

__all__ = ["pg_server", "pg_url"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not mosquitto_available(), reason="mosquitto not installed"),
    pytest.mark.skipif(not postgres_available(), reason="PostgreSQL not installed"),
]


class Station:
    """A station's store, outbox pump and command link on ``broker``, trusting ``key``."""

    def __init__(self, tmp: Path, broker: Broker, key: Any) -> None:
        self.data = tmp / "station"
        self.store = SqliteEventStore(tmp / "events.db", station_id=STATION, site=SITE)
        self.store.begin_session()
        self.publisher = MqttPublisher(broker.url, f"station-{STATION}", f"{BASE}/status", b"offline", b"online")
        self.replay = ReplayGuard(self.data / COMMAND_IDS_FILE)
        keys = CommandKeys(write_public_keys(tmp / "centre-keys.pem", key), self.data)
        handlers = CommandHandlers(
            store=self.store,
            gate=None,
            monotonic=time.monotonic,
            config_path=None,
            data_dir=self.data,
            snapshot=lambda: {},
            command_keys=keys,
        )
        self.link = StationLink(
            self.publisher,
            BASE,
            {"station_id": STATION, "site": SITE},
            {"outbox": self.store.outbox_stats},
            lambda: {},
            handlers,
            verifier=CommandVerifier(keys, self.replay, site=SITE, station=STATION),
            stats_interval_s=5.0,
            poll_s=0.5,
        )
        self.pump = OutboxPump(self.store, self.publisher, poll_interval=0.1)
        self.publisher.start()
        self.link.start()
        self.pump.start()
        wait_until(self.publisher.connected, 10, "station connected")

    def record(self, first: int, n: int, *, alarm_every: int = 0, ts: float | None = None) -> None:
        for i in range(first, first + n):
            self.store.record(make_event(i, alarm=bool(alarm_every) and i % alarm_every == 0, ts=ts))

    def drained(self) -> bool:
        return self.store.outbox_stats()["pending"] == 0

    def close(self) -> None:
        self.pump.stop()
        self.link.stop()
        self.publisher.stop()
        self.store.close()
        self.replay.close()


@pytest.fixture()
def rig(tmp_path: Path) -> Iterator[tuple[Broker, Station, Path]]:
    broker = Broker(tmp_path / "broker", persistence=True)
    broker.start()
    key = new_signing_key()
    key_file = tmp_path / "centre-key.pem"
    key_file.write_bytes(private_pem(key))
    station = Station(tmp_path, broker, key)
    try:
        yield broker, station, key_file
    finally:
        station.close()
        broker.kill()


def _centre(broker: Broker, db_url: str, key_file: Path) -> Any:
    from station.centre.run import Centre, CentreOptions

    opts = CentreOptions(
        mqtt_url=broker.url,
        db_url=db_url,
        share_group="district",
        client_id="centre-x",
        batch_window_s=0.02,
        fleet=False,
        command_key=str(key_file),
        repair_after_s=1.0,
        repair_retry_s=10.0,
    )
    centre = Centre(opts)
    centre.start()
    assert centre.subscriber is not None and centre.subscriber.subscribed.wait(10)
    return centre


def _query(db_url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(db_url) as conn:
        return conn.execute(sql, args).fetchall()


def _records(db_url: str) -> int:
    """Return the station's record messages stored (its commands' audit messages left out)."""
    return int(_query(db_url, "SELECT count(*) FROM events WHERE kind <> 'audit'")[0][0])


def _gaps(db_url: str) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in _query(db_url, "SELECT first_missing, last_missing FROM station_gaps WHERE station = %s", STATION)]


def test_records_the_restarted_broker_lost_are_sent_again_and_the_gap_closes(
    rig: tuple[Broker, Station, Path], pg_url: str, tmp_path: Path
) -> None:
    from station.centre import db

    broker, station, key_file = rig
    centre = _centre(broker, pg_url, key_file)
    try:
        station.record(0, 3)  # seq 1-3
        wait_until(lambda: _records(pg_url) == 3, 20, "seq 1-3 stored")
        centre.stop()  # a clean stop: the session (and its subscription) stays on the broker
        broker.stop()
        restarted = time.monotonic()
        broker.start()
        wait_until(station.publisher.connected, 20, "station reconnected")
        station.record(3, 4, alarm_every=4)  # seq 4-7, seq 5 with its alarm copy: acknowledged, delivered to nobody
        wait_until(station.drained, 20, "the broker acknowledged seq 4-7")
        centre = _centre(broker, pg_url, key_file)
        station.record(7, 1)  # seq 8 arrives: seq 4-7 are a gap
        wait_until(lambda: _gaps(pg_url) == [(4, 7)] or not _gaps(pg_url), 20, "the gap seen")
        wait_until(lambda: not _gaps(pg_url) and _records(pg_url) == 9, 60, "the gap filled")
        closed_after = time.monotonic() - restarted
        wait_until(lambda: _closed(pg_url), 20, "the repair row closed, the answer recorded")
        print(f"broker restart -> gap closed: {closed_after:.1f} s")  # docs/centre.md quotes it
        repair = centre._writer_stats()["repair"]  # on /healthz and /metrics
        assert repair["asked"] == 1 and repair["answered"] == 1 and repair["closed"] == 1, repair
        from station.centre.web import metrics_text

        assert 'centre_repair_total{what="asked"} 1' in metrics_text({}, centre._writer_stats())

        rows = _query(pg_url, "SELECT state, tries, asked_first, asked_last, answer FROM centre_repairs")
        assert len(rows) == 1
        state, tries, first, last, answer = rows[0]
        assert (state, tries, first, last) == ("closed", 1, 4, 7)
        assert answer["ok"] is True and answer["result"]["requeued"] == 5 and answer["result"]["not_found"] == 0
        from click.testing import CliRunner

        from station.centre.cli import centre as centre_cli

        listed = CliRunner().invoke(centre_cli, ["repairs", "--db", pg_url, "--json"])
        assert listed.exit_code == 0, listed.output
        assert [(r["station"], r["state"], r["answer"]["result"]["requeued"]) for r in json.loads(listed.output)["repairs"]] == [
            (STATION, "closed", 5)
        ]
        text = CliRunner().invoke(centre_cli, ["repairs", "--db", pg_url]).output
        assert f"{SITE}/{STATION} 4-7 closed tries=1" in text and '"requeued": 5' in text
        # The report equals the station's own counts; every message once.
        with sqlite3.connect(tmp_path / "events.db") as conn:
            own = Counter(d for (d,) in conn.execute("SELECT decision FROM events"))
            days = {dt.datetime.fromtimestamp(ts, dt.UTC).date() for (ts,) in conn.execute("SELECT ts FROM events")}
        by_decision: Counter[str] = Counter()
        with psycopg.connect(pg_url) as conn:
            tz = db.ZoneInfo("UTC")
            for day in days:
                report = db.report(conn, day, tz)
                by_decision.update(report["by_decision"])
                assert report["missing_events"] == 0
            total, distinct = conn.execute("SELECT count(*), count(DISTINCT msg_id) FROM events WHERE kind <> 'audit'").fetchone()
        assert by_decision == own
        assert (total, distinct) == (9, 9)  # 8 screenings and one alarm copy, none twice
    finally:
        centre.stop()


def _closed(db_url: str) -> bool:
    return _query(db_url, "SELECT state, answer IS NOT NULL FROM centre_repairs") == [("closed", True)]


def test_a_gap_the_station_no_longer_keeps_is_answered_not_kept_and_stays_missing(rig: tuple[Broker, Station, Path], pg_url: str) -> None:
    broker, station, key_file = rig
    station.record(0, 3, ts=time.time() - 40 * 86400)  # seq 1-3, sent before any centre subscribed: lost
    wait_until(station.drained, 20, "seq 1-3 acknowledged")
    station.store.outbox_flush_deferred()  # the delivered rows leave the file (the pump defers their delete)
    assert purge_store(station.store, events_days=30).events == 3  # and since purged by retention
    centre = _centre(broker, pg_url, key_file)
    try:
        station.record(3, 1)  # seq 4
        wait_until(lambda: _gaps(pg_url) == [(1, 3)], 20, "the gap seen")
        wait_until(lambda: [r[0] for r in _query(pg_url, "SELECT state FROM centre_repairs")] == ["not_kept"], 30, "the answer")
        (answer,) = _query(pg_url, "SELECT answer FROM centre_repairs")[0]
        assert answer["result"]["not_found"] == 3 and answer["result"]["requeued"] == 0
        tries = _query(pg_url, "SELECT tries FROM centre_repairs")[0][0]
        centre.repair.cycle()
        assert _query(pg_url, "SELECT tries FROM centre_repairs")[0][0] == tries == 1, "not asked again"
        assert _gaps(pg_url) == [(1, 3)], "the gap stays a missing event"
    finally:
        centre.stop()


def test_one_replica_asks_at_a_time_and_a_long_gap_is_asked_for_in_bounded_ranges(pg_url: str, tmp_path: Path) -> None:
    from station.centre import db
    from station.centre.parse import EventRow, parse_message
    from station.centre.repair import GapRepair, RepairOptions, ensure_repair_schema
    from station.store.resend import MAX_RANGE

    store = SqliteEventStore(tmp_path / "events.db", station_id=STATION, site=SITE)
    store.begin_session()
    store.record(make_event(1))
    store.write_transaction(lambda c: c.execute("UPDATE meta SET value = ? WHERE key = 'seq'", (str(MAX_RANGE + 10),)))
    store.record(make_event(2))  # seq MAX_RANGE + 11: numbers 2 .. MAX_RANGE + 10 are missing
    with sqlite3.connect(tmp_path / "events.db") as conn:
        messages = conn.execute("SELECT topic, payload FROM outbox ORDER BY id").fetchall()
    store.close()
    rows = [r for r in (parse_message("checkpoint/v1", t, bytes(p)) for t, p in messages) if isinstance(r, EventRow)]
    with db.connect(pg_url) as conn:
        db.ensure_schema(conn)
        db.create_partitions(conn, {db.day_of(r.ts, db.ZoneInfo("UTC")) for r in rows}, db.ZoneInfo("UTC"))
        db.write_batch(conn, rows, [])
        ensure_repair_schema(conn)
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(private_pem(new_signing_key()))
    opts = RepairOptions(after_s=0.0)
    first, second = (GapRepair(pg_url, "mqtt://127.0.0.1:1", key_file, opts=opts, replica=f"r{i}") for i in (1, 2))
    did = first.cycle()
    assert did == {"leased": 1, "opened": 2, "closed": 0, "asked": 1, "given_up": 0}  # one range per station per round
    assert second.cycle() == {"leased": 0}, "the other replica holds the lease"
    assert first.cycle()["asked"] == 0, "one resend per station every station_gap_s"
    spans = _query(pg_url, "SELECT first_seq, last_seq, state, tries FROM centre_repairs ORDER BY first_seq")
    assert spans == [(2, MAX_RANGE + 1, "asked", 1), (MAX_RANGE + 2, MAX_RANGE + 10, "waiting", 0)]
    # Unanswered (this replica has no broker) and still missing after max_tries asks: given up, the gap still shown.
    first.opts = RepairOptions(after_s=0.0, retry_s=0.0, max_tries=1, station_gap_s=0.0)
    with psycopg.connect(pg_url) as conn:  # the first ask's wait is over
        conn.execute("UPDATE centre_repairs SET next_at = now() WHERE state = 'asked'")
    did = first.cycle()
    assert did["given_up"] == 1 and did["asked"] == 0
    assert first.cycle()["asked"] == 1, "the next range of the station is asked for"
    states = _query(pg_url, "SELECT first_seq, state, tries FROM centre_repairs ORDER BY first_seq")
    assert states == [(2, "given_up", 1), (MAX_RANGE + 2, "asked", 1)]
    assert _gaps(pg_url) == [(2, MAX_RANGE + 10)], "a gap given up stays a missing event"


def test_a_round_asks_for_a_bounded_count_of_numbers_across_stations(pg_url: str, tmp_path: Path) -> None:
    from station.centre import db
    from station.centre.parse import EventRow, parse_message
    from station.centre.repair import GapRepair, RepairOptions, ensure_repair_schema

    rows = []
    for name in ("st-a", "st-b", "st-c"):  # each: seq 1, then seq 4 002 (4 000 numbers missing)
        store = SqliteEventStore(tmp_path / f"{name}.db", station_id=name, site=SITE)
        store.begin_session()
        store.record(make_event(1))
        store.write_transaction(lambda c: c.execute("UPDATE meta SET value = '4001' WHERE key = 'seq'"))
        store.record(make_event(2))
        with sqlite3.connect(tmp_path / f"{name}.db") as conn:
            messages = conn.execute("SELECT topic, payload FROM outbox ORDER BY id").fetchall()
        store.close()
        rows += [r for r in (parse_message("checkpoint/v1", t, bytes(p)) for t, p in messages) if isinstance(r, EventRow)]
    assert len(rows) == 6
    with db.connect(pg_url) as conn:
        db.ensure_schema(conn)
        db.create_partitions(conn, {db.day_of(r.ts, db.ZoneInfo("UTC")) for r in rows}, db.ZoneInfo("UTC"))
        db.write_batch(conn, rows, [])
        ensure_repair_schema(conn)
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(private_pem(new_signing_key()))
    repair = GapRepair(pg_url, "mqtt://127.0.0.1:1", key_file, opts=RepairOptions(after_s=0.0, numbers_per_cycle=10_000))
    assert repair.cycle()["asked"] == 2, "8 000 numbers; a third station's 4 000 would pass 10 000"
    assert repair.cycle()["asked"] == 1, "the third next round"
    asked = _query(pg_url, "SELECT station, asked_first, asked_last FROM centre_repairs ORDER BY station")
    assert asked == [(s, 2, 4001) for s in ("st-a", "st-b", "st-c")]
