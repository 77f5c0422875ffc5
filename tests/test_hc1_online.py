"""Online (token) codes over a real mosquitto: a responder answers, nobody answers, no broker.

The station's own MQTT publisher (drivers.publish.mqtt) carries the request; the "command centre"
is a plain paho client. Whatever happens on the wire, the token itself is never sent.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from drivers.codes.guards import CodeJudge
from drivers.codes.online import OnlineVerifier, token_sha256
from drivers.publish.mqtt import MqttPublisher
from station.domain.model import CodeColour, CodeStatus
from tests.mosquitto import Broker, mosquitto_available
from tests.test_sync import Collector, wait_until

pytestmark = pytest.mark.skipif(not mosquitto_available(), reason="mosquitto not installed")

BASE = "checkpoint/v1/gate-a/st-01"
TOKEN = "tok_7Hq2ZpLw9XkR4sVb"
PAYLOAD = f"HCT1:{TOKEN}".encode()


@pytest.fixture
def rig(tmp_path: Path):  # noqa: ANN201
    broker = Broker(tmp_path / "broker")
    broker.start()
    pub = MqttPublisher(broker.url, "station-st-01", f"{BASE}/status", b"offline", b"online")
    pub.start()
    wait_until(pub.connected, 5, "station connected")
    verifier = OnlineVerifier(BASE, timeout_s=0.6, identity={"station_id": "st-01", "site": "gate-a"})
    verifier.attach(pub)
    wire = Collector(broker.port, "wiretap", "#", persistent=False)
    assert wire.subscribed.wait(5)
    time.sleep(0.2)  # the station's SUBACK for the result topic
    try:
        yield broker, pub, verifier, wire
    finally:
        wire.client.loop_stop()
        wire.client.disconnect()
        pub.stop()
        broker.stop()


def _assert_token_never_on_the_wire(wire: Collector) -> None:
    for topic, payload, _ in wire.raw():
        assert TOKEN.encode() not in payload and TOKEN.encode() not in topic.encode()


def test_nobody_answering_gives_manual_check_never_pass(rig) -> None:  # noqa: ANN001
    broker, pub, verifier, wire = rig
    v = CodeJudge([verifier], salt=b"s" * 32, seen=None).verify(PAYLOAD, time.time())
    assert (v.status, v.reason, v.source) == (CodeStatus.UNVERIFIABLE, "online_timeout", "online")
    requests = [json.loads(p) for t, p, _ in wire.raw() if t == f"{BASE}/lookup/code"]
    assert len(requests) == 1 and requests[0]["token_sha256"] == token_sha256(TOKEN) and requests[0]["id"]
    _assert_token_never_on_the_wire(wire)


def test_a_responder_answering_by_correlation_id_decides_the_colour(rig) -> None:  # noqa: ANN001
    broker, pub, verifier, wire = rig
    centre = Collector(broker.port, "centre", f"{BASE}/lookup/code", persistent=False)
    assert centre.subscribed.wait(5)
    known = {token_sha256(TOKEN): {"found": True, "colour": "green", "expires": time.time() + 3600, "issuer": "district-7"}}

    def answer(client, userdata, msg) -> None:  # noqa: ANN001
        req = json.loads(msg.payload)
        # A stray reply with another id first: it must not be taken for ours.
        client.publish(f"{msg.topic}/result", json.dumps({"id": "someone-else", "ok": True,
                                                          "result": {"found": True, "colour": "red"}}), qos=1)
        result = known.get(req["token_sha256"], {"found": False})
        client.publish(f"{msg.topic}/result", json.dumps({"id": req["id"], "ok": True, "result": result}), qos=1)

    centre.client.on_message = answer
    try:
        v = verifier.verify(PAYLOAD, time.time())
        assert (v.status, v.colour, v.reason, v.detail["issuer"]) == (CodeStatus.VALID, CodeColour.GREEN, "ok", "district-7")
        unknown = verifier.verify(b"HCT1:tok_unknown_000000", time.time())
        assert (unknown.status, unknown.reason) == (CodeStatus.INVALID, "unknown_token")
        known[token_sha256(TOKEN)] = {"found": True, "colour": "green", "expires": time.time() - 10}
        assert verifier.verify(PAYLOAD, time.time()).status is CodeStatus.EXPIRED
    finally:
        centre.client.loop_stop()
        centre.client.disconnect()
    _assert_token_never_on_the_wire(wire)


def test_no_broker_gives_manual_check_at_once(rig) -> None:  # noqa: ANN001
    broker, pub, verifier, wire = rig
    broker.kill()
    wait_until(lambda: not pub.connected(), 5, "link down")
    v = verifier.verify(PAYLOAD, time.time())
    assert (v.status, v.reason) == (CodeStatus.UNVERIFIABLE, "online_unreachable")


def test_non_token_payloads_are_left_to_other_verifiers() -> None:
    v = OnlineVerifier(BASE).verify(b"HC1:ABC", time.time())
    assert (v.status, v.reason) == (CodeStatus.INVALID, "unknown_format")
    assert OnlineVerifier(BASE).verify(b"HCT1:short", time.time()).reason == "bad_token"
