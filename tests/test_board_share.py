"""Two board replicas on one MQTT 5 shared subscription ($share/board/…) against a real mosquitto:
the event stream is split between them, each still sees every station's retained status (which a
shared subscription would not deliver), and both show every event from their common history."""

from __future__ import annotations

import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from station.board.run import Board, BoardOptions
from tests.support.board_auth import make_users
from tests.support.board_messages import screening, status
from tests.support.broker import Broker, mosquitto_available
from tests.support.waiting import wait_until

pytestmark = pytest.mark.skipif(not mosquitto_available(), reason="mosquitto not installed")

EVENTS = 40


def test_two_replicas_split_events_and_both_show_everything(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker")
    broker.start()
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="stations", protocol=MQTTProtocolVersion.MQTTv5)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    boards: list[Board] = []
    try:
        # Retained before any board exists: only an ordinary subscription delivers these.
        for name in ("lane-1", "lane-2"):
            pub.publish(*status(name, "online", 3), qos=1, retain=True).wait_for_publish(5)
        make_users(tmp_path / "shared" / "board-users.json")
        for i in range(2):
            b = Board(
                BoardOptions(
                    mqtt_url=broker.url,
                    data_dir=tmp_path / "shared",
                    share_group="board",
                    client_id=f"board-replica-{i}",
                    session_expiry_s=0,
                )
            )
            b.start()
            boards.append(b)
        for b in boards:
            assert b.subscriber.subscribed.wait(5), b.subscriber.stats()
            assert b.subscriber.last_error is None, b.subscriber.last_error
            assert any(f.startswith("$share/board/") for f in b.subscriber.filters)
        wait_until(lambda: all(b.state.received["status"] == 2 for b in boards), 5, "retained status on every replica")

        for i in range(EVENTS):
            pub.publish(*screening("lane-1" if i % 3 else "lane-2", f"ev{i}"), qos=1).wait_for_publish(5)
        wait_until(lambda: sum(b.state.received["events/screening"] for b in boards) >= EVENTS, 10, "all events")
        time.sleep(0.3)  # a duplicate delivery, were there one, would show up in the sum below
        split = [b.state.received["events/screening"] for b in boards]
        assert sum(split) == EVENTS, f"each event went to exactly one replica: {split}"
        assert all(n > 0 for n in split), f"the broker shared the stream between the replicas: {split}"

        expected = {"s1/lane-1": sum(1 for i in range(EVENTS) if i % 3), "s1/lane-2": sum(1 for i in range(EVENTS) if not i % 3)}
        for b in boards:
            b.state.refresh_history()  # the replica's periodic re-read (REFRESH_S) done now
            rows = {r["key"]: r for r in b.state.view()["stations"]}
            assert {k: r["today"]["screened"] for k, r in rows.items()} == expected
            assert all(r["state"] == "online" for r in rows.values())
    finally:
        for b in boards:
            b.stop()
        pub.disconnect()
        pub.loop_stop()
        broker.kill()
