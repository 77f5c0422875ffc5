"""HC1 dates judged against a wall clock that is not synchronised follow ``policy.unsynced_clock_validity``.

Real codes from the DEMO ONLY issuer judged by the station's CodeJudge (HC1 against the demo trust
list) with the station's clock saying unsynced; the lane is driven by replayed observations. Under
the default ``manual_check`` a code is a staff check whatever the wrong clock made of its dates (a
green code seen at 1970 is "not yet valid", a day ahead it is "expired"); ``trust_wall_clock`` keeps
the verdict. The decision records the policy and its reason names it.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from sim.issuer import demo_issuer, write_demo_trust_list
from station.app import build_code_judge, lane_for
from station.config import ConfigError, StationConfig, load_config, validate_text
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
from station.domain.prompts import reason_words
from station.domain.screening import JUDGED_UNSYNCED, ScreeningLane, ScreeningPolicy, ScreeningSettings
from station.domain.thermal import MeasureState, ThermalCalibration
from tests.support.clocks import EPOCH_1970

FACE = Box(200, 100, 360, 320)
NOW = time.time()


def judge_at(tmp_path: Path, payload: bytes, wall: float, synced: bool) -> CodeVerdict:
    """Judge ``payload`` with the station's judge (as the app builds it) at wall time ``wall``."""
    cfg = StationConfig()
    cfg.codes.trust_list_file = str(write_demo_trust_list(tmp_path))
    cfg.codes.verifiers = ["hc1"]
    judge = build_code_judge(cfg, tmp_path / "data", clock_synced=lambda: synced)
    try:
        return judge.verify(payload, wall)
    finally:
        judge.close()


def green(now: float = NOW) -> bytes:
    return demo_issuer().issue(CodeColour.GREEN, iat=int(now) - 600, exp=int(now) + 86400, holder="p-1").encode()


def screen(policy: ScreeningPolicy, verdict: CodeVerdict) -> tuple[Decision, str, dict[str, str], dict]:
    """One person at the gate, two normal readings, then the code: the lane's one decision."""
    lane = ScreeningLane(ScreeningSettings(), policy, ThermalCalibration(np.eye(3), offset_c=1.0))
    out = [lane.on_faces(FaceObservation(i, i * 0.1, i * 0.1 + 0.005, (FaceDetection(FACE, 0.9),), (640, 480), 5.0)) for i in range(8)]
    for t, core in ((0.45, 36.6), (0.55, 36.7)):
        out.append(lane.on_temperature(TemperatureMeasurement(MeasureState.MEASURED, t, core, core - 1.0, {}, 40, 1)))
    out.append(lane.on_code(CodeObservation(0, 0.7, 0.71, verdict, 8.0, "test")))
    for i in range(8, 80):  # an invalid code waits for a better one until code_timeout_s
        if any(out):
            break
        out.append(lane.on_faces(FaceObservation(i, i * 0.1, i * 0.1 + 0.005, (FaceDetection(FACE, 0.9),), (640, 480), 5.0)))
    (v,) = [v for v in out if v is not None]
    return v.decision, v.reason, v.policy, v.code


WRONG_CLOCKS = {"1970": EPOCH_1970, "a day ahead": NOW + 2 * 86400, "right but unconfirmed": NOW}


@pytest.mark.parametrize("wall", WRONG_CLOCKS.values(), ids=WRONG_CLOCKS.keys())
def test_default_policy_a_dated_code_judged_by_an_unsynced_clock_is_a_staff_check(tmp_path, wall):
    verdict = judge_at(tmp_path, green(), wall, synced=False)
    assert verdict.detail[JUDGED_UNSYNCED] is True
    decision, reason, policy, code = screen(ScreeningPolicy(), verdict)
    assert (decision, reason) == (Decision.MANUAL_CHECK, "code_unverifiable:clock_unsynced")
    assert policy["unsynced_clock_validity"] == "manual_check"
    assert code["status"] == "unverifiable" and code["judged_as"] == f"{verdict.status.value}:{verdict.reason}"
    assert reason_words(reason, decision.value).en == "Station clock not set, staff will check the code"


