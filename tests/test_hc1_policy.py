"""A genuine code without our colour (an EU DCC) is valid with colour None and never passes: ``policy.uncoloured_code``.

The verdict is a real one (an EU test vector judged by the station's CodeJudge against its signer's
certificate); the lane is driven by replayed observations with explicit timestamps.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from station.codes import hc1
from station.codes.judge import CodeJudge
from station.codes.trust_list import TrustStore, certificate_entry
from station.config import PolicySection, StationConfig
from station.domain.model import (
    Box,
    CodeColour,
    CodeObservation,
    CodeStatus,
    CodeVerdict,
    Decision,
    FaceDetection,
    FaceObservation,
    TemperatureMeasurement,
)
from station.domain.screening import ScreeningLane, ScreeningPolicy, ScreeningSettings
from station.domain.thermal import MeasureState, ThermalCalibration

VECTOR = Path(__file__).resolve().parent / "data" / "dgc-testdata" / "common" / "2DCode" / "raw" / "CO3.json"  # EC 256, valid
FACE = Box(200, 100, 360, 320)


def eu_verdict(tmp_path: Path) -> CodeVerdict:
    vector = json.loads(VECTOR.read_text(encoding="utf-8"))
    trust = tmp_path / "trust.json"
    trust.write_text(json.dumps({"certificates": [certificate_entry(base64.b64decode(vector["TESTCTX"]["CERTIFICATE"]))]}))
    clock = dt.datetime.fromisoformat(vector["TESTCTX"]["VALIDATIONCLOCK"]).timestamp()
    judge = CodeJudge([hc1.Hc1Verifier(TrustStore(None, trust))], salt=b"s" * 32, seen=None)
    return judge.verify(vector["PREFIX"].encode(), clock)


def screen(policy: ScreeningPolicy, verdict: CodeVerdict) -> tuple[Decision, str, dict[str, str]]:
    """One person stands at the gate, two normal readings, then the code: the lane's one decision."""
    lane = ScreeningLane(ScreeningSettings(), policy, ThermalCalibration(np.eye(3), offset_c=1.0))
    out = []
    for i in range(8):
        t = i * 0.1
        out.append(lane.on_faces(FaceObservation(i, t, t + 0.005, (FaceDetection(FACE, 0.9),), (640, 480), 5.0)))
    for t, core in ((0.45, 36.6), (0.55, 36.7)):
        out.append(lane.on_temperature(TemperatureMeasurement(MeasureState.MEASURED, t, core, core - 1.0, {}, 40, 1)))
    out.append(lane.on_code(CodeObservation(0, 0.7, 0.71, verdict, 8.0, "test")))
    for i in range(8, 80):  # the person stays while an invalid code waits for a better one (code_timeout_s)
        if any(out):
            break
        t = i * 0.1
        out.append(lane.on_faces(FaceObservation(i, t, t + 0.005, (FaceDetection(FACE, 0.9),), (640, 480), 5.0)))
    decided = [v for v in out if v is not None]
    assert len(decided) == 1, decided
    return decided[0].decision, decided[0].reason, decided[0].policy


def test_an_eu_certificate_is_valid_without_a_colour(tmp_path: Path) -> None:
    v = eu_verdict(tmp_path)
    assert (v.status, v.colour, v.reason) == (CodeStatus.VALID, None, "ok")
    assert v.detail["colour"] is None and v.detail["claim_set"] == "hcert" and v.detail["alg"] == "ES256"


@pytest.mark.parametrize("policy", [Decision.MANUAL_CHECK, Decision.DENY_CODE])
def test_the_lane_policy_decides_an_uncoloured_code(tmp_path: Path, policy: Decision) -> None:
    decision, reason, record = screen(ScreeningPolicy(uncoloured_code=policy), eu_verdict(tmp_path))
    assert (decision, reason) == (policy, "code_uncoloured")
    assert record["uncoloured_code"] == policy.value


def test_default_policy_is_manual_check_and_pass_cannot_be_configured() -> None:
    assert StationConfig().policy.uncoloured_code == "manual_check"
    assert ScreeningPolicy().uncoloured_code is Decision.MANUAL_CHECK
    assert "never passes" in (PolicySection.model_fields["uncoloured_code"].description or "")
    with pytest.raises(ValueError):
        PolicySection.model_validate({"uncoloured_code": "pass"})
    with pytest.raises(ValueError):
        ScreeningPolicy(uncoloured_code=Decision.PASS)


def test_the_configured_policy_reaches_the_lane() -> None:
    from station.app import lane_for

    cfg = StationConfig()
    cfg = cfg.model_copy(update={"policy": cfg.policy.model_copy(update={"uncoloured_code": "deny_code"})})
    assert lane_for(cfg).policy.uncoloured_code is Decision.DENY_CODE


@settings(max_examples=200, deadline=None)
@given(
    colour=st.sampled_from([None, *CodeColour]),
    status=st.sampled_from(list(CodeStatus)),
    yellow=st.sampled_from([Decision.MANUAL_CHECK, Decision.DENY_CODE]),
    uncoloured=st.sampled_from([Decision.MANUAL_CHECK, Decision.DENY_CODE]),
)
def test_only_a_valid_green_code_passes(colour: CodeColour | None, status: CodeStatus, yellow: Decision, uncoloured: Decision) -> None:
    verdict = CodeVerdict(status, colour, "ok" if status is CodeStatus.VALID else "x", "test")
    decision, _, _ = screen(ScreeningPolicy(yellow_code=yellow, uncoloured_code=uncoloured), verdict)
    assert (decision is Decision.PASS) == (status is CodeStatus.VALID and colour is CodeColour.GREEN)
