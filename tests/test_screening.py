"""The lane's state machine, driven by replayed observations with explicit timestamps."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from station.domain.model import (
    Box,
    CodeColour,
    CodeStatus,
    Decision,
    FaceObservation,
    ThermalFrame,
)
from station.domain.screening import LaneState, ScreeningLane, ScreeningPolicy
from station.domain.thermal import MeasureState, ThermalCalibration, measure_face
from tests.support.screening_obs import IDENTITY, SETTINGS, code, faces, lane, temp

BIG = Box(200, 100, 360, 320)  # 220 px tall: in the zone
SMALL = Box(300, 180, 340, 235)  # 55 px tall: far away, not in the zone


@dataclass
class Script:
    """Observations in time order; `run` feeds them and ticks to the end."""

    steps: list[tuple[str, object]] = field(default_factory=list)

    def run(self, ln: ScreeningLane, until: float) -> list:
        out = []
        for kind, obs in self.steps:
            v = {"faces": ln.on_faces, "temp": ln.on_temperature, "code": ln.on_code, "tick": ln.tick}[kind](obs)
            if v is not None:
                out.append(v)
        t = max((o if isinstance(o, float) else getattr(o, "t", getattr(o, "done_t", 0.0))) for _, o in self.steps)
        while t < until:
            t += 0.1
            v = ln.on_faces(faces(t, BIG)) if t < until - 1.5 else ln.tick(t)
            if v is not None:
                out.append(v)
        return out


def standing(t0: float, t1: float, step: float = 0.1) -> list[tuple[str, object]]:
    return [("faces", faces(round(t0 + i * step, 6), BIG)) for i in range(int(round((t1 - t0) / step)) + 1)]


CASES = [
    # name, steps, policy, expected decision, expected reason
    (
        "green pass",
        standing(0, 0.6) + [("temp", temp(0.45, 36.6)), ("temp", temp(0.55, 36.7)), ("code", code(0.6, CodeColour.GREEN))],
        None,
        Decision.PASS,
        "ok",
    ),
    (
        "code before temperature",
        standing(0, 0.6) + [("code", code(0.1, CodeColour.GREEN)), ("temp", temp(0.45, 36.6)), ("temp", temp(0.55, 36.7))],
        None,
        Decision.PASS,
        "ok",
    ),
    (
        "fever decides without a code",
        standing(0, 0.6) + [("temp", temp(0.45, 38.2)), ("temp", temp(0.55, 38.1))],
        None,
        Decision.DENY_FEVER,
        "fever",
    ),
    (
        "fever at exactly the threshold",
        standing(0, 0.6) + [("temp", temp(0.45, 37.3)), ("temp", temp(0.55, 37.3))],
        None,
        Decision.DENY_FEVER,
        "fever",
    ),
    (
        "fever under soft policy",
        standing(0, 0.6) + [("temp", temp(0.45, 38.2)), ("temp", temp(0.55, 38.1))],
        ScreeningPolicy(temperature="soft"),
        Decision.MANUAL_CHECK,
        "fever_soft_policy",
    ),
    (
        "red code",
        standing(0, 0.6) + [("temp", temp(0.45, 36.6)), ("temp", temp(0.55, 36.7)), ("code", code(0.6, CodeColour.RED))],
        None,
        Decision.DENY_CODE,
        "code_red",
    ),
    (
        "yellow, default policy",
        standing(0, 0.6) + [("temp", temp(0.45, 36.6)), ("temp", temp(0.55, 36.7)), ("code", code(0.6, CodeColour.YELLOW))],
        None,
        Decision.MANUAL_CHECK,
        "code_yellow",
    ),
    (
        "yellow, deny policy",
        standing(0, 0.6) + [("temp", temp(0.45, 36.6)), ("temp", temp(0.55, 36.7)), ("code", code(0.6, CodeColour.YELLOW))],
        ScreeningPolicy(yellow_code=Decision.DENY_CODE),
        Decision.DENY_CODE,
        "code_yellow",
    ),
    (
        "expired code",
        standing(0, 0.6)
        + [("temp", temp(0.45, 36.6)), ("temp", temp(0.55, 36.7)), ("code", code(0.6, CodeColour.GREEN, CodeStatus.EXPIRED, "expired"))],
        None,
        Decision.DENY_CODE,
        "code_expired:expired",
    ),
    (
        "unverifiable code",
        standing(0, 0.6)
        + [("temp", temp(0.45, 36.6)), ("temp", temp(0.55, 36.7)), ("code", code(0.6, None, CodeStatus.UNVERIFIABLE, "issuer_unknown"))],
        None,
        Decision.MANUAL_CHECK,
        "code_unverifiable:issuer_unknown",
    ),
    (
        "sensor fault",
        standing(0, 0.6) + [("temp", temp(0.45, None, MeasureState.SENSOR_FAULT))],
        None,
        Decision.MANUAL_CHECK,
        "sensor_fault",
    ),
]


@pytest.mark.parametrize("name,steps,policy,decision,reason", CASES, ids=[c[0] for c in CASES])
def test_decisions(name, steps, policy, decision, reason):
    ln = lane(policy)
    verdicts = Script(steps).run(ln, until=12.0)
    assert [(v.decision, v.reason) for v in verdicts] == [(decision, reason)]
    v = verdicts[0]
    assert v.policy == (policy or ScreeningPolicy()).as_record()
    assert v.stage_t["enter"] <= v.stage_t["face"] <= v.stage_t["decision"]
    assert v.latency_ms()["total"] == pytest.approx((v.stage_t["decision"] - v.stage_t["enter"]) * 1000, abs=0.1)


def test_no_code_times_out_to_retry():
    ln = lane()
    steps = standing(0, 6.0) + [("temp", temp(0.45, 36.6)), ("temp", temp(0.55, 36.7))]
    steps.sort(key=lambda s: getattr(s[1], "t", getattr(s[1], "done_t", 0)))
    verdicts = Script(steps).run(ln, until=12.0)
    assert [(v.decision, v.reason) for v in verdicts] == [(Decision.RETRY, "no_code")]
    assert verdicts[0].stage_t["decision"] - verdicts[0].stage_t["face"] == pytest.approx(5.0, abs=0.11)
    assert verdicts[0].temperature_c == pytest.approx(36.65)


def test_no_valid_temperature_times_out_to_retry_with_the_reason():
    ln = lane()
    steps = standing(0, 4.0) + [("temp", temp(0.2 + i * 0.25, None, MeasureState.TOO_FAR)) for i in range(10)]
    steps.sort(key=lambda s: getattr(s[1], "t", getattr(s[1], "done_t", 0)))
    verdicts = Script(steps).run(ln, until=12.0)
    assert [(v.decision, v.reason) for v in verdicts] == [(Decision.RETRY, "no_valid_temperature:too_far")]
    assert verdicts[0].temperature_c is None
    assert verdicts[0].temperature["frames_by_state"] == {"too_far": 10}


def test_invalid_code_waits_for_a_good_one():
    ln = lane()
    steps = standing(0, 1.0) + [
        ("temp", temp(0.45, 36.6)),
        ("temp", temp(0.55, 36.7)),
        ("code", code(0.6, None, CodeStatus.INVALID, "not_json")),
        ("code", code(0.8, CodeColour.GREEN)),
    ]
    steps.sort(key=lambda s: getattr(s[1], "t", getattr(s[1], "done_t", 0)))
    verdicts = Script(steps).run(ln, until=12.0)
    assert [(v.decision, v.reason) for v in verdicts] == [(Decision.PASS, "ok")]


def test_only_invalid_codes_end_in_manual_check_with_the_reason():
    ln = lane()
    steps = standing(0, 6.0) + [
        ("temp", temp(0.45, 36.6)),
        ("temp", temp(0.55, 36.7)),
        ("code", code(0.6, None, CodeStatus.INVALID, "not_base64")),
    ]
    steps.sort(key=lambda s: getattr(s[1], "t", getattr(s[1], "done_t", 0)))
    verdicts = Script(steps).run(ln, until=12.0)
    assert [(v.decision, v.reason) for v in verdicts] == [(Decision.MANUAL_CHECK, "code_invalid:not_base64")]


def stand_still(ln: ScreeningLane, until: float = 0.5) -> None:
    for i in range(int(round(until / 0.1)) + 1):
        ln.on_faces(faces(round(i * 0.1, 6), BIG))


def test_unstable_readings_are_not_used():
    ln = lane()
    stand_still(ln)
    assert ln.on_temperature(temp(0.5, 36.0)) is None
    assert ln.on_temperature(temp(0.6, 37.5)) is None  # 1.5 °C apart: no agreement yet
    v = ln.on_temperature(temp(0.7, 37.6))  # agrees with the previous one: median 37.55 → fever
    assert v is not None and v.decision is Decision.DENY_FEVER
    assert v.temperature_c == pytest.approx(37.55)
    assert v.temperature["samples"] == [37.5, 37.6]
    assert ln.state is LaneState.DECIDED


def test_a_failed_frame_breaks_the_run_of_agreeing_samples():
    ln = lane()
    stand_still(ln)
    ln.on_code(code(0.5, CodeColour.GREEN))
    assert ln.on_temperature(temp(0.5, 36.5)) is None
    assert ln.on_temperature(temp(0.6, None, MeasureState.COLD_ROI)) is None
    assert ln.on_temperature(temp(0.7, 36.6)) is None
    v = ln.on_temperature(temp(0.8, 36.7))
    assert v is not None and v.decision is Decision.PASS and v.temperature_c == pytest.approx(36.65)


def growing(t: float, height: float) -> FaceObservation:
    return faces(t, Box(320 - height * 0.36, 210 - height / 2, 320 + height * 0.36, 210 + height / 2))


def test_readings_while_the_person_still_walks_up_are_not_used():
    # Far faces read low (fewer skin pixels per thermal pixel): a walker at 1 m must not "pass" a
    # fever. Readings count only once the face has stopped growing.
    ln = lane()
    for i in range(6):  # face grows 130 → 230 px over 0.5 s
        ln.on_faces(growing(round(i * 0.1, 6), 130 + 20 * i))
        assert ln.on_temperature(temp(i * 0.1 + 0.05, 36.9)) is None
    assert ln._current is not None and ln._current.samples == []
    assert ln._current.measure_states == {"unstable": 6}
    for i in range(6, 10):  # standing still at 230 px
        ln.on_faces(growing(round(i * 0.1, 6), 230))
    assert ln.on_temperature(temp(0.95, 38.0)) is None
    v = ln.on_temperature(temp(1.05, 38.1))
    assert v is not None and v.decision is Decision.DENY_FEVER and v.temperature_c == pytest.approx(38.05)
    assert v.temperature["frames_by_state"] == {"unstable": 6, "measured": 2}


def test_a_person_who_never_stands_still_gets_retry_with_the_reason():
    ln = lane()
    verdict = None
    for i in range(40):
        t = i * 0.1
        verdict = verdict or ln.on_faces(growing(t, 130 + 3 * i if i % 2 else 130 + 3 * i + 40))  # swaying
        verdict = verdict or ln.on_temperature(temp(t + 0.05, 36.6))
    assert verdict is not None and (verdict.decision, verdict.reason) == (Decision.RETRY, "no_valid_temperature:unstable")


def test_one_screening_per_person_standing_still():
    ln = lane()
    decided = Script(
        standing(0, 0.6) + [("temp", temp(0.45, 36.6)), ("temp", temp(0.55, 36.7)), ("code", code(0.6, CodeColour.GREEN))]
    ).run(ln, until=0.5)
    assert len(decided) == 1
    # The same person keeps standing there for 20 s showing everything again: no second screening.
    again = []
    for i in range(200):
        t = 0.5 + i * 0.1
        for v in (ln.on_faces(faces(t, BIG)), ln.on_temperature(temp(t, 36.6)), ln.on_code(code(t, CodeColour.GREEN))):
            if v is not None:
                again.append(v)
    assert again == []
    assert ln.state is LaneState.DECIDED
    # They leave; the next person is screened.
    assert ln.tick(20.5 + SETTINGS.leave_after_s + 0.01) is None
    assert ln.state is LaneState.IDLE
    ln.on_faces(faces(22.0, BIG))
    assert ln.state is LaneState.SCREENING


def test_brief_face_loss_does_not_end_the_screening():
    ln = lane()
    ln.on_faces(faces(0.0, BIG))
    assert ln.tick(0.5) is None  # 0.5 s without a face < leave_after_s
    ln.on_faces(faces(0.6, BIG))
    assert ln.state is LaneState.SCREENING


def test_person_leaving_before_a_decision_is_recorded_as_retry():
    ln = lane()
    ln.on_faces(faces(0.0, BIG))
    v = ln.tick(0.9)
    assert v is not None and (v.decision, v.reason) == (Decision.RETRY, "left_before_decision")
    assert ln.state is LaneState.IDLE


def test_far_faces_do_not_start_a_screening():
    ln = lane()
    for i in range(30):
        assert ln.on_faces(faces(i * 0.1, SMALL)) is None
    assert ln.state is LaneState.IDLE


def test_the_nearest_face_is_screened():
    ln = lane()
    ln.on_faces(faces(0.0, Box(0, 0, 130, 130), BIG))
    assert ln._current is not None and ln._current.face.box == BIG


def test_idle_lane_ignores_readings_and_codes():
    ln = lane()
    assert ln.on_temperature(temp(0.1, 39.0)) is None
    assert ln.on_code(code(0.2, CodeColour.RED)) is None
    assert ln.tick(10.0) is None
    assert ln.state is LaneState.IDLE


def test_latency_stages_in_order():
    ln = lane()
    steps = standing(0, 0.6) + [("code", code(0.15, CodeColour.GREEN)), ("temp", temp(0.45, 36.6)), ("temp", temp(0.55, 36.7))]
    steps.sort(key=lambda s: getattr(s[1], "t", getattr(s[1], "done_t", 0)))
    (v,) = Script(steps).run(ln, until=3.0)
    lat = v.latency_ms()
    assert set(lat) >= {"face", "temperature", "code", "decision", "total", "detect_ms", "decode_ms"}
    assert lat["face"] == pytest.approx(5.0)
    assert lat["code"] == pytest.approx(160.0)
    assert lat["temperature"] == pytest.approx(550.0)
    assert lat["total"] >= lat["temperature"]


# -- the measurement on a thermal frame ------------------------------------------------------


def thermal(img: np.ndarray, t: float = 1.0) -> ThermalFrame:
    return ThermalFrame(img.astype(np.float32), die_c=30.0, seq=7, t=t)


def test_a_single_hot_pixel_does_not_make_a_fever():
    img = np.full((24, 32), 22.0)
    img[8:16, 10:20] = 35.0
    img[12, 15] = 45.0  # one dead-hot pixel
    m = measure_face(thermal(img), Box(10, 8, 20, 16), ThermalCalibration(IDENTITY, offset_c=1.0, roi_margin=0.0))
    assert m.terms["peak_c"] == pytest.approx(45.0)
    assert m.skin_c == pytest.approx(35.0 + 10.0 / 9.0, abs=0.01)
    assert m.core_c < 37.3


def test_measure_face_takes_the_hot_spot_and_records_each_term():
    img = np.full((24, 32), 22.0)
    img[8:16, 10:20] = 34.0
    img[10:13, 13:16] = 35.9  # the periorbital hot spot
    cal = ThermalCalibration(IDENTITY, offset_c=1.0, roi_margin=0.0)
    m = measure_face(thermal(img), Box(10, 8, 20, 16), cal)
    assert m.state == MeasureState.MEASURED
    assert m.skin_c == pytest.approx(35.9)
    assert m.core_c == pytest.approx(36.9)
    assert m.terms["offset_c"] == 1.0 and m.terms["skin_c"] == pytest.approx(35.9)
    assert m.n_pixels == 80


@pytest.mark.parametrize(
    "box,fill,state",
    [
        (Box(10, 8, 12, 10), 34.0, MeasureState.TOO_FAR),
        (Box(100, 100, 120, 130), 34.0, MeasureState.OUT_OF_VIEW),
        (Box(10, 8, 20, 16), 25.0, MeasureState.COLD_ROI),
        (Box(10, 8, 20, 16), 44.0, MeasureState.OUT_OF_RANGE),
    ],
)
def test_measure_face_says_why_a_reading_is_not_usable(box, fill, state):
    img = np.full((24, 32), 22.0)
    img[8:16, 10:20] = fill
    m = measure_face(thermal(img), box, ThermalCalibration(IDENTITY, offset_c=1.0, roi_margin=0.0))
    assert m.state == state


def test_out_of_range_values_are_reported_not_clamped():
    img = np.full((24, 32), 22.0)
    img[8:16, 10:20] = 44.0
    m = measure_face(thermal(img), Box(10, 8, 20, 16), ThermalCalibration(IDENTITY, offset_c=1.0, roi_margin=0.0))
    assert m.core_c == pytest.approx(45.0)  # the honest number, flagged as invalid


def test_non_finite_frame_is_a_sensor_fault():
    img = np.full((24, 32), 22.0)
    img[0, 0] = np.nan
    m = measure_face(thermal(img), Box(10, 8, 20, 16), ThermalCalibration(IDENTITY, offset_c=1.0))
    assert m.state == MeasureState.SENSOR_FAULT
