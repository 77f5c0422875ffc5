"""An ID card read as a decision source: verdicts, the lane's decisions under the named policies, the centre look-up."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import pytest

from drivers.publish.mqtt import MqttPublisher
from station.codes.idcard import HASH_CENTRE, HASH_STATION, CardFacts, IdHasher, KeyFileError, judge_card, load_centre_key
from station.codes.online import OnlineVerifier
from station.domain.model import Box, CodeColour, CodeObservation, CodeStatus, CodeVerdict, Decision
from station.domain.screening import IDCARD_SOURCE, ScreeningPolicy
from station.link.command_auth import CommandKeys, new_signing_key, sign_lookup_answer
from tests.support.broker import Broker, mosquitto_available
from tests.support.command_rig import Centre, write_public_keys
from tests.support.screening_obs import faces, lane, temp
from tests.support.waiting import wait_until

ID_NUMBER = "11010119900307803X"
HASHER = IdHasher(b"centre-key-for-tests-only-32byte", HASH_CENTRE)
BASE = "checkpoint/v1/gate-a/st-01"
NOW = time.time()


def _facts(valid_to: dt.date | None = dt.date(2040, 1, 1), kind: str = HASH_CENTRE) -> CardFacts:
    return CardFacts(HASHER(ID_NUMBER), "1****************X", kind, dt.date(2020, 1, 1), valid_to)


class CentreAnswer:
    """A look-up that answers like the online verifier would (the wire is covered by the broker test below)."""

    def __init__(self, verdict: CodeVerdict) -> None:
        self.verdict = verdict
        self.asked: list[str] = []

    def lookup(self, subject_hash: str, now_wall: float) -> CodeVerdict:
        self.asked.append(subject_hash)
        return self.verdict


def _decide(verdict: CodeVerdict, policy: ScreeningPolicy | None = None) -> tuple[Decision, str, dict[str, Any]]:
    """One person at the gate: face, two normal readings, then the card; the lane's verdict."""
    ln = lane(policy)
    box = Box(200, 100, 360, 320)
    out = None
    for i in range(6):
        out = out or ln.on_faces(faces(i * 0.1, box))
    out = out or ln.on_temperature(temp(0.6, 36.6)) or ln.on_temperature(temp(0.7, 36.7))
    out = out or ln.on_code(CodeObservation(-1, 0.8, 0.9, verdict, 1.0, "idcard"))
    assert out is not None
    return out.decision, out.reason, out.code


@pytest.mark.parametrize(
    ("answer", "decision", "reason"),
    [
        (CodeVerdict(CodeStatus.VALID, CodeColour.GREEN, "ok", "online"), Decision.PASS, "ok"),
        (CodeVerdict(CodeStatus.VALID, CodeColour.RED, "ok", "online"), Decision.DENY_CODE, "code_red"),
        (CodeVerdict(CodeStatus.VALID, CodeColour.YELLOW, "ok", "online"), Decision.MANUAL_CHECK, "code_yellow"),
        (CodeVerdict(CodeStatus.INVALID, None, "unknown_token", "online"), Decision.MANUAL_CHECK, "idcard_unverifiable:idcard_unknown"),
        (
            CodeVerdict(CodeStatus.UNVERIFIABLE, None, "online_timeout", "online"),
            Decision.MANUAL_CHECK,
            "idcard_unverifiable:online_timeout",
        ),
    ],
)
def test_the_centre_answer_decides_like_a_health_code(answer: CodeVerdict, decision: Decision, reason: str) -> None:
    centre = CentreAnswer(answer)
    verdict = judge_card(_facts(), NOW, centre)
    assert centre.asked == [HASHER(ID_NUMBER)]
    assert verdict.source == IDCARD_SOURCE and verdict.subject_ref == HASHER(ID_NUMBER)
    got, why, record = _decide(verdict)
    assert (got, why) == (decision, reason)
    assert record["source"] == "idcard" and record["decoder"] == "idcard"
    assert record["subject_ref"] == HASHER(ID_NUMBER) and record["id_masked"] == "1****************X"
    assert record["card_valid_to"] == "2040-01-01" and record["id_hash_key"] == HASH_CENTRE
    assert ID_NUMBER not in json.dumps(record)


def test_an_expired_card_has_its_own_reason_and_is_never_looked_up() -> None:
    centre = CentreAnswer(CodeVerdict(CodeStatus.VALID, CodeColour.GREEN, "ok", "online"))
    verdict = judge_card(_facts(valid_to=dt.date(2001, 1, 1)), NOW, centre)
    assert (verdict.status, verdict.reason, centre.asked) == (CodeStatus.UNVERIFIABLE, "card_expired", [])
    assert _decide(verdict)[:2] == (Decision.MANUAL_CHECK, "idcard_unverifiable:card_expired")
    assert _decide(verdict, ScreeningPolicy(idcard_unknown=Decision.DENY_CODE))[:2] == (
        Decision.DENY_CODE,
        "idcard_unverifiable:card_expired",
    )


