"""A station's store, publisher and pump against a real broker, and a back end that records what arrives."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from drivers.publish.mqtt import MqttPublisher
from station.link.sync import OutboxPump
from station.store.events import SqliteEventStore
from tests.support.broker import Broker

PREFIX = "checkpoint/v1/gate-a/st-01"


STATUS = f"{PREFIX}/status"


class Collector:
    """A subscriber that records every message it receives (duplicates included)."""

    def __init__(self, url_port: int, client_id: str, topic: str, *, persistent: bool) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.topic = topic
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv311,
            clean_session=not persistent,
        )
        self.client.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.connect_async("127.0.0.1", url_port, 30)
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc == 0:
            client.subscribe(self.topic, qos=1)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def payloads(self) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(json.loads(p), _topic=t) for t, p, _ in self.messages if "/events/" in t]

    def unique(self) -> dict[str, dict[str, Any]]:
        """First copy of each message, keyed (and de-duplicated) by msg_id, in arrival order."""
        out: dict[str, dict[str, Any]] = {}
        for p in self.payloads():
            out.setdefault(p["msg_id"], p)
        return out

    def raw(self) -> list[tuple[str, bytes, bool]]:
        with self.lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Station:
    """Store + publisher + pump, wired as the composition root would wire them."""

    def __init__(self, tmp_path: Path, broker: Broker, *, protocol: str = "5") -> None:
        self.store = SqliteEventStore(tmp_path / "station.db", station_id="st-01", site="gate-a")
        self.session = self.store.begin_session()
        self.publisher = MqttPublisher(
            broker.url,
            "station-st-01",
            STATUS,
            will_payload=b"offline",
            online_payload=b"online",
            keepalive=10,
            protocol=protocol,  # type: ignore[arg-type]
        )
        self.pump = OutboxPump(self.store, self.publisher, max_in_flight=10)
        self.pump.start()
        self.publisher.start()

    def close(self) -> None:
        self.pump.stop()
        self.publisher.stop()
        self.store.close()


def backend_session(broker: Broker) -> Collector:
    """Create the back end's persistent subscription, and make the broker persist it."""
    broker.start()
    sub = Collector(broker.port, "backend", f"{PREFIX}/events/#", persistent=True)
    assert sub.subscribed.wait(5), "subscriber did not subscribe"
    broker.stop()  # clean stop: mosquitto writes the session (with its subscription) to disk
    return sub
