"""A lane that screens a queue: replayed scenes of people walking at 1 m/s, faces and thermal frames.

Each scene is a list of people moving along waypoints (time, distance from the camera, face centre
x). Every 0.1 s the replay detects their faces (a nearer face hides one mostly behind it), renders a
thermal frame in which each person's face has their own skin temperature (nearer faces drawn last)
and feeds both to the lane; codes come at scheduled times. The real ``measure_face`` reads the
frames, so a reading can only be the right person's if the lane measured the right face.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from station.domain.direction import LaneGeometry
from station.domain.model import (
    Box,
    CodeColour,
    CodeObservation,
    CodeStatus,
    CodeVerdict,
    Decision,
    FaceDetection,
    FaceObservation,
    ThermalFrame,
)
from station.domain.screening import Abandoned, LaneState, ScreeningLane, ScreeningPolicy, ScreeningSettings, Verdict
from station.domain.thermal import ThermalCalibration

FRAME = (640, 480)
FOCAL_PX = 550.0  # a 0.22 m face at 0.55 m is 220 px tall
FACE_M = 0.22
SCALE = 0.05  # visible → thermal: 640 × 480 → 32 × 24
REGISTRATION = np.diag([SCALE, SCALE, 1.0])
ROOM_C = 22.0
OFFSET_C = 1.0  # core = skin + 1.0 with this calibration
SETTINGS = ScreeningSettings(leave_after_s=0.8)


@dataclass
class Person:
    """One person of a scene: where they are when, their core temperature, the code they show and when."""

    name: str
    path: list[tuple[float, float, float]]  # (t, distance m, face centre x px), straight lines between
    core_c: float = 36.6
    code_t: float | None = None
    colour: CodeColour = CodeColour.GREEN
    face_m: float = FACE_M  # a child's face is smaller

    def at(self, t: float) -> tuple[float, float] | None:
        """Return (distance, centre x) at ``t``, or None when not in the picture."""
        pts = self.path
        if t < pts[0][0] or t > pts[-1][0]:
            return None
        for (t0, d0, x0), (t1, d1, x1) in zip(pts, pts[1:], strict=False):
            if t0 <= t <= t1:
                f = (t - t0) / (t1 - t0) if t1 > t0 else 1.0
                return d0 + (d1 - d0) * f, x0 + (x1 - x0) * f
        return pts[-1][1], pts[-1][2]

    def box(self, t: float) -> Box | None:
        """Return the face box at ``t`` (None when out of the picture or too far to detect)."""
        where = self.at(t)
        if where is None:
            return None
        d, cx = where
        h = FOCAL_PX * self.face_m / d
        if h < 40:
            return None
        w = h * 0.72
        return Box(cx - w / 2, 210 - h / 2, cx + w / 2, 210 + h / 2)


def walk(t0: float, d0: float, d1: float, x: float, speed: float = 1.0) -> tuple[float, list[tuple[float, float, float]]]:
    """Return (end time, waypoints) of a straight walk from ``d0`` to ``d1`` metres at ``speed`` m/s."""
    t1 = round(t0 + abs(d1 - d0) / speed, 6)
    return t1, [(t0, d0, x), (t1, d1, x)]


def _hidden(b: Box, nearer: list[Box]) -> bool:
    """Return True when more than half of ``b`` lies behind a nearer face (the detector would not see it)."""
    for n in nearer:
        ix = max(0.0, min(b.x2, n.x2) - max(b.x1, n.x1))
        iy = max(0.0, min(b.y2, n.y2) - max(b.y1, n.y1))
        if ix * iy > 0.5 * b.area:
            return True
    return False


@dataclass
class Replay:
    """Feed a scene to a lane; keep every verdict, abandonment and state change."""

    people: list[Person]
    settings: ScreeningSettings = SETTINGS
    geometry: LaneGeometry = field(default_factory=LaneGeometry)
    verdicts: list[Verdict] = field(default_factory=list)
    abandoned: list[Abandoned] = field(default_factory=list)
    states: list[tuple[float, str]] = field(default_factory=list)
    one_at_a_time_t: list[float] = field(default_factory=list)
    people_of: dict[int, set[str]] = field(default_factory=dict)  # track id → who it followed (the replay's own boxes)

    def __post_init__(self) -> None:
        cal = ThermalCalibration(REGISTRATION, offset_c=OFFSET_C, roi_margin=0.1, min_pixels=8)
        self.lane = ScreeningLane(self.settings, ScreeningPolicy(), cal, on_abandoned=self.abandoned.append)
        self.lane.directions.geometry = self.geometry

    def _seen(self, t: float) -> list[tuple[Person, Box]]:
        boxes = [(p, p.box(t)) for p in self.people]
        present = sorted(((p, b) for p, b in boxes if b is not None), key=lambda pb: -pb[1].height)  # nearest first
        out: list[tuple[Person, Box]] = []
        for p, b in present:
            if not _hidden(b, [n for _, n in out]):
                out.append((p, b))
        return out

    def _thermal(self, t: float, seq: int) -> ThermalFrame:
        img = np.full((24, 32), ROOM_C, dtype=np.float32)
        present = [(p, p.box(t)) for p in self.people]
        for p, b in sorted(((p, b) for p, b in present if b is not None), key=lambda pb: pb[1].height):  # far first
            x1, y1 = max(0, int(b.x1 * SCALE)), max(0, int(b.y1 * SCALE))
            x2, y2 = min(32, int(np.ceil(b.x2 * SCALE))), min(24, int(np.ceil(b.y2 * SCALE)))
            img[y1:y2, x1:x2] = p.core_c - OFFSET_C
        return ThermalFrame(img, die_c=ROOM_C + 8.0, seq=seq, t=t)

    def _keep(self, v: Verdict | None) -> None:
        if v is not None:
            self.verdicts.append(v)

    def run(self, until: float) -> Replay:
        """Replay the scene at 10 frames/s up to ``until`` seconds."""
        codes = sorted((p.code_t, p) for p in self.people if p.code_t is not None)
        last_state = None
        for i in range(int(round(until * 10)) + 1):
            t = round(i * 0.1, 6)
            seen = self._seen(t)
            faces = tuple(FaceDetection(b, 0.9) for _, b in seen)
            self._keep(self.lane.on_faces(FaceObservation(i, t, t + 0.005, faces, FRAME, 5.0)))
            for (p, _), tr in zip(seen, [self.lane.tracker.tracks[tid] for tid in self._track_ids(seen)], strict=True):
                self.people_of.setdefault(tr.id, set()).add(p.name)
            self._keep(self.lane.on_thermal(self._thermal(t + 0.02, i)))
            while codes and codes[0][0] <= t + 0.05:
                ct, p = codes.pop(0)
                verdict = CodeVerdict(CodeStatus.VALID, p.colour, "ok", "test")
                self._keep(self.lane.on_code(CodeObservation(i, ct, ct + 0.01, verdict, 8.0, "test")))
            self._keep(self.lane.tick(t + 0.06))
            if self.lane.one_at_a_time:
                self.one_at_a_time_t.append(t)
            if self.lane.state != last_state:
                last_state = self.lane.state
                self.states.append((t, last_state.value))
        return self

    def _track_ids(self, seen: list[tuple[Person, Box]]) -> list[int]:
        ids = []
        for _, b in seen:
            tid = next((tr.id for tr in self.lane.tracker.tracks.values() if tr.box is b), None)
            assert tid is not None
            ids.append(tid)
        return ids

    @property
    def names(self) -> dict[int, str]:
        """Return the person of each track, asserting that no track ever followed two people."""
        assert all(len(who) == 1 for who in self.people_of.values()), self.people_of
        return {tid: next(iter(who)) for tid, who in self.people_of.items()}

    def decisions(self) -> list[tuple[str, str, str, float | None]]:
        """Return (person, decision, reason, temperature) of every verdict, in order."""
        return [(self.names[v.face["track_id"]], v.decision.value, v.reason, v.temperature_c) for v in self.verdicts]


# -- two people in a queue, 1 m apart -------------------------------------------------------------


def queue_of_two(b_core: float) -> list[Person]:
    """A walks up, passes, and dawdles through the gate; B follows 1 m behind and stops at the gate.

    A is still in the zone (decided, nearer than B) for 1.5 s after their pass: B's readings start then,
    on B's own face, so B is decided as soon as A has gone.
    """
    t, a_in = walk(0.0, 2.0, 0.55, 250)
    a = Person("A", [*a_in, (2.1, 0.55, 250), (3.5, 0.42, 250)], core_c=36.6, code_t=1.9)
    _, b_in = walk(0.0, 3.0, 1.55, 440)
    b = Person("B", [*b_in, (2.1, 1.55, 440), (2.9, 0.75, 440), (8.0, 0.75, 440)], core_c=b_core, code_t=3.65)
    return [a, b]


@pytest.mark.parametrize(
    ("b_core", "expected"),
    [
        (36.9, [("A", "pass", "ok", 36.6), ("B", "pass", "ok", 36.9)]),
        (38.4, [("A", "pass", "ok", 36.6), ("B", "deny_fever", "fever", 38.4)]),
    ],
    ids=["both normal", "second one has a fever"],
)
def test_two_people_one_metre_apart_each_decided_on_their_own_readings(b_core: float, expected: list[Any]) -> None:
    r = Replay(queue_of_two(b_core)).run(until=9.0)
    assert r.decisions() == expected
    a, b = r.verdicts
    assert a.temperature["samples"] == [36.6, 36.6] and b.temperature["samples"] == [b_core, b_core]
    # B's readings were taken while A walked through (A last seen at 3.5 s, B locked at the gate after) ...
    assert b.stage_t["temperature"] < 3.5 < b.stage_t["face"]
    assert b.stage_t["enter"] < 3.0  # B entered the zone while A was still in it
    # ... so B waits only for their code (or not at all, with a fever): no temperature stage after the lock.
    if b.decision is Decision.DENY_FEVER:
        assert b.stage_t["decision"] == pytest.approx(3.605, abs=0.01)  # the first frame without A
    else:
        assert b.stage_t["decision"] == pytest.approx(3.66, abs=0.01)
    # B reaches the gate and is decided in the same frame (their code is already up, or a fever).
    assert [s for _, s in r.states] == ["idle", "screening", "decided", "idle"]
    refused = int(b.decision is Decision.DENY_FEVER)  # a fever: B steps aside, no entry
    assert r.lane.directions.counts == {"entry": 2 - refused, "exit": 0} and r.lane.directions.refused == refused


def test_a_reading_on_a_face_behind_the_decided_person_is_refused() -> None:
    """B queues straight behind A (their faces touch): B gets no reading until A has gone."""
    people = queue_of_two(36.9)
    b = people[1]
    b.path = [(t, d, 380.0) for t, d, _ in b.path]  # right behind A's shoulder, their faces touching
    r = Replay(people).run(until=7.0)
    assert r.decisions() == [("A", "pass", "ok", 36.6), ("B", "pass", "ok", 36.9)]
    vb = r.verdicts[1]
    assert vb.stage_t["temperature"] > 3.5  # measured only after A left
    assert vb.temperature["frames_by_state"].get("several_people", 0) > 0


# -- crossing people ----------------------------------------------------------------------------------


def test_crossing_people_keep_their_own_readings() -> None:
    """A at the gate and B a little behind swap sides while A is screened; B has a fever, A does not."""
    a = Person("A", [(0.0, 0.55, 200), (1.0, 0.55, 200), (2.0, 0.55, 440), (2.6, 0.55, 440), (2.8, 0.3, 440)], 36.6, code_t=2.3)
    b = Person("B", [(0.0, 0.8, 460), (1.0, 0.8, 460), (2.0, 0.8, 220), (6.0, 0.8, 220)], 38.5, code_t=None)
    r = Replay([a, b]).run(until=5.0)
    assert r.decisions() == [("A", "pass", "ok", 36.6), ("B", "deny_fever", "fever", 38.5)]
    # No track ever followed both (B's face is lost behind A's for a moment and comes back as a new
    # track: its readings start afresh, never A's).
    assert set(r.names.values()) == {"A", "B"}


# -- a person who turns back ----------------------------------------------------------------------------


def test_a_person_who_turns_back_is_not_counted_and_gets_no_decision() -> None:
    _, towards = walk(0.0, 2.5, 0.7, 320)
    _, back = walk(2.3, 0.7, 2.5, 320)
    c = Person("C", [*towards, *back], 36.6)
    _, d_in = walk(5.5, 2.0, 0.55, 320)  # after C is out of sight for longer than a track is kept
    d = Person("D", [*d_in, (8.0, 0.55, 320)], 36.7, code_t=7.6)
    r = Replay([c, d]).run(until=9.5)
    assert r.decisions() == [("D", "pass", "ok", 36.7)]
    assert [(r.names[x.track_id], x.reason, x.at_gate) for x in r.abandoned] == [("C", "turned_back", True)]
    assert r.lane.abandoned == {"turned_back": 1}
    assert r.lane.directions.counts == {"entry": 1, "exit": 0} and r.lane.directions.turned_back == 1


def test_a_denied_person_walking_back_is_taken_off_the_entry_count() -> None:
    _, towards = walk(0.0, 2.0, 0.55, 320)
    e = Person("E", [*towards, (2.5, 0.55, 320), *walk(2.5, 0.55, 2.0, 320)[1]], 36.6, code_t=2.0, colour=CodeColour.RED)
    r = Replay([e]).run(until=5.0)
    assert r.decisions() == [("E", "deny_code", "code_red", 36.6)]
    assert r.abandoned == []  # decided before turning: nothing to abandon
    # Counted as an entry while walking up, taken back at the refusal: refused, not turned back.
    assert r.lane.directions.counts == {"entry": 0, "exit": 0}
    assert (r.lane.directions.refused, r.lane.directions.turned_back) == (1, 0)


def test_a_passed_person_stays_counted_whatever_they_do_next() -> None:
    _, towards = walk(0.0, 2.0, 0.55, 320)
    p = Person("P", [*towards, (2.5, 0.55, 320), *walk(2.5, 0.55, 1.5, 320)[1]], 36.6, code_t=2.0)
    r = Replay([p]).run(until=4.0)
    assert r.decisions() == [("P", "pass", "ok", 36.6)]
    assert r.lane.directions.counts == {"entry": 1, "exit": 0} and r.lane.directions.turned_back == 0


# -- side by side ------------------------------------------------------------------------------------


def test_two_people_side_by_side_are_told_one_at_a_time_then_screened_in_turn() -> None:
    _, a_in = walk(0.0, 2.0, 0.6, 200)
    a = Person("A", [*a_in, (9.0, 0.6, 200), (9.3, 0.3, 200)], 36.6, code_t=6.0)
    _, b_in = walk(0.0, 2.0, 0.6, 450)
    b = Person("B", [*b_in, (5.0, 0.6, 450), (5.3, 1.2, 450), (9.5, 1.2, 450), (10.1, 0.6, 450), (14.0, 0.6, 450)], 36.8, code_t=10.9)
    r = Replay([a, b]).run(until=13.0)
    assert r.decisions() == [("A", "retry", "one_at_a_time", None), ("A", "pass", "ok", 36.6), ("B", "pass", "ok", 36.8)]
    # B stepping back out of the zone is a turn-back (their waiting screening is dropped), and
    # stepping up again a fresh approach: screened like anyone else, counted once.
    assert [(r.names[x.track_id], x.reason, x.at_gate) for x in r.abandoned] == [("B", "turned_back", False)]
    told = r.verdicts[0]
    assert told.temperature["frames_by_state"].get("several_people", 0) > 0 and told.temperature["samples"] == []
    assert told.stage_t["decision"] - told.stage_t["face"] == pytest.approx(SETTINGS.temperature_timeout_s, abs=0.11)
    # The display was told at once, long before the decision point, and until B stepped back.
    assert r.one_at_a_time_t[0] <= 1.2 and 4.9 <= r.one_at_a_time_t[-1] < 5.3
    assert r.lane.directions.counts == {"entry": 2, "exit": 0} and r.lane.directions.turned_back == 1


def test_a_person_who_turns_back_and_comes_again_is_screened() -> None:
    _, towards = walk(0.0, 2.5, 0.7, 320)
    _, back = walk(2.3, 0.7, 1.6, 320)
    _, again = walk(3.5, 1.6, 0.55, 320)
    c = Person("C", [*towards, *back, *again, (6.0, 0.55, 320)], 36.6, code_t=5.5)
    r = Replay([c]).run(until=6.0)
    assert r.decisions() == [("C", "pass", "ok", 36.6)]
    assert [x.reason for x in r.abandoned] == ["turned_back"]
    assert r.lane.directions.counts == {"entry": 1, "exit": 0} and r.lane.directions.turned_back == 1


def test_side_by_side_at_the_decision_point_never_passes_on_an_earlier_reading() -> None:
    """A has a good reading and a green code on its way when B steps up beside A: retry, not pass."""
    _, a_in = walk(0.0, 2.0, 0.55, 200)
    a = Person("A", [*a_in, (6.0, 0.55, 200)], 36.6, code_t=2.9)
    b = Person("B", [(2.0, 1.6, 450), (2.8, 0.6, 450), (6.0, 0.6, 450)], 36.9)  # 201 px beside A's 220 at 2.8 s
    r = Replay([a, b]).run(until=3.0)
    assert r.decisions() == [("A", "retry", "one_at_a_time", 36.6)]
    assert r.verdicts[0].temperature["samples"] == [36.6, 36.6]  # A's own reading, and only A's


# -- a child, a passer-by --------------------------------------------------------------------------


def test_a_child_with_a_small_face_is_screened_after_the_adult_beside_them() -> None:
    _, a_in = walk(0.0, 2.0, 0.55, 240)
    adult = Person("adult", [*a_in, (2.1, 0.55, 240), (2.4, 0.3, 240)], 36.6, code_t=1.9)
    _, c_in = walk(0.0, 2.0, 0.6, 420)
    child = Person("child", [*c_in, (5.0, 0.6, 420)], 36.9, code_t=2.8, face_m=0.15)  # 137 px at 0.6 m
    r = Replay([adult, child]).run(until=4.0)
    assert r.decisions() == [("adult", "pass", "ok", 36.6), ("child", "pass", "ok", 36.9)]
    assert r.verdicts[1].face["box"][3] - r.verdicts[1].face["box"][1] < 140


def test_a_passer_by_at_the_edge_never_starts_a_screening() -> None:
    walker = Person("walker", [(0.0, 0.6, 10), (1.0, 0.6, 50), (2.0, 0.6, 10)], 36.6, code_t=1.0)
    r = Replay([walker]).run(until=3.0)
    assert r.verdicts == [] and r.abandoned == []
    assert r.states == [(0.0, "idle")]


# -- direction counts at walking pace ----------------------------------------------------------------


def test_direction_counts_are_right_for_a_queue_at_walking_pace() -> None:
    """Five people 1.2 m apart walk through at 1.0 m/s without stopping; one turns back; one walks out."""
    people = []
    for k in range(5):
        t0 = k * 1.2
        _, path = walk(t0, 3.0, 0.35, 240 if k % 2 else 400)  # a staggered queue: no face hidden behind another
        people.append(Person(f"in{k}", path))
    _, towards = walk(7.0, 3.0, 0.8, 320)
    _, back = walk(9.5, 0.8, 3.0, 320)
    people.append(Person("back", [*towards, *back]))
    people.append(Person("out", walk(13.0, 0.45, 3.0, 320)[1]))
    r = Replay(people).run(until=16.0)
    assert r.lane.directions.counts == {"entry": 5, "exit": 1}
    assert r.lane.directions.turned_back == 1
    assert sorted(set(r.names.values())) == sorted(p.name for p in people)
    assert len(r.names) == len(people)  # one track per person: nobody split or merged at 1 m/s
    assert r.lane.state is LaneState.IDLE


def test_a_much_nearer_face_is_not_beside_the_person_at_the_gate() -> None:
    """W, already through the gate (re-found by the tracker as a new face, 1.7× as tall), never makes B retry."""
    _, b_in = walk(0.0, 2.0, 0.6, 400)
    b = Person("B", [*b_in, (4.0, 0.6, 400)], 36.8, code_t=2.6)
    w = Person("W", [(1.9, 0.35, 220), (2.3, 0.3, 120)], 36.6)  # appears at 1.9 s, 345 px tall, walks off
    r = Replay([b, w]).run(until=3.0)
    assert [d for d in r.decisions() if d[0] == "B"] == [("B", "pass", "ok", 36.8)]
    assert r.one_at_a_time_t == []


def test_a_decided_person_found_again_as_they_pass_is_not_screened_twice() -> None:
    """P is let through and swings past the camera so fast the tracker loses them: found again, still decided."""
    _, towards = walk(0.0, 2.0, 0.55, 320)
    p = Person("P", [*towards, (2.5, 0.55, 320), (2.7, 0.35, 620)], 36.6, code_t=2.0)
    r = Replay([p]).run(until=4.5)
    assert len(r.names) == 2  # two tracks for P: the tracker did lose them
    assert r.decisions() == [("P", "pass", "ok", 36.6)]  # and no retry for the second one
    assert r.lane.directions.counts == {"entry": 1, "exit": 0}


def test_someone_walking_up_outside_the_lane_zone_is_not_counted() -> None:
    """A person on the next path (far right of the picture) walks towards the camera: no screening, no entry."""
    other = Person("other", walk(0.0, 3.0, 1.2, 610)[1])
    r = Replay([other]).run(until=2.5)
    assert r.verdicts == [] and r.lane.directions.counts == {"entry": 0, "exit": 0}
