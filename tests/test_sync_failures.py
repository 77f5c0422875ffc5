"""Nothing lost, ever: the station process SIGKILLed mid-burst, a long outage, bad credentials.

Companion to ``test_sync.py`` (which covers the broker SIGKILLed mid-burst and the Will). Real
parts only: a mosquitto on 127.0.0.1, SQLite files, and a real child process for the station.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest

from drivers.publish.mqtt import MqttPublisher, jittered_delay
from station.store.events import SqliteEventStore
from tests.support.broker import Broker, mosquitto_available
from tests.support.events import make_event
from tests.support.sync_rig import PREFIX, STATUS, Collector, Station, backend_session
from tests.support.waiting import wait_until

pytestmark = pytest.mark.skipif(not mosquitto_available(), reason="mosquitto not installed")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "broker", persistence=True)
    yield b
    b.kill()


# A whole station in a child process: the store, the MQTT publisher and the outbox pump, recording
# events as fast as the disk allows. It prints an event id only after record() returned, i.e.
# after the event and its outbox row are durable.
STATION_CHILD = r"""
import sys, time
from pathlib import Path
from drivers.publish.mqtt import MqttPublisher
from station.store.events import SqliteEventStore
from station.link.sync import OutboxPump
from tests.support.events import make_event

url, db, status, first, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
store = SqliteEventStore(Path(db), station_id="st-01", site="gate-a")
session = store.begin_session()
pub = MqttPublisher(url, "station-st-01", status, will_payload=b"offline", online_payload=b"online",
                    keepalive=10, reconnect_min_delay=0.2)
pump = OutboxPump(store, pub, max_in_flight=10)
pump.start()
pub.start()
print("session", session, flush=True)
for i in range(first, first + count):
    event = make_event(i)
    store.record(event)
    print("recorded", event.event_id, flush=True)
    time.sleep(0.001)  # a burst at a sensor's pace, so the SIGKILL lands mid-burst
