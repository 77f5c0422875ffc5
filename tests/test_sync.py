"""Store-and-forward against a real mosquitto: outages, broker SIGKILL, Will/availability.

A "back end" subscriber with a persistent session (client id fixed, clean_session=False) stands
in for the command centre; the broker persists that session across clean restarts, so messages
published while the subscriber is still reconnecting are queued for it, as in production.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from drivers.publish.mqtt import MqttPublisher
from station.link.sync import NotConnectedError, OutboxPump
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


# ----------------------------------------------------------------------------- outbox → broker


@pytest.mark.slow
def test_events_recorded_while_broker_is_down_arrive_once_in_order(tmp_path: Path, broker: Broker) -> None:
    sub = backend_session(broker)  # broker is now down
    station = Station(tmp_path, broker)
    try:
        events = [make_event(i) for i in range(60)]
        for ev in events:
            station.store.record(ev)
        time.sleep(0.3)  # nothing may be handed to paho while offline: a wait for nothing to happen
        assert not station.publisher.connected()
        assert station.store.outbox_stats()["pending"] == 60
        assert station.pump.stats()["published"] == 0, "nothing is handed to paho while offline"

        broker.start()
        t0 = time.monotonic()
        assert station.pump.drain(15), f"outbox not drained: {station.pump.stats()}"
        drained_s = time.monotonic() - t0
        wait_until(lambda: len(sub.unique()) >= 60, 10, "all messages at the subscriber")

        unique = list(sub.unique().values())
        assert [p["event"]["event_id"] for p in unique] == [e.event_id for e in events]
        assert [p["seq"] for p in unique] == list(range(1, 61)), "arrival in seq order"
        assert {p["session"] for p in unique} == {station.session}
        assert station.store.outbox_stats() == {
            "pending": 0,
            "oldest_age_s": 0.0,
            "bytes": 0,
            "alarms_pending": 0,
            "dropped": 0,
            "bounds_alarm": None,
        }
        stats = station.pump.stats()
        assert stats["acked"] == 60 and stats["in_flight"] == 0
        print(
            f"\ncatch-up after outage: 60 events drained {drained_s:.2f} s after broker start (includes reconnect back-off); pump {stats}"
        )
    finally:
        station.close()
        sub.close()


@pytest.mark.slow
def test_broker_sigkill_mid_burst_loses_nothing(tmp_path: Path, broker: Broker) -> None:
    sub = backend_session(broker)
    broker.start()
    station = Station(tmp_path, broker)
    try:
        wait_until(station.publisher.connected, 10, "publisher connected")
        total = 400
        recorded: list[str] = []

        def burst() -> None:
            for i in range(total):
                ev = make_event(i, alarm=(i % 25 == 7))
                station.store.record(ev)
                recorded.append(ev.event_id)

        writer = threading.Thread(target=burst)
        writer.start()
        wait_until(lambda: station.pump.stats()["acked"] >= 80, 10, "some acks before the kill")
        # Freeze the broker so the pump's whole window is unacknowledged, then kill it: those
        # rows were handed to paho (and maybe the socket) but the broker never took them.
        broker.pause()
        wait_until(lambda: station.pump.stats()["in_flight"] == 10, 5, "a full in-flight window")
        broker.kill()
        killed_at = station.pump.stats()
        time.sleep(0.3)  # the outage lasts a while, with the writer still recording: the passage of time is the test
        broker.start()
        writer.join()

        assert station.pump.drain(20), f"outbox not drained: {station.pump.stats()}"
        n_alarms = sum(1 for i in range(total) if i % 25 == 7)
        wait_until(lambda: len(sub.unique()) >= total + n_alarms, 15, "every message at the subscriber")

        unique = sub.unique()
        got_ids = {p["event"]["event_id"] for p in unique.values() if p["_topic"].endswith("/screening")}
        assert got_ids == set(recorded), f"lost: {sorted(set(recorded) - got_ids)[:5]}"
        alarms = [p for p in unique.values() if p["_topic"].endswith("/alarm")]
        assert len(alarms) == n_alarms and all(p["event"]["alarm"] for p in alarms)
        assert len(unique) == total + n_alarms
        seqs = sorted({p["seq"] for p in unique.values()})
        assert seqs == list(range(1, total + 1))
        # After de-duplication the screening stream arrives in seq order: the lost window is re-sent
        # oldest first, before anything newer.
        screening_seqs = [p["seq"] for p in unique.values() if p["_topic"].endswith("/screening")]
        assert screening_seqs == list(range(1, total + 1)), "screening events out of seq order"
        stats = station.pump.stats()
        duplicates = len(sub.payloads()) - len(unique)
        print(
            f"\nbroker SIGKILL at {killed_at}; final pump {stats}; duplicates at subscriber: "
            f"{duplicates}; publisher {station.publisher.stats()}"
        )
        assert station.publisher.stats()["connects"] >= 2
        assert stats["forgotten"] >= 10 and stats["resent"] >= 10, "the lost window was re-sent"
    finally:
        station.close()
        sub.close()


# ----------------------------------------------------------------------------- availability

CHILD = r"""
import sys, time
from drivers.publish.mqtt import MqttPublisher
p = MqttPublisher(sys.argv[1], "station-st-01", sys.argv[2], will_payload=b"offline",
                  online_payload=b"online", keepalive=10)
