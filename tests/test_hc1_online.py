"""Online (token) codes over a real mosquitto: a responder answers, nobody answers, no broker.

The station's own MQTT publisher (drivers.publish.mqtt) carries the request; the "command centre"
is a plain paho client holding the centre key that signs answers (station.link.command_auth). Whatever
happens on the wire, the token itself is never sent; an answer not signed by the centre for this
very request never makes a code valid.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from drivers.publish.mqtt import MqttPublisher
from station.codes.judge import CodeJudge
from station.codes.online import OnlineVerifier, token_sha256
from station.domain.model import CodeColour, CodeObservation, CodeStatus, Decision
from station.link.command_auth import CommandKeys, new_signing_key, sign_lookup_answer
from tests.support.broker import Broker, mosquitto_available
from tests.support.command_rig import Centre, write_public_keys
from tests.support.waiting import wait_until

# A broker and a publisher per test, and look-ups that wait out their 0.6 s timeout: out of the fast loop.
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not mosquitto_available(), reason="mosquitto not installed")]

BASE = "checkpoint/v1/gate-a/st-01"
TOKEN = "tok_7Hq2ZpLw9XkR4sVb"
PAYLOAD = f"HCT1:{TOKEN}".encode()
CENTRE_KEY = new_signing_key()


@pytest.fixture
def rig(tmp_path: Path):
    broker = Broker(tmp_path / "broker")
    broker.start()
    pub = MqttPublisher(broker.url, "station-st-01", f"{BASE}/status", b"offline", b"online")
    pub.start()
    wait_until(pub.connected, 5, "station connected")
    keys = CommandKeys(write_public_keys(tmp_path / "centre-keys.pem", CENTRE_KEY), tmp_path / "data")
    verifier = OnlineVerifier(BASE, timeout_s=0.6, identity={"station_id": "st-01", "site": "gate-a"}, keys=keys)
    verifier.attach(pub)
    wire = Centre(broker.port, "wiretap", "#")
    assert wire.subscribed.wait(5)
    # The station's SUBACK for the result topic: the publisher does not expose it, so this waits
    # a fixed time (a condition to wait on would be better).
    time.sleep(0.2)
    try:
        yield broker, pub, verifier, wire
    finally:
        wire.client.disconnect()  # before loop_stop(): paho's thread then ends at once, not after 1 s
        wire.client.loop_stop()
        pub.stop()
        broker.stop()


def _assert_token_never_on_the_wire(wire: Centre) -> None:
    for topic, payload, _ in wire.raw():
        assert TOKEN.encode() not in payload and TOKEN.encode() not in topic.encode()


def test_nobody_answering_gives_manual_check_never_pass(rig) -> None:
    _broker, _pub, verifier, wire = rig
    v = CodeJudge([verifier], salt=b"s" * 32, seen=None).verify(PAYLOAD, time.time())
    assert (v.status, v.reason, v.source) == (CodeStatus.UNVERIFIABLE, "online_timeout", "online")
    requests = [json.loads(p) for t, p, _ in wire.raw() if t == f"{BASE}/lookup/code"]
    assert len(requests) == 1 and requests[0]["token_sha256"] == token_sha256(TOKEN) and requests[0]["id"]
    _assert_token_never_on_the_wire(wire)


def test_a_responder_answering_by_correlation_id_decides_the_colour(rig) -> None:
    broker, _pub, verifier, wire = rig
    centre = Centre(broker.port, "centre", f"{BASE}/lookup/code")
    assert centre.subscribed.wait(5)
    known = {token_sha256(TOKEN): {"found": True, "colour": "green", "expires": time.time() + 3600, "issuer": "district-7"}}

    def answer(client, userdata, msg) -> None:
        req = json.loads(msg.payload)
        # A stray reply with another id first: it must not be taken for ours.
        stray = sign_lookup_answer(
            CENTRE_KEY,
            request_id="someone-else",
            station="st-01",
            site="gate-a",
            token_sha256=req["token_sha256"],
            result={"found": True, "colour": "red"},
        )
        client.publish(f"{msg.topic}/result", json.dumps(stray), qos=1)
        result = known.get(req["token_sha256"], {"found": False})
        signed = sign_lookup_answer(
            CENTRE_KEY, request_id=req["id"], station=req["station_id"], site=req["site"], token_sha256=req["token_sha256"], result=result
        )
        client.publish(f"{msg.topic}/result", json.dumps(signed), qos=1)

    centre.client.on_message = answer
    try:
        v = verifier.verify(PAYLOAD, time.time())
        assert (v.status, v.colour, v.reason, v.detail["issuer"]) == (CodeStatus.VALID, CodeColour.GREEN, "ok", "district-7")
        unknown = verifier.verify(b"HCT1:tok_unknown_000000", time.time())
        assert (unknown.status, unknown.reason) == (CodeStatus.INVALID, "unknown_token")
        known[token_sha256(TOKEN)] = {"found": True, "colour": "green", "expires": time.time() - 10}
        assert verifier.verify(PAYLOAD, time.time()).status is CodeStatus.EXPIRED
    finally:
        centre.client.disconnect()  # before loop_stop(): paho's thread then ends at once, not after 1 s
        centre.client.loop_stop()
    _assert_token_never_on_the_wire(wire)


def test_no_broker_gives_manual_check_at_once(rig) -> None:
    broker, pub, verifier, _wire = rig
    broker.kill()
    wait_until(lambda: not pub.connected(), 5, "link down")
    v = verifier.verify(PAYLOAD, time.time())
    assert (v.status, v.reason) == (CodeStatus.UNVERIFIABLE, "online_unreachable")


def test_non_token_payloads_are_left_to_other_verifiers() -> None:
    v = OnlineVerifier(BASE).verify(b"HC1:ABC", time.time())
    assert (v.status, v.reason) == (CodeStatus.INVALID, "unknown_format")
    assert OnlineVerifier(BASE).verify(b"HCT1:short", time.time()).reason == "bad_token"


def _answer_with(broker: Broker, make: Any) -> Centre:
    """A "centre" that answers every look-up with ``make(request)`` (a dict, sent as JSON)."""
    centre = Centre(broker.port, f"answerer-{id(make)}", f"{BASE}/lookup/code")
    assert centre.subscribed.wait(5)

    def answer(client, userdata, msg) -> None:
        client.publish(f"{msg.topic}/result", json.dumps(make(json.loads(msg.payload))), qos=1)

    centre.client.on_message = answer
    return centre


def _signed_green(req: dict[str, Any], key: Any = CENTRE_KEY, **override: Any) -> dict[str, Any]:
    fields = {"request_id": req["id"], "station": req["station_id"], "site": req["site"], "token_sha256": req["token_sha256"], **override}
    return sign_lookup_answer(key, result={"found": True, "colour": "green", "expires": time.time() + 3600}, **fields)


FORGED_KEY = new_signing_key()
UNTRUSTED_ANSWERS = {
    "unsigned": lambda req: {"id": req["id"], "ok": True, "result": {"found": True, "colour": "green"}},
    "unknown_key": lambda req: _signed_green(req, FORGED_KEY),
    "bad_signature": lambda req: {**_signed_green(req), "result": {"found": True, "colour": "green", "issuer": "x"}},
    "wrong_station": lambda req: _signed_green(req, station="st-02"),
    "wrong_site": lambda req: _signed_green(req, site="gate-b"),
    "wrong_token": lambda req: _signed_green(req, token_sha256="0" * 64),
    "malformed": lambda req: {**_signed_green(req), "extra": 1},
}


@pytest.mark.parametrize("why", sorted(UNTRUSTED_ANSWERS))
def test_an_untrusted_green_answer_ends_in_manual_check_never_pass(rig, why: str) -> None:
    """An answer that says green but is not the centre's signed answer to this request: unverifiable,
    and the lane's policy (the real state machine) decides manual_check."""
    from station.domain.screening import (
        ScreeningLane,
        ScreeningPolicy,
        ScreeningSettings,
    )
    from station.domain.thermal import ThermalCalibration

    broker, _pub, verifier, _wire = rig
    centre = _answer_with(broker, UNTRUSTED_ANSWERS[why])
    try:
        v = CodeJudge([verifier], salt=b"s" * 32, seen=None).verify(PAYLOAD, time.time())
    finally:
        centre.close()
    assert (v.status, v.reason, v.colour) == (CodeStatus.UNVERIFIABLE, "online_unverified", None)
    assert v.detail["answer_auth"] == why and verifier.counters["unverified"] == 1
    decision = _decide(ScreeningLane(ScreeningSettings(), ScreeningPolicy(), ThermalCalibration(np.eye(3), offset_c=1.0)), v)
    assert decision == (Decision.MANUAL_CHECK, "code_unverifiable:online_unverified")