def test_the_wrong_clock_alone_would_have_refused_a_good_code_and_trust_wall_clock_says_so(tmp_path):
    policy = ScreeningPolicy(unsynced_clock_validity="trust_wall_clock")
    ahead = judge_at(tmp_path, green(), NOW + 2 * 86400, synced=False)
    assert screen(policy, ahead)[:2] == (Decision.DENY_CODE, "code_expired:expired")
    right = judge_at(tmp_path, green(), NOW, synced=False)
    decision, reason, record, _ = screen(policy, right)
    assert (decision, reason, record["unsynced_clock_validity"]) == (Decision.PASS, "ok", "trust_wall_clock")


def test_a_synchronised_clock_is_not_marked_and_its_verdict_decides(tmp_path):
    verdict = judge_at(tmp_path, green(), NOW, synced=True)
    assert JUDGED_UNSYNCED not in verdict.detail
    assert screen(ScreeningPolicy(), verdict)[:2] == (Decision.PASS, "ok")
    expired = demo_issuer().issue(CodeColour.GREEN, iat=int(NOW) - 3 * 86400, exp=int(NOW) - 2 * 86400, holder="p").encode()
    assert screen(ScreeningPolicy(), judge_at(tmp_path, expired, NOW, synced=True))[:2] == (Decision.DENY_CODE, "code_expired:expired")


def test_a_verdict_that_did_not_look_at_dates_is_left_to_its_own_rules(tmp_path):
    garbage = judge_at(tmp_path, b"https://pay.example/qr/7F3A9C21", EPOCH_1970, synced=False)
    assert JUDGED_UNSYNCED not in garbage.detail
    unknown = CodeVerdict(CodeStatus.UNVERIFIABLE, None, "unknown_kid", "hc1")
    assert screen(ScreeningPolicy(), unknown)[:2] == (Decision.MANUAL_CHECK, "code_unverifiable:unknown_kid")


def test_the_policy_key_is_validated_named_in_errors_and_reaches_the_lane(tmp_path):
    assert StationConfig().policy.unsynced_clock_validity == "manual_check"
    (problem,) = validate_text('[policy]\nunsynced_clock_validity = "pass"\n')
    text = str(problem)
    assert "policy.unsynced_clock_validity" in text and "'pass'" in text and "manual_check" in text and "trust_wall_clock" in text
    bad = tmp_path / "station.toml"
    bad.write_text("[clock]\nstep_threshold_s = 0\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    assert "clock.step_threshold_s" in str(err.value) and "0.05" in str(err.value)
    cfg = StationConfig.model_validate({"policy": {"unsynced_clock_validity": "trust_wall_clock"}})
    assert lane_for(cfg).policy.unsynced_clock_validity == "trust_wall_clock"
    with pytest.raises(ValueError, match="unsynced_clock_validity"):
        ScreeningPolicy(unsynced_clock_validity="open_anyway")
    documented = (Path(__file__).resolve().parents[1] / "config" / "station.toml").read_text(encoding="utf-8")
    assert 'unsynced_clock_validity = "manual_check"' in documented and "[clock]" in documented


def test_an_id_card_whose_end_date_was_judged_by_an_unsynced_clock_follows_the_card_policy_and_names_the_clock():
    import datetime as dt

    from station.codes.idcard import HASH_CENTRE, CardFacts, judge_card, mark_unsynced

    today = dt.date.fromtimestamp(NOW)
    card = CardFacts("h" * 32, "1****************X", HASH_CENTRE, dt.date(2020, 1, 1), today + dt.timedelta(days=1))
    ahead = NOW + 3 * 86400  # a clock three days ahead: the card looks expired
    verdict = mark_unsynced(card, judge_card(card, ahead, None), clock_synced=False)
    assert verdict.reason == "card_expired" and verdict.detail[JUDGED_UNSYNCED] is True
    decision, reason, policy, code = screen(ScreeningPolicy(), verdict)
    assert (decision, reason) == (Decision.MANUAL_CHECK, "idcard_unverifiable:clock_unsynced")
    assert code["judged_as"] == "unverifiable:card_expired"
    # Synchronised, or a long-term card (no end date), or no date judged at all: left as judged.
    assert JUDGED_UNSYNCED not in mark_unsynced(card, judge_card(card, ahead, None), clock_synced=True).detail
    long_term = CardFacts("h" * 32, "1****************X", HASH_CENTRE, dt.date(2020, 1, 1), None)
    assert JUDGED_UNSYNCED not in mark_unsynced(long_term, judge_card(long_term, ahead, None), clock_synced=False).detail
