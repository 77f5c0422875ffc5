"""The queue scene (``sim.scene.QueueDirector``): walking pace, spacing, the special walkers, determinism.

The director is driven on a synthetic clock by an "ideal station" that decides each queuer the
moment their last input is there, so these tests run in well under a second and replay exactly.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import pytest

from sim.scene import (
    CHILD_FACE_SCALE,
    GAP_RANGE_M,
    QUEUE_STATES,
    SPEED_RANGE_MPS,
    TURN_BACK_AT_M,
    Position,
    QueueDirector,
    QueueTiming,
    Role,
    SceneGeometry,
    ScenePerson,
    Walker,
    queue_scenario,
    queue_walkers,
)
from sim.thermal_render import ThermalSceneRenderer
from station.domain.model import Box, CodeColour

MIN_FACE_PX = 120  # the default screening zone (screening.min_face_px)


def cast(n: int) -> list[ScenePerson]:
    out = []
    for i in range(n):
        fever = i == 2
        payload = f"code-{i}".encode() if i != 5 else None
        out.append(ScenePerson(i, 38.2 if fever else 36.6, CodeColour.GREEN, payload, f"p{i}", "deny_fever" if fever else "pass"))
    return out


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def drive(
    walkers: Sequence[Walker], station_s: float = 0.4, until_s: float = 300.0
) -> tuple[QueueDirector, list[tuple[float, list[Position]]]]:
    """Run the queue with a station deciding ``station_s`` after each queuer's last input; return every step's positions."""
    clock = Clock()
    d = QueueDirector(walkers, QueueTiming(), SceneGeometry(), clock=clock)
    expected = {w.person.index: w.person.expected for w in walkers if w.role is Role.QUEUE}
    trace: list[tuple[float, list[Position]]] = []
    while not d.finished(clock.t) and clock.t < until_s:
        pos = d.positions(clock.t)
        trace.append((clock.t, pos))
        for row in d.timeline():
            last = row["last_input_t"]
            if row["index"] in expected and row["decided_t"] is None and isinstance(last, float) and clock.t >= last + station_s:
                me = next(p for p in pos if p.index == row["index"])
                assert d.on_decision(expected[me.index], clock.t, me.face_box) is not None
        clock.t = round(clock.t + 0.02, 6)
    assert d.finished(clock.t), "the queue never emptied"
    return d, trace


@pytest.fixture(scope="module")
def run() -> tuple[list[Walker], QueueDirector, list[tuple[float, list[Position]]]]:
    walkers = queue_walkers(cast(10), seed=5)
    d, trace = drive(walkers)
    return walkers, d, trace


def test_walking_pace_and_spacing_are_in_range() -> None:
    for seed in range(5):
        walkers = queue_walkers(cast(12), seed=seed)
        for w in walkers:
            assert SPEED_RANGE_MPS[0] <= w.speed_mps <= SPEED_RANGE_MPS[1]
            if w.role is not Role.PASSER_BY:
                assert GAP_RANGE_M[0] <= w.gap_m <= GAP_RANGE_M[1]
        lane = [w for w in walkers if w.role is not Role.PASSER_BY]
        for prev, nxt in zip(lane, lane[1:], strict=False):
            # They arrive as a stream at their spacing and pace.
            assert nxt.arrival_s - prev.arrival_s == pytest.approx(nxt.gap_m / nxt.speed_mps, abs=2e-3)


def test_queue_holds_everyone_once_with_the_extras() -> None:
    walkers = queue_walkers(cast(8), seed=1)
    roles = [w.role for w in walkers]
    assert roles.count(Role.QUEUE) == 8 and roles.count(Role.TURN_BACK) == 1 and roles.count(Role.PASSER_BY) == 1
    assert len({w.person.index for w in walkers}) == len(walkers)  # the renderers cache looks by index
    assert sum(1 for w in walkers if w.face_scale < 1.0) == 1
    assert sum(1 for w in walkers if w.stop_at_m is not None) == 1


def test_people_keep_their_gap_and_never_outpace_themselves(
    run: tuple[list[Walker], QueueDirector, list[tuple[float, list[Position]]]],
) -> None:
    walkers, _, trace = run
    by_index = {w.person.index: w for w in walkers}
    order = [w.person.index for w in walkers if w.role is not Role.PASSER_BY]
    last: dict[int, float] = {}
    for _t, pos in trace:
        queue = sorted((p for p in pos if p.state in QUEUE_STATES), key=lambda p: order.index(p.index))
        for ahead, behind in zip(queue, queue[1:], strict=False):
            assert behind.distance_m - ahead.distance_m >= by_index[behind.index].gap_m - 1e-6
        for p in pos:
            if p.index in last and p.role is not Role.PASSER_BY:
                assert abs(p.distance_m - last[p.index]) <= by_index[p.index].speed_mps * 0.02 + 1e-6
            last[p.index] = p.distance_m


def test_two_faces_are_in_view_while_someone_stands_at_the_gate(
    run: tuple[list[Walker], QueueDirector, list[tuple[float, list[Position]]]],
) -> None:
    _, _, trace = run
    assert any(len(pos) >= 2 and any(p.state == "at_gate" for p in pos) for _t, pos in trace)


def test_the_turn_back_person_never_crosses_the_gate_line_nor_enters_the_zone(
    run: tuple[list[Walker], QueueDirector, list[tuple[float, list[Position]]]],
) -> None:
    _, d, trace = run
    seen = [p for _t, pos in trace for p in pos if p.role is Role.TURN_BACK]
    assert seen, "the turn-back person never came into view"
    assert min(p.distance_m for p in seen) >= TURN_BACK_AT_M - 1e-9 > d.timing.gate_m
    assert max(p.face_box.height for p in seen) < MIN_FACE_PX
    assert any(p.state == "turning" for p in seen)  # and they did walk back out
    row = next(r for r in d.timeline() if r["role"] == "turn_back")
    assert row["entered"] is False and row["gate_t"] is None and row["expect_entry"] is False


def test_the_child_face_is_smaller_and_lower(run: tuple[list[Walker], QueueDirector, list[tuple[float, list[Position]]]]) -> None:
    walkers, _, trace = run
    child = next(w for w in walkers if w.face_scale < 1.0)
    assert child.face_scale == CHILD_FACE_SCALE and child.role is Role.QUEUE
    at_gate = [(p.index, p.face_box) for _t, pos in trace for p in pos if p.state == "at_gate"]
    child_boxes = [b for i, b in at_gate if i == child.person.index]
    adult_boxes = [b for i, b in at_gate if i != child.person.index]
    assert child_boxes and adult_boxes
    assert max(b.height for b in child_boxes) < min(b.height for b in adult_boxes)
    assert min(b.centre[1] for b in child_boxes) > max(b.centre[1] for b in adult_boxes)
    assert min(b.height for b in child_boxes) >= MIN_FACE_PX  # still tall enough to be screened at the gate


def test_the_passer_by_stays_outside_the_lane_zone(run: tuple[list[Walker], QueueDirector, list[tuple[float, list[Position]]]]) -> None:
    _, d, trace = run
    seen = [p for _t, pos in trace for p in pos if p.role is Role.PASSER_BY]
    assert len(seen) > 10
    assert min(abs(p.lateral_m) for p in seen) > d.timing.lane_half_width_m
    assert max(p.face_box.height for p in seen) < MIN_FACE_PX
    row = next(r for r in d.timeline() if r["role"] == "passer_by")
    assert row["entered"] is False and row["decision"] is None


def test_the_stopping_person_stands_still_on_the_way(run: tuple[list[Walker], QueueDirector, list[tuple[float, list[Position]]]]) -> None:
    walkers, _, trace = run
    stopper = next(w for w in walkers if w.stop_at_m is not None)
    paused = [t for t, pos in trace for p in pos if p.index == stopper.person.index and p.state == "paused"]
    assert paused and max(paused) - min(paused) >= stopper.stop_s - 0.05


def test_decisions_route_people_through_or_aside(run: tuple[list[Walker], QueueDirector, list[tuple[float, list[Position]]]]) -> None:
    walkers, d, trace = run
    rows = {r["index"]: r for r in d.timeline()}
    for w in walkers:
        r = rows[w.person.index]
        if w.role is Role.QUEUE:
            assert r["decision"] == w.person.expected
            assert r["entered"] is (w.person.expected == "pass")
            times = [r["arrival_t"], r["gate_t"], r["last_input_t"], r["decided_t"]]
            assert all(isinstance(t, float) for t in times)
            assert times == sorted(t for t in times if isinstance(t, float))
    fever = next(w for w in walkers if w.person.expected == "deny_fever")
    assert any(p.index == fever.person.index and p.state == "aside" for _t, pos in trace for p in pos)
    assert not any(p.index == fever.person.index and p.state == "passing" for _t, pos in trace for p in pos)


def test_a_decision_goes_to_the_face_it_names_not_just_the_front() -> None:
    clock = Clock()
    d = QueueDirector(queue_walkers(cast(4), seed=3, code_delay_s=None, extras=False), clock=clock)
    while not any(p.state == "at_gate" for p in d.positions(clock.t)):
        clock.t += 0.02
    pos = d.positions(clock.t)
    assert len(pos) >= 2
    behind = max(pos, key=lambda p: p.distance_m)
    assert d.on_decision("retry", clock.t, behind.face_box) is not None
    row = next(r for r in d.timeline() if r["index"] == behind.index)
    assert row["decision"] == "retry"
    front = min(pos, key=lambda p: p.distance_m)
    assert next(r for r in d.timeline() if r["index"] == front.index)["decision"] is None


def test_same_seed_same_queue_and_same_run() -> None:
    a, b = queue_walkers(cast(9), seed=42), queue_walkers(cast(9), seed=42)
    assert a == b
    assert queue_walkers(cast(9), seed=43) != a
    da, _ = drive(a)
    db, _ = drive(b)
    assert da.timeline() == db.timeline()


def test_everyone_in_view_is_drawn_in_the_thermal_frame(
    run: tuple[list[Walker], QueueDirector, list[tuple[float, list[Position]]]],
) -> None:
    walkers, _, trace = run
    clock = Clock()
    d = QueueDirector(walkers, clock=clock)
    # The first moment someone stands at the gate with someone else in view.
    t = next(t for t, pos in trace if len(pos) >= 2 and any(p.state == "at_gate" for p in pos))
    clock.t = t
    renderer = ThermalSceneRenderer(d, noise_c=0.0, seed=1)
    img, _ = renderer(t)
    assert renderer.ground_truth(t)["people"] == len(d.positions(t)) >= 2
    # The screened face is warmer than the room, and so is the person behind them.
    assert float(np.max(img)) > 33.0
    empty, _ = ThermalSceneRenderer(None, noise_c=0.0).render_people([])
    warm = img > empty + 3.0
    assert warm.sum() > 20


@pytest.mark.parametrize("name", ["temperature_only", "temperature_and_code_prompt"])
def test_presets_show_a_phone_or_not(name: str) -> None:
    sc = queue_scenario(name, 8, seed=2, now_wall=time.time())
    queuers = [w for w in sc.walkers if w.role is Role.QUEUE]
    assert len(queuers) == 8
    assert {w.person.expected for w in queuers} == {"pass", "deny_fever"}
    assert sc.walkthrough and sc.timing is not None and sc.timing.measure_from_m == 1.0  # both measured on the move
    assert sc.config["screening"]["face_stable_s"] == 0.0 and sc.config["thermal"] == {"too_far_ratio": 1.9}
    if name == "temperature_only":
        assert sc.config["screening"]["temperature_on"] == "entry" and sc.config["screening"]["code_required"] is False
        assert all(w.code_delay_s is None and w.person.code_payload is None for w in queuers)
        assert all(0.8 <= w.gap_m <= 1.0 for w in queuers)  # the morning peak's spacing
    else:
        assert all(w.person.code_payload is not None and w.code_delay_s is not None and 0.0 <= w.code_delay_s <= 0.4 for w in queuers)


def test_a_decision_about_someone_walking_off_is_not_given_to_the_next_person() -> None:
    clock = Clock()
    d = QueueDirector(queue_walkers(cast(3), seed=4, code_delay_s=None, extras=False), clock=clock)
    while not any(p.state == "at_gate" for p in d.positions(clock.t)):
        clock.t += 0.02
    front = next(p for p in d.positions(clock.t) if p.state == "at_gate")
    assert d.on_decision("pass", clock.t, front.face_box) is not None
    while not any(p.index == front.index and p.state == "passing" for p in d.positions(clock.t)):
        clock.t += 0.02
    leaving = next(p for p in d.positions(clock.t) if p.index == front.index)
    person = d.on_decision("retry", clock.t, leaving.face_box)  # a station re-screening the leaving face
    assert person is not None and person.index == front.index
    assert all(r["decision"] is None for r in d.timeline() if r["index"] != front.index)
    assert next(r for r in d.timeline() if r["index"] == front.index)["decision"] == "pass"
    assert d.on_decision("retry", clock.t, Box(0, 0, 5, 5)) is None  # nobody there: unattributed


def test_a_walker_decided_on_the_way_up_never_stops_and_their_last_input_is_the_range() -> None:
    """Screened on the move: the face is there to measure from ``measure_from_m``; decided before the line, they walk on."""
    clock = Clock()
    walkers = queue_walkers(cast(1), seed=4, code_delay_s=None, extras=False)
    d = QueueDirector(walkers, QueueTiming(measure_from_m=1.0), clock=clock)
    while not any(p.distance_m <= 0.9 for p in d.positions()):
        clock.t += 0.02
    assert d.on_decision("pass") is not None  # decided at ~0.9 m, before the gate line
    while not d.finished():
        clock.t += 0.02
        assert all(p.state != "at_gate" or p.distance_m < 0.56 for p in d.positions())
    (row,) = d.timeline()
    assert row["last_input_t"] < row["decided_t"] < row["gate_t"]  # in range → decided → crossed the line without stopping
    assert row["entered"] and row["gone_t"] - row["gate_t"] < 0.5