def test_a_long_term_card_never_expires() -> None:
    centre = CentreAnswer(CodeVerdict(CodeStatus.VALID, CodeColour.GREEN, "ok", "online"))
    verdict = judge_card(_facts(valid_to=None), NOW, centre)
    assert verdict.status is CodeStatus.VALID and verdict.detail["card_valid_to"] == "long_term"


def test_without_a_centre_key_no_lookup_is_made() -> None:
    centre = CentreAnswer(CodeVerdict(CodeStatus.VALID, CodeColour.GREEN, "ok", "online"))
    verdict = judge_card(_facts(kind=HASH_STATION), NOW, centre)
    assert (verdict.reason, centre.asked) == ("no_centre_key", [])
    assert _decide(verdict)[:2] == (Decision.MANUAL_CHECK, "idcard_unverifiable:no_centre_key")
    assert judge_card(_facts(), NOW, None).reason == "online_unreachable"


def test_the_idcard_policy_never_passes() -> None:
    with pytest.raises(ValueError):
        ScreeningPolicy(idcard_unknown=Decision.PASS)
    assert ScreeningPolicy().as_record()["idcard_unknown"] == "manual_check"


@pytest.mark.parametrize(("text", "why"), [("zz", "not hex"), ("00" * 8, "at least 16")])
def test_an_unusable_key_file_says_why(tmp_path: Path, text: str, why: str) -> None:
    path = tmp_path / "key"
    path.write_text(text)
    with pytest.raises(KeyFileError, match=why):
        load_centre_key(path)
    with pytest.raises(KeyFileError, match="cannot read"):
        load_centre_key(tmp_path / "missing")


@pytest.mark.slow
@pytest.mark.skipif(not mosquitto_available(), reason="mosquitto not installed")
def test_the_lookup_sends_only_the_keyed_hash_and_believes_only_a_signed_answer(tmp_path: Path) -> None:
    key = new_signing_key()
    broker = Broker(tmp_path / "broker")
    broker.start()
    pub = MqttPublisher(broker.url, "station-st-01", f"{BASE}/status", b"offline", b"online")
    pub.start()
    wire = Centre(broker.port, "wiretap", "#")
    centre = Centre(broker.port, "centre", f"{BASE}/lookup/idcard")
    try:
        wait_until(pub.connected, 5, "station connected")
        assert wire.subscribed.wait(5) and centre.subscribed.wait(5)
        keys = CommandKeys(write_public_keys(tmp_path / "centre-keys.pem", key), tmp_path / "data")
        lookup = OnlineVerifier(
            BASE, timeout_s=2.0, identity={"station_id": "st-01", "site": "gate-a"}, keys=keys, kind="idcard", subject_field="id_hmac"
        )
        lookup.attach(pub)
        residents = {HASHER(ID_NUMBER): {"found": True, "colour": "green", "issuer": "district-7"}}

        def answer(client: Any, userdata: Any, msg: Any) -> None:
            req = json.loads(msg.payload)
            signed = sign_lookup_answer(
                key,
                request_id=req["id"],
                station=req["station_id"],
                site=req["site"],
                token_sha256=req["id_hmac"],
                result=residents.get(req["id_hmac"], {"found": False}),
            )
            client.publish(f"{msg.topic}/result", json.dumps(signed), qos=1)

        centre.client.on_message = answer
        # The station's SUBACK for the result topic is not exposed: wait for one answered look-up.
        wait_until(lambda: judge_card(_facts(), time.time(), lookup).status is CodeStatus.VALID, 10, "a signed green answer")
        verdict = judge_card(_facts(), time.time(), lookup)
        assert (verdict.status, verdict.colour, verdict.source) == (CodeStatus.VALID, CodeColour.GREEN, "idcard")
        unknown = CardFacts(HASHER("110101194001011234"), "1****************4", HASH_CENTRE, dt.date(2020, 1, 1), None)
        assert judge_card(unknown, time.time(), lookup).reason == "idcard_unknown"
        requests = [json.loads(p) for t, p, _ in wire.raw() if t == f"{BASE}/lookup/idcard"]
        assert requests and all(r["id_hmac"] in (HASHER(ID_NUMBER), unknown.id_hash) for r in requests)
        for _topic, payload, _ in wire.raw():
            assert ID_NUMBER.encode() not in payload and b"110101194001011234" not in payload
    finally:
        wire.close()
        centre.close()
        pub.stop()
        broker.stop()
