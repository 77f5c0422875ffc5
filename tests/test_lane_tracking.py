"""The lane with the face tracker: a screening belongs to a tracked person (replayed observations)."""

from __future__ import annotations

import numpy as np

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
from station.domain.screening import LaneState, ScreeningLane, ScreeningPolicy, ScreeningSettings
from station.domain.thermal import MeasureState, ThermalCalibration

SETTINGS = ScreeningSettings(leave_after_s=0.8)
A = Box(200, 100, 360, 320)  # the person at the gate: 220 px tall
B_AT_GATE = Box(400, 110, 560, 330)  # the next person at the gate, beside where A stood (0.9 face heights away)
B_BEHIND = Box(380, 60, 480, 190)  # the next person behind A: 130 px tall, in the zone, partly overlapping


def lane() -> ScreeningLane:
    return ScreeningLane(SETTINGS, ScreeningPolicy(), ThermalCalibration(np.eye(3), offset_c=1.0))


def faces(t: float, *boxes: Box) -> FaceObservation:
    return FaceObservation(0, t, t + 0.005, tuple(FaceDetection(b, 0.9) for b in boxes), (640, 480), 5.0)


def temp(t: float, core: float) -> TemperatureMeasurement:
    return TemperatureMeasurement(MeasureState.MEASURED, t, core, core - 1.0, {}, 40, 1)


def green(t: float) -> CodeObservation:
    return CodeObservation(0, t, t + 0.01, CodeVerdict(CodeStatus.VALID, CodeColour.GREEN, "ok", "test"), 8.0, "test")


def screen(ln: ScreeningLane, box: Box, t0: float, *others: Box):  # type: ignore[no-untyped-def]
    """Stand still at the gate for 0.6 s with a normal temperature and a green code: a pass."""
    verdict = None
    for i in range(7):
        t = round(t0 + i * 0.1, 6)
        verdict = verdict or ln.on_faces(faces(t, box, *others))
        if i >= 4:
            verdict = verdict or ln.on_temperature(temp(t + 0.01, 36.6))
    verdict = verdict or ln.on_code(green(t0 + 0.65))
    return verdict


def test_verdict_records_the_track_id() -> None:
    ln = lane()
    v = screen(ln, A, 0.0)
    assert v is not None and v.decision is Decision.PASS
    assert v.face["track_id"] == 1


def test_same_person_standing_still_is_screened_once() -> None:
    ln = lane()
    assert screen(ln, A, 0.0) is not None
    for i in range(100):  # ten more seconds at the gate, swaying a little, showing the code again
        t = 0.7 + i * 0.1
        dx = 4 if i % 2 else -4
        assert ln.on_faces(faces(t, Box(A.x1 + dx, A.y1, A.x2 + dx, A.y2))) is None
        assert ln.on_temperature(temp(t, 36.6)) is None and ln.on_code(green(t)) is None
    assert ln.state is LaneState.DECIDED


def test_next_person_is_screened_at_once_after_the_previous_face_left() -> None:
    ln = lane()
    first = screen(ln, A, 0.0)
    assert first is not None
    # One frame later A is gone and B is at the gate: B is a new track, screened now, not after
    # leave_after_s (0.8 s) without a face.
    assert ln.on_faces(faces(0.8, B_AT_GATE)) is None
    assert ln.state is LaneState.SCREENING
    assert ln._current is not None and ln._current.track_id == 2
    second = screen(ln, B_AT_GATE, 0.9)
    assert second is not None and second.face["track_id"] == 2
    assert second.stage_t["enter"] == 0.8


def test_second_person_behind_waits_while_the_first_is_still_at_the_gate() -> None:
    ln = lane()
    assert screen(ln, A, 0.0, B_BEHIND) is not None  # B is already in the zone behind A
    for i in range(20):
        assert ln.on_faces(faces(0.7 + i * 0.1, A, B_BEHIND)) is None
    assert ln.state is LaneState.DECIDED  # not merged with A, not screened while A stands there
    # A walks off: B (already tracked, id 2) is screened straight away.
    ln.on_faces(faces(2.8, B_BEHIND))
    assert ln.state is LaneState.SCREENING and ln._current is not None and ln._current.track_id == 2


def test_a_different_person_replacing_the_screened_one_ends_that_screening() -> None:
    ln = lane()
    ln.on_faces(faces(0.0, A))
    ln.on_faces(faces(0.1, A))
    v = ln.on_faces(faces(0.2, B_AT_GATE))  # A stepped away, B stepped in, mid-screening
    assert v is not None and (v.decision, v.reason) == (Decision.RETRY, "left_before_decision")
    assert v.face["track_id"] == 1
    ln.on_faces(faces(0.3, B_AT_GATE))
    assert ln.state is LaneState.SCREENING and ln._current is not None and ln._current.track_id == 2


def test_verdict_records_the_direction_of_a_person_who_walked_up() -> None:
    ln = lane()
    for i in range(10):  # walking up: the face grows from 60 to 204 px (the zone starts at 120)
        h = 60 + 16 * i
        ln.on_faces(faces(i * 0.1, Box(280 - h * 0.4, 210 - h / 2, 280 + h * 0.4, 210 + h / 2)))
    v = screen(ln, Box(280 - 88, 100, 280 + 88, 320), 1.0)
    assert v is not None and v.face["direction"] == "entry"
    assert ln.directions.counts == {"entry": 1, "exit": 0}


def _face(h: float, cx: float = 280.0) -> Box:
    return Box(cx - h * 0.4, 210 - h / 2, cx + h * 0.4, 210 + h / 2)


def test_a_walk_up_seen_in_two_far_frames_and_then_at_the_gate_is_one_entry() -> None:
    # A loaded box skipped the frames between: 45 px, 75 px, then 209 px at the gate (a new track to
    # the tracker). Travel is measured from 45 px, not from where they stood still.
    ln = lane()
    ln.on_faces(faces(0.0, _face(45)))
    ln.on_faces(faces(0.2, _face(75)))
    v = screen(ln, _face(209), 0.9)
    assert v is not None and v.decision is Decision.PASS
    assert v.face["track_id"] == 2  # the tracker did start a new track
    assert ln.directions.counts == {"entry": 1, "exit": 0}


def test_a_far_face_still_seen_beside_a_new_one_at_the_gate_keeps_its_own_travel() -> None:
    # The person behind is in the same frame as the new face at the gate: two people, not one walk.
    ln = lane()
    behind = _face(60, cx=420)
    ln.on_faces(faces(0.0, behind))
    v = screen(ln, _face(209, cx=200), 0.2, behind)
    assert v is not None
    assert ln.directions.counts == {"entry": 0, "exit": 0}  # nobody travelled: nobody entered
    assert ln.directions.direction_of(1) is None
