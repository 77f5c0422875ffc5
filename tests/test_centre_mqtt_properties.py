"""Properties of the centre's own PUBLISH decode and read-ahead: any packet bytes, any split of the stream.

A PUBLISH packet comes from the broker, and through it from any station: whatever its bytes, the short
path either hands over exactly what the packet holds or leaves the packet to paho's own decode (which
answers a malformed one with ``MalformedPacket`` and drops the connection); it never raises anything
else. The read-ahead gives paho the stream's bytes in order, whatever sizes the socket delivers them in.
"""

from __future__ import annotations

import socket
from unittest import mock

import paho.mqtt.client as mqtt
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.exception import MalformedPacket

from station.centre.mqtt import RECV_CHUNK, _CentreClient


class _Probe(_CentreClient):
    """The client with paho's own decode replaced by a marker, to see which path a packet took."""

    def __init__(self) -> None:
        super().__init__(CallbackAPIVersion.VERSION2, client_id="probe", protocol=MQTTProtocolVersion.MQTTv5)
        self.manual_ack_set(True)
        self.delivered: list[tuple[str, bytes, int]] = []
        self.fast_deliver = lambda topic, payload, mid: self.delivered.append((topic, payload, mid))
        self.to_paho = 0

    def paho_decode(self) -> MQTTErrorCode:
        self.to_paho += 1
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def take(self, header: int, packet: bytes) -> MQTTErrorCode:
        self._in_packet["command"] = header
        self._in_packet["packet"] = bytearray(packet)
        return self._handle_publish()


def _publish(topic: bytes, mid: int, props: bytes, payload: bytes) -> bytes:
    return len(topic).to_bytes(2, "big") + topic + mid.to_bytes(2, "big") + props + payload


topics = st.one_of(st.text(max_size=80).map(lambda t: t.encode("utf-8")), st.binary(max_size=80))
props = st.one_of(st.just(b"\x00"), st.binary(min_size=1, max_size=12).filter(lambda b: b[0] != 0))
headers = st.integers(0x30, 0x3F)  # PUBLISH with every dup / QoS / retain bit


@settings(max_examples=400, deadline=None)
@given(header=headers, topic=topics, mid=st.integers(0, 0xFFFF), prop=props, payload=st.binary(max_size=300))
def test_a_well_formed_publish_is_handed_over_exactly_or_left_to_paho(
    header: int, topic: bytes, mid: int, prop: bytes, payload: bytes
) -> None:
    probe = _Probe()
    with mock.patch.object(mqtt.Client, "_handle_publish", lambda self: self.paho_decode()):
        assert probe.take(header, _publish(topic, mid, prop, payload)) == MQTTErrorCode.MQTT_ERR_SUCCESS
    try:
        text = topic.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    short = (header & 0x06) == 0x02 and prop == b"\x00" and text is not None
    if short:
        assert probe.delivered == [(text, payload, mid)] and probe.to_paho == 0
    else:
        assert probe.delivered == [] and probe.to_paho == 1


@settings(max_examples=400, deadline=None)
@given(header=headers, packet=st.binary(max_size=64))
def test_any_bytes_as_a_publish_never_raise_past_paho(header: int, packet: bytes) -> None:
    client = _Probe()  # paho's real decode this time
    client.on_message = lambda *a: None
    try:
        rc = client.take(header, packet)
    except MalformedPacket:
        return  # paho's answer to a packet it cannot decode: the connection is dropped, the loop goes on
    assert rc == MQTTErrorCode.MQTT_ERR_SUCCESS
    for topic, payload, mid in client.delivered:  # what the short path handed over is what the packet said
        assert isinstance(topic, str) and isinstance(payload, bytes) and 0 <= mid <= 0xFFFF
        assert packet.endswith(payload) and topic.encode() in packet


@settings(max_examples=60, deadline=None)
@given(
    stream=st.binary(min_size=1, max_size=3 * RECV_CHUNK // 2),
    asks=st.lists(st.integers(1, 5000), min_size=1, max_size=50),
)
def test_the_read_ahead_returns_the_stream_in_order_whatever_paho_asks_for(stream: bytes, asks: list[int]) -> None:
    a, b = socket.socketpair()
    try:
        a.sendall(stream)
        a.shutdown(socket.SHUT_WR)
        client = _Probe()
        client._sock = b  # type: ignore[assignment]
        got = bytearray()
        i = 0
        while True:
            chunk = client._sock_recv(asks[i % len(asks)])
            i += 1
            assert len(chunk) <= asks[(i - 1) % len(asks)]
            if not chunk:
                break
            got += chunk
        assert bytes(got) == stream
    finally:
        a.close()
        b.close()