p.start()
while not p.connected():
    time.sleep(0.01)
print("up", flush=True)
time.sleep(60)  # stay connected until the test SIGKILLs this process
"""


def test_status_online_will_offline_on_sigkill_and_stopped_on_clean_stop(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker", persistence=False)
    broker.start()
    watcher = Collector(broker.port, "watcher", STATUS, persistent=False)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, broker.url, STATUS],
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == b"up\n"
        wait_until(lambda: (STATUS, b"online", False) in watcher.raw() or (STATUS, b"online", True) in watcher.raw(), 5, "online status")

        child.send_signal(signal.SIGKILL)  # no DISCONNECT: the broker must publish the Will
        child.wait()
        wait_until(lambda: [p for _, p, _ in watcher.raw()][-1:] == [b"offline"], 5, "the Will")
        late = Collector(broker.port, "late-1", STATUS, persistent=False)
        wait_until(lambda: late.raw() == [(STATUS, b"offline", True)], 5, "retained offline")
        late.close()

        # A clean stop says "stopped" (retained) and the Will is not sent. MQTT 3.1.1 here, to
        # exercise the fallback protocol as well.
        pub = MqttPublisher(broker.url, "station-st-01", STATUS, will_payload=b"offline", online_payload=b"online", protocol="3.1.1")
        pub.start()
        wait_until(pub.connected, 5, "in-process publisher connected")
        wait_until(lambda: [p for _, p, _ in watcher.raw()][-1:] == [b"online"], 5, "online again")
        pub.stop()
        assert not pub.connected()
        with pytest.raises(NotConnectedError):
            pub.publish(f"{PREFIX}/x", b"x", 1)
        wait_until(lambda: [p for _, p, _ in watcher.raw()][-1:] == [b"stopped"], 5, "stopped")
        time.sleep(0.3)  # a Will would arrive after "stopped": a wait for nothing to happen
        assert [p for _, p, _ in watcher.raw()][-1] == b"stopped", "no Will after a clean stop"
        late = Collector(broker.port, "late-2", STATUS, persistent=False)
        wait_until(lambda: late.raw() == [(STATUS, b"stopped", True)], 5, "retained stopped")
        late.close()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        watcher.close()
        broker.kill()


def test_refused_connack_is_not_a_connection(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker", allow_anonymous=False)
    broker.start()
    pub = MqttPublisher(broker.url, "station-st-01", STATUS, will_payload=b"offline", online_payload=b"online")
    hooks: list[int] = []
    pub.on_connected.append(lambda: hooks.append(1))
    pub.start()
    try:
        wait_until(lambda: pub.last_error is not None, 5, "a refused CONNACK")
        assert "authori" in (pub.last_error or "").lower()
        assert not pub.connected() and hooks == []
    finally:
        pub.stop()
        broker.kill()


# ----------------------------------------------------------------------------- without a broker


class FakePublisher:
    """An in-memory transport: acks on demand, or inside publish() (the PUBACK-before-mid race)."""

    def __init__(self, *, ack_inside_publish: bool = False) -> None:
        self.on_connected: list[Callable[[], None]] = []
        self.ack_inside_publish = ack_inside_publish
        self.is_connected = True
        self.sent: list[tuple[int, str, bytes]] = []
        self._handler: Callable[[int], None] | None = None
        self._mid = 0
        self.lock = threading.Lock()

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool = False) -> int:
        if not self.is_connected:
            raise NotConnectedError("down")
        with self.lock:
            self._mid += 1
            mid = self._mid
            self.sent.append((mid, topic, payload))
        if self.ack_inside_publish and self._handler:
            self._handler(mid)  # the ack arrives before the caller learns the mid
        return mid

    def set_ack_handler(self, on_ack: Callable[[int], None]) -> None:
        self._handler = on_ack

    def connected(self) -> bool:
        return self.is_connected

    def ack(self, mid: int) -> None:
        assert self._handler is not None
        self._handler(mid)

    def reconnect(self) -> None:
        for hook in self.on_connected:
            hook()


def test_ack_before_publish_returns_is_not_lost(tmp_path: Path) -> None:
    with SqliteEventStore(tmp_path / "s.db", station_id="st-01", site="gate-a") as store:
        pub = FakePublisher(ack_inside_publish=True)
        pump = OutboxPump(store, pub, max_in_flight=3, poll_interval=0.05)
        for i in range(20):
            store.record(make_event(i))
        pump.start()
        try:
            assert pump.drain(5), pump.stats()
            assert pump.stats()["acked"] == 20 and pump.stats()["unknown_acks"] == 0
        finally:
            pump.stop()


def test_window_reconnect_and_ack_timeout(tmp_path: Path) -> None:
    now = [1000.0]
    with SqliteEventStore(tmp_path / "s.db", station_id="st-01", site="gate-a") as store:
        pub = FakePublisher()
        pump = OutboxPump(store, pub, max_in_flight=4, clock=lambda: now[0], ack_timeout=30, poll_interval=0.05)
        for i in range(6):
            store.record(make_event(i, alarm=(i == 5)))
        pump.start()
        try:
            wait_until(lambda: len(pub.sent) == 4, 2, "a full window")
            time.sleep(0.2)  # a fifth send would show here: a wait for nothing to happen
            assert len(pub.sent) == 4, "never more than max_in_flight unacknowledged"
            assert b'"alarm":true' in pub.sent[0][2], "alarms go first"

            pub.ack(pub.sent[0][0])
            wait_until(lambda: len(pub.sent) == 5, 2, "the window to slide")

            pub.reconnect()  # in-flight rows are forgotten and re-sent
            wait_until(lambda: len(pub.sent) == 9, 2, "re-send after reconnect")
            assert pump.stats()["forgotten"] == 4 and pump.stats()["resent"] == 4

            now[0] += 31  # nothing acked for longer than ack_timeout: forget and re-send
            wait_until(lambda: pump.stats()["ack_timeouts"] == 4, 2, "ack timeouts")
            wait_until(lambda: len(pub.sent) == 13, 2, "re-send after timeout")

            pub.is_connected = False
            for mid, _, _ in pub.sent[-4:]:
                pub.ack(mid)
            wait_until(lambda: pump.stats()["acked"] == 5, 2, "acks while offline still count")
            store.record(make_event(99))
            time.sleep(0.2)  # a send while disconnected would show here: a wait for nothing to happen
            assert len(pub.sent) == 13, "nothing is published while disconnected"
            assert pump.drain(0.2) is False

            pub.is_connected = True
            pump.wake()
            wait_until(lambda: len(pub.sent) == 16, 2, "publishing resumes")  # 2 left + 1 new
            for mid, _, _ in pub.sent[-3:]:
                pub.ack(mid)
            assert pump.drain(2)
            assert store.outbox_stats()["pending"] == 0
        finally:
            pump.stop()
        assert not pump.alive()


def test_publisher_reports_an_early_puback_once(tmp_path: Path) -> None:
    """paho may deliver on_publish(mid) before publish() has returned that mid (paho #361)."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    pub = MqttPublisher("mqtt://127.0.0.1:1", "x", STATUS, b"offline", b"online")
    acks: list[int] = []
    pub.set_ack_handler(acks.append)
    ok = ReasonCode(PacketTypes.PUBACK, "Success")
    pub._on_publish(pub._client, None, 7, ok, None)  # PUBACK first …
    assert acks == []
    pub._claim(7, report=True)  # … then publish() registers the mid: delivered now, once
    assert acks == [7]
    pub._claim(8, report=True)
    pub._on_publish(pub._client, None, 8, ok, None)  # normal order
    pub._on_publish(pub._client, None, 8, ok, None)  # a stray duplicate is not re-reported
    assert acks == [7, 8]
    pub._claim(9, report=False)  # the availability message: never reported
    pub._on_publish(pub._client, None, 9, ok, None)
    assert acks == [7, 8]
