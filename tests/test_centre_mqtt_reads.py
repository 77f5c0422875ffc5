"""The centre's subscriber reads ahead and cuts QoS 1 PUBLISH packets itself: same deliveries as paho's own path.

A real mosquitto; a publisher sends a mix the short path takes (QoS 1, no properties, small and
larger than one 64 KiB read) and one it must leave to paho (properties, QoS 0). Every message
arrives once, byte for byte, on its topic; the acknowledgements reach the broker (nothing comes back
on a new connection of the same session).
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from station.centre.mqtt import RECV_CHUNK, CentreSubscriber, Delivery
from tests.support.broker import mosquitto_available, mosquitto_broker

pytestmark = pytest.mark.skipif(not mosquitto_available(), reason="mosquitto not installed")

PREFIX = "checkpoint/v1"


def _publish_all(port: int, messages: list[tuple[str, bytes, int, bool]]) -> None:
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="reads-pub", protocol=MQTTProtocolVersion.MQTTv5)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    try:
        infos = []
        for topic, payload, qos, with_props in messages:
            props = None
            if with_props:
                props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                props.UserProperty = ("origin", "test")
            infos.append(pub.publish(topic, payload, qos=qos, properties=props))
        for info in infos:
            info.wait_for_publish(20)
    finally:
        pub.loop_stop()
        pub.disconnect()


def _subscriber(url: str, got: list[Delivery], expect: int) -> tuple[CentreSubscriber, threading.Event]:
    done = threading.Event()
    holder: list[CentreSubscriber] = []

    def on_delivery(d: Delivery) -> None:
        got.append(d)
        holder[0].ack(d)
        if len(got) >= expect:
            done.set()

    sub = CentreSubscriber(url, on_delivery, prefix=PREFIX, share_group="reads", client_id="reads-centre", receive_maximum=500)
    holder.append(sub)
    return sub, done


def test_every_message_arrives_once_byte_for_byte_and_its_ack_reaches_the_broker(tmp_path: Path) -> None:
    big = bytes(range(256)) * ((3 * RECV_CHUNK) // 256 + 7)  # spans several reads ahead
    messages: list[tuple[str, bytes, int, bool]] = []
    for i in range(3000):
        station = f"gate-{i % 7}"
        if i % 500 == 250:
            payload = big + i.to_bytes(4, "big")
        else:
            payload = f'{{"msg_id": "m{i}", "pad": "{"x" * (i % 1500)}"}}'.encode()
        qos, props = (0, False) if i % 97 == 0 else (1, i % 41 == 0)
        messages.append((f"{PREFIX}/site-{i % 3}/{station}/events/screening", payload, qos, props))
    with mosquitto_broker(tmp_path) as broker:
        got: list[Delivery] = []
        sub, done = _subscriber(broker.url, got, len(messages))
        sub.start()
        assert sub.subscribed.wait(10)
        _publish_all(broker.port, messages)
        assert done.wait(30), f"{len(got)} of {len(messages)} arrived"
        sub.stop()
        sent = sorted((t, hashlib.sha256(p).hexdigest(), q) for t, p, q, _ in messages)
        received = sorted((d.topic, hashlib.sha256(d.payload).hexdigest(), d.qos) for d in got)
        assert received == sent
        assert {d.mid for d in got if d.qos == 1} and all(d.mid > 0 for d in got if d.qos == 1)
        assert sub.acks == sum(1 for _, _, q, _ in messages if q == 1)
        # The short path took exactly the QoS 1 messages without properties; paho's own took the rest.
        assert sub.stats()["publishes_cut_short"] == sum(1 for _, _, q, props in messages if q == 1 and not props)

        # The same session again: every QoS 1 message was acknowledged, so none is sent again.
        again: list[Delivery] = []
        sub2, marker_in = _subscriber(broker.url, again, 1)
        sub2.start()
        assert sub2.subscribed.wait(10)
        _publish_all(broker.port, [(f"{PREFIX}/site-0/gate-0/events/audit", b'{"last": true}', 1, False)])
        assert marker_in.wait(10)
        sub2.stop()
        # A message whose ack was lost comes back right after CONNACK, so before this marker.
        assert [d.payload for d in again] == [b'{"last": true}']