def test_a_signed_green_answer_passes_through_the_same_lane(rig) -> None:
    from station.domain.screening import (
        ScreeningLane,
        ScreeningPolicy,
        ScreeningSettings,
    )
    from station.domain.thermal import ThermalCalibration

    broker, _pub, verifier, _wire = rig
    centre = _answer_with(broker, _signed_green)
    try:
        v = CodeJudge([verifier], salt=b"s" * 32, seen=None).verify(PAYLOAD, time.time())
    finally:
        centre.close()
    assert (v.status, v.colour, v.reason) == (CodeStatus.VALID, CodeColour.GREEN, "ok")
    lane = ScreeningLane(ScreeningSettings(), ScreeningPolicy(), ThermalCalibration(np.eye(3), offset_c=1.0))
    assert _decide(lane, v) == (Decision.PASS, "ok")


def test_a_retained_or_oversized_answer_is_never_read(rig) -> None:
    broker, pub, verifier, wire = rig
    topic = f"{BASE}/lookup/code/result"
    wire.client.publish(topic, b'{"id": "x", "ok": true' + b" " * 5000 + b"}", qos=1)
    wait_until(lambda: pub.intake_drops(topic)["oversize"] == 1, 5, "the oversized answer dropped unread")
    assert verifier.counters["late"] == 0, "it never reached the verifier"
    # A retained answer waits on the broker for every station that connects later: never read.
    wire.client.publish(topic, json.dumps({"id": "x", "ok": True}), qos=1, retain=True).wait_for_publish(5)
    later = MqttPublisher(broker.url, "station-st-01-later", f"{BASE}/status-later", b"offline", b"online")
    fresh = OnlineVerifier(BASE, timeout_s=0.6, identity={"station_id": "st-01", "site": "gate-a"})
    fresh.attach(later)
    later.start()
    try:
        wait_until(lambda: later.intake_drops(topic)["retained"] == 1, 5, "the retained answer dropped unread")
        assert fresh.counters["late"] == 0
    finally:
        later.stop()


def _decide(lane: Any, verdict: Any) -> tuple[Decision, str]:
    """One person: face in the zone, a normal temperature twice, then the judged code; the lane's decision."""
    from station.domain.model import (
        Box,
        FaceDetection,
        FaceObservation,
        TemperatureMeasurement,
    )
    from station.domain.thermal import MeasureState

    decided = []
    for i in range(8):
        t = i * 0.1
        faces = FaceObservation(0, t, t + 0.005, (FaceDetection(Box(200, 100, 360, 320), 0.9),), (640, 480), 5.0)
        decided.append(lane.on_faces(faces))
        if i in (5, 6):
            decided.append(lane.on_temperature(TemperatureMeasurement(MeasureState.MEASURED, t, 36.6, 35.6, {}, 40, 1)))
    decided.append(lane.on_code(CodeObservation(0, 0.75, 0.76, verdict, 8.0, "test")))
    verdicts = [d for d in decided if d is not None]
    assert len(verdicts) == 1, verdicts
    return verdicts[0].decision, verdicts[0].reason