print("drained" if pump.drain(30) else "not-drained", flush=True)
time.sleep(120)  # stay up until the test SIGKILLs this process
"""


def _station_child(broker: Broker, db: Path, first: int, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", STATION_CHILD, broker.url, str(db), STATUS, str(first), str(count)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )


@pytest.mark.slow
def test_station_process_sigkill_mid_burst_loses_nothing(tmp_path: Path, broker: Broker) -> None:
    sub = backend_session(broker)
    broker.start()
    watcher = Collector(broker.port, "watcher", STATUS, persistent=False)
    db = tmp_path / "station.db"
    printed: list[str] = []
    first = _station_child(broker, db, 0, 3000)
    second: subprocess.Popen[str] | None = None
    try:
        assert first.stdout is not None
        assert first.stdout.readline().startswith("session 1")
        # Let it record and publish for a while, then kill it without any chance to clean up.
        while len(printed) < 400:
            line = first.stdout.readline()
            assert line.startswith("recorded "), line
            printed.append(line.split()[1])
        wait_until(lambda: len(sub.unique()) >= 100, 10, "part of the burst at the subscriber")
        first.send_signal(signal.SIGKILL)
        first.wait()
        printed += [ln.split()[1] for ln in first.stdout.read().splitlines() if ln.startswith("recorded ")]
        wait_until(
            lambda: [p for _, p, _ in watcher.raw()][-1:] == [b"offline"], 15, "the Will saying offline after the station was killed"
        )
        killed_at = len(sub.unique())

        second = _station_child(broker, db, 10_000, 200)  # restart: the same data dir
        assert second.stdout is not None
        assert second.stdout.readline().startswith("session 2")
        lines = []
        while True:
            line = second.stdout.readline()
            assert line, "second station process died"
            if not line.startswith("recorded "):
                lines.append(line.strip())
                break
            printed.append(line.split()[1])
        assert lines == ["drained"], lines

        with SqliteEventStore(db, station_id="st-01", site="gate-a", read_only=True) as store:
            in_db = [e["event_id"] for e in store.tail(10_000)]
            assert store.outbox_stats()["pending"] == 0
        # Every event the station recorded arrives, including one that may have been committed
        # in the instant before the kill without being printed; nothing else arrives.
        assert set(printed) <= set(in_db)
        wait_until(lambda: len(sub.unique()) >= len(in_db), 15, "every recorded event at the subscriber")
        unique = list(sub.unique().values())
        assert [p["event"]["event_id"] for p in unique] == in_db, "each once, in recording order"
        seqs = [p["seq"] for p in unique]
        assert seqs == list(range(1, len(in_db) + 1)), "seq continues across the restart, no gap"
        assert [p["session"] for p in unique] == sorted(p["session"] for p in unique)
        assert {p["session"] for p in unique} == {1, 2}
        duplicates = len(sub.payloads()) - len(unique)
        print(
            f"\nstation SIGKILL after {len(printed)} printed / {killed_at} delivered; "
            f"{len(in_db)} events in all, duplicates at subscriber {duplicates}"
        )
    finally:
        for child in (first, second):
            if child is not None and child.poll() is None:
                child.kill()
                child.wait()
        watcher.close()
        sub.close()


@pytest.mark.slow
def test_long_outage_with_5000_queued_events_catches_up(tmp_path: Path, broker: Broker) -> None:
    sub = backend_session(broker)  # the broker is now down
    station = Station(tmp_path, broker)
    try:
        total = 5000
        recorded = []
        for i in range(total):
            event = make_event(i, alarm=(i % 500 == 250))
            station.store.record(event)
            recorded.append(event)
        n_alarms = sum(1 for e in recorded if e.alarm)
        stats = station.store.outbox_stats()
        assert stats["pending"] == total + n_alarms and stats["alarms_pending"] == n_alarms
        assert station.pump.stats()["published"] == 0
        assert station.publisher.state in ("connecting", "reconnecting")

        broker.start()
        t0 = time.monotonic()
        assert station.pump.drain(60), f"outbox not drained: {station.pump.stats()}"
        drained_s = time.monotonic() - t0
        wait_until(lambda: len(sub.unique()) >= total + n_alarms, 30, "every message at the subscriber")
        unique = list(sub.unique().values())
        screening = [p for p in unique if p["_topic"].endswith("/events/screening")]
        alarms = [p for p in unique if p["_topic"].endswith("/events/alarm")]
        assert [p["event"]["event_id"] for p in screening] == [e.event_id for e in recorded]
        assert [p["seq"] for p in screening] == list(range(1, total + 1))
        assert len(alarms) == n_alarms
        # Alarms have priority in the outbox: all of them went out before the ordinary backlog.
        first_copies = [p["_topic"] for p in unique]
        assert all(t.endswith("/alarm") for t in first_copies[:n_alarms])
        print(
            f"\ncatch-up: {total + n_alarms} messages in {drained_s:.2f} s after broker start "
            f"(includes reconnect back-off) = {(total + n_alarms) / drained_s:.0f}/s"
        )
    finally:
        station.close()
        sub.close()


@pytest.mark.slow
def test_wrong_credentials_give_auth_failed_once_and_no_reconnect_loop(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    broker = Broker(tmp_path / "broker", allow_anonymous=False, users={"st-01": "right-pass"})
    broker.start()
    caplog.set_level(logging.DEBUG, logger="station.mqtt")
    wrong = MqttPublisher(
        broker.url,
        "station-st-01",
        STATUS,
        b"offline",
        b"online",
        username="st-01",
        password="wrong-pass-s3cr3t",
        reconnect_min_delay=0.05,
        reconnect_max_delay=0.2,
    )
    states: list[str] = []
    wrong.on_state_change.append(states.append)
    wrong.start()
    try:
        wait_until(lambda: wrong.state == "auth_failed", 5, "auth_failed")
        # With a 0.05-0.2 s back-off a retry loop would make ~10 attempts in this time.
        time.sleep(2.0)
        assert wrong.state == "auth_failed" and not wrong.connected()
        assert wrong.connect_attempts == 1, "no retry with bad credentials"
        assert states == ["connecting", "auth_failed"]
        assert wrong.last_error in ("Not authorized", "Bad user name or password")
        refusals = [r for r in caplog.records if "refused the credentials" in r.getMessage()]
        assert len(refusals) == 1 and refusals[0].levelno == logging.ERROR
        assert "wrong-pass-s3cr3t" not in caplog.text, "a password is never logged"
        assert broker.tail_log(200).count("station-st-01") <= 2  # one CONNECT (and its refusal)
    finally:
        wrong.stop()
    assert wrong.state == "stopped"

    right = MqttPublisher(
        broker.url, "station-st-01", STATUS, b"offline", b"online", username="st-01", password="right-pass", protocol="3.1.1"
    )
    right.start()
    try:
        wait_until(right.connected, 5, "connected with the right password (MQTT 3.1.1)")
        assert right.state == "connected"
        assert right.publish_direct(f"{PREFIX}/state/test", b"{}", qos=1, retain=True)
    finally:
        right.stop()
        broker.kill()


def test_reconnect_delay_grows_exponentially_with_jitter() -> None:
    delays = []
    previous = None
    for _ in range(30):
        previous = jittered_delay(previous, 1.0, 60.0)
        delays.append(previous)
    assert 0.5 <= delays[0] <= 1.0
    assert all(0.5 <= d <= 60.0 for d in delays)
    assert all(b >= a or a > 30.0 for a, b in pairwise(delays)), f"never shrinks below the cap: {delays}"
    assert all(b <= 2 * a for a, b in pairwise(delays)), "at most doubles"
    assert delays[-1] >= 30.0, f"grows to the cap: {delays}"
    firsts = {round(jittered_delay(None, 1.0, 60.0), 6) for _ in range(20)}
    assert len(firsts) > 10, "the random part spreads a fleet's reconnects"
