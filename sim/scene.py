"""The demo scene: who walks up to the gate, when, where they stand, what they show.

Two directors share one ``SceneState`` (so both emulated sensors render either): ``SceneDirector``
is the demo's one-person-at-a-time lane, and ``QueueDirector`` is a queue at walking pace — several
people in view at once, each walking, queueing behind the one ahead, standing at the gate line for a
decision and then walking through (a pass) or stepping aside (anything else); plus a person who
turns back before the gate, one who stops on the way, a child (smaller, lower face) and a passer-by
crossing far outside the lane. ``queue_walkers`` draws such a queue from a seed, and
``queue_scenario`` builds the bench's presets with their ground truth.

One ``SceneDirector`` is shared by the emulated devices of ``station demo``: the thermal module
emulator renders the person's heat from it and the replayed visible camera renders their face and
phone from it, so both sensors see the same person at the same moment. The director reacts to the
gate as people do: after a decision the person walks on (or away) and the next one steps up.

Geometry is shared too (``SceneGeometry``): the visible camera and the thermal module are modelled
as co-located pinhole cameras, and ``visible_to_thermal`` is the registration the station uses by
default, so an unconfigured station measures where the emulator put the face.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from math import radians, tan
from typing import TYPE_CHECKING

import numpy as np

from station.domain.model import Box, CodeColour

if TYPE_CHECKING:
    from sim.idcard_emulator import EmulatedCard

FACE_WIDTH_M = 0.16
FACE_HEIGHT_M = 0.22


@dataclass(frozen=True, slots=True)
class SceneGeometry:
    """Co-located visible camera and thermal array, both looking straight at the lane."""

    visible_size: tuple[int, int] = (640, 480)
    visible_hfov_deg: float = 60.0
    thermal_size: tuple[int, int] = (32, 24)  # columns, rows
    thermal_fov_deg: tuple[float, float] = (55.0, 35.0)
    face_centre: tuple[float, float] = (320.0, 210.0)  # where a person at the gate shows their face

    @property
    def visible_focal_px(self) -> float:
        """Return the visible camera's focal length in pixels."""
        return (self.visible_size[0] / 2.0) / tan(radians(self.visible_hfov_deg / 2.0))

    @property
    def thermal_focal_px(self) -> tuple[float, float]:
        """Return the thermal array's focal lengths in pixels, (x, y)."""
        cols, rows = self.thermal_size
        return (
            (cols / 2.0) / tan(radians(self.thermal_fov_deg[0] / 2.0)),
            (rows / 2.0) / tan(radians(self.thermal_fov_deg[1] / 2.0)),
        )

    def visible_to_thermal(self) -> np.ndarray:
        """Return the 3×3 homography from visible pixel coordinates to thermal pixel coordinates."""
        w, h = self.visible_size
        cols, rows = self.thermal_size
        f = self.visible_focal_px
        ftx, fty = self.thermal_focal_px
        sx, sy = ftx / f, fty / f
        return np.array(
            [[sx, 0.0, cols / 2.0 - sx * w / 2.0], [0.0, sy, rows / 2.0 - sy * h / 2.0], [0.0, 0.0, 1.0]],
            dtype=np.float64,
        )

    def face_box_at(self, distance_m: float, lateral_m: float = 0.0, scale: float = 1.0, drop_m: float = 0.0) -> Box:
        """Return where a face at ``distance_m`` appears in the visible image.

        ``lateral_m`` moves it sideways (positive: to the right of the image), ``scale`` sizes the
        face (a child's is smaller) and ``drop_m`` puts it lower than an adult's (a shorter person).
        """
        f = self.visible_focal_px
        fw = f * FACE_WIDTH_M * scale / distance_m
        fh = f * FACE_HEIGHT_M * scale / distance_m
        cx = self.face_centre[0] + f * lateral_m / distance_m
        cy = self.face_centre[1] + f * drop_m / distance_m
        return Box(cx - fw / 2.0, cy - fh / 2.0, cx + fw / 2.0, cy + fh / 2.0)

    def in_view(self, box: Box) -> bool:
        """Return True when at least half of ``box`` lies inside the visible image."""
        w, h = self.visible_size
        ix = max(0.0, min(box.x2, w) - max(box.x1, 0.0))
        iy = max(0.0, min(box.y2, h) - max(box.y1, 0.0))
        return box.area > 0 and ix * iy >= 0.5 * box.area


@dataclass(frozen=True, slots=True)
class ScenePerson:
    """One person in the queue, with the ground truth the tests check against."""

    index: int
    core_c: float  # body core temperature
    code_colour: CodeColour | None  # None: shows no code at all
    code_payload: bytes | None  # what the phone's QR encodes
    label: str = ""
    expected: str = ""  # the decision a correct station makes under default policy
    id_card: EmulatedCard | None = None  # the resident ID card they put on the reader (no phone), made up


class Phase(StrEnum):
    """Where the lane is in its cycle: empty, someone walking up, someone standing, queue over."""

    EMPTY = "empty"
    APPROACHING = "approaching"
    STANDING = "standing"
    DONE = "done"


@dataclass(frozen=True, slots=True)
class PersonView:
    """One person as the sensors see them at one moment: distance, face box and whether a phone is up."""

    person: ScenePerson
    distance_m: float
    face_box: Box  # visible-image coordinates
    showing_code: bool = False


@dataclass(frozen=True, slots=True)
class SceneState:
    """What the sensors see at time ``t``: the phase, the person at the gate, and everyone in view.

    ``person``/``distance_m``/``face_box``/``showing_code`` describe the person the lane is about
    (the one at, or nearest to, the gate line); ``people`` is everybody in view, farthest first, and
    is what the renderers draw. A state built with ``people`` empty draws its ``person`` alone.
    """

    t: float
    phase: Phase
    person: ScenePerson | None = None
    distance_m: float = 0.0
    face_box: Box | None = None  # visible-image coordinates
    showing_code: bool = False
    people: tuple[PersonView, ...] = ()

    def views(self) -> tuple[PersonView, ...]:
        """Return everyone to draw, farthest first (the lone ``person`` when ``people`` is empty)."""
        if self.people:
            return self.people
        if self.person is not None and self.face_box is not None and self.phase in (Phase.APPROACHING, Phase.STANDING):
            return (PersonView(self.person, self.distance_m, self.face_box, self.showing_code),)
        return ()


@dataclass(slots=True)
class SceneTiming:
    """How people move. ``fast`` timings skip human walking speed but keep every phase."""

    approach_s: float = 1.2
    start_distance_m: float = 2.5
    stand_distance_m: float = 0.55
    code_delay_s: float = 0.3  # from standing still to holding the phone up
    max_dwell_s: float = 12.0  # a person who gets no decision leaves after this
    gap_s: float = 1.2  # empty lane between people

    @classmethod
    def fast(cls, leave_after_s: float) -> SceneTiming:
        """Return timings for ``--fast``: quick steps, an empty gap just past ``leave_after_s`` so the station sees each leave."""
        return cls(approach_s=0.15, code_delay_s=0.0, gap_s=leave_after_s + 0.25)

    @classmethod
    def realtime(cls, leave_after_s: float) -> SceneTiming:
        """Return human timings, with an empty gap past ``leave_after_s`` so the station sees each person leave."""
        return cls(gap_s=max(1.2, leave_after_s + 0.4))


@dataclass(slots=True)
class _Slot:
    person: ScenePerson
    entered_t: float
    decided_t: float | None = None
    outcome: str | None = None


class SceneDirector:
    """Thread-safe script of the lane: ``state(now)`` for sensors, ``on_decision`` from the gate."""

    def __init__(
        self,
        people: Sequence[ScenePerson],
        timing: SceneTiming,
        geometry: SceneGeometry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.people = list(people)
        self.timing = timing
        self.geometry = geometry or SceneGeometry()
        self._clock = clock
        self._lock = threading.Lock()
        self._next_index = 0
        self._current: _Slot | None = None
        self._empty_until = clock() + timing.gap_s / 2.0
        self.outcomes: list[tuple[ScenePerson, str]] = []
        self._held = False

    def hold(self) -> None:
        """Nobody walks up until :meth:`release` (``station demo --wait-for-page``)."""
        with self._lock:
            self._held = True

    def release(self, now: float | None = None) -> None:
        """Let the queue start walking up now (after the usual half gap)."""
        now = self._clock() if now is None else now
        with self._lock:
            if self._held:
                self._held = False
                self._empty_until = max(self._empty_until, now + self.timing.gap_s / 2.0)

    # -- sensors' side ------------------------------------------------------------------------
    def state(self, now: float | None = None) -> SceneState:
        """Return the lane at ``now`` (default: the clock's now), advancing the queue first."""
        now = self._clock() if now is None else now
        with self._lock:
            self._advance(now)
            slot = self._current
            if slot is None:
                phase = Phase.DONE if self._next_index >= len(self.people) else Phase.EMPTY
                return SceneState(t=now, phase=phase)
            tm = self.timing
            since = now - slot.entered_t
            if since < tm.approach_s:
                frac = since / tm.approach_s if tm.approach_s > 0 else 1.0
                d = tm.start_distance_m + (tm.stand_distance_m - tm.start_distance_m) * frac
                return SceneState(now, Phase.APPROACHING, slot.person, d, self.geometry.face_box_at(d), False)
            d = tm.stand_distance_m
            showing = slot.person.code_payload is not None and since >= tm.approach_s + tm.code_delay_s
            return SceneState(now, Phase.STANDING, slot.person, d, self.geometry.face_box_at(d), showing)

    # -- the gate's side ----------------------------------------------------------------------
    def on_decision(self, decision: str, now: float | None = None) -> None:
        """Record the gate's decision for the person standing there; they leave the lane."""
        now = self._clock() if now is None else now
        with self._lock:
            if self._current is None:
                return
            self.outcomes.append((self._current.person, decision))
            self._current = None
            self._empty_until = now + self.timing.gap_s

    def finished(self, now: float | None = None) -> bool:
        """Return True once everyone has been through and the lane is empty (never while held)."""
        now = self._clock() if now is None else now
        with self._lock:
            self._advance(now)
            return not self._held and self._current is None and self._next_index >= len(self.people) and now >= self._empty_until

    def _advance(self, now: float) -> None:
        slot = self._current
        if slot is not None:
            if now - slot.entered_t > self.timing.approach_s + self.timing.max_dwell_s:
                self.outcomes.append((slot.person, "walked_away"))
                self._current = None
                self._empty_until = now + self.timing.gap_s
            return
        if not self._held and now >= self._empty_until and self._next_index < len(self.people):
            self._current = _Slot(self.people[self._next_index], entered_t=now)
            self._next_index += 1


# -- the queue at walking pace -------------------------------------------------------------------


class Role(StrEnum):
    """What a walker in a queue scenario does: queue for the gate, turn back before it, or walk past."""

    QUEUE = "queue"  # walks up, queues, stands at the gate line for a decision, walks through or aside
    TURN_BACK = "turn_back"  # walks up in the queue, hesitates short of the gate line, walks back out
    PASSER_BY = "passer_by"  # walks past on a parallel path outside the lane, never in the lane zone


@dataclass(frozen=True, slots=True)
class Walker:
    """One person's script in a queue scenario, with the ground truth the bench and tests check against.

    ``person.expected`` is the decision a correct station makes ("" = none expected: this person is
    never screened). Distances are from the camera along the lane; ``lateral_m`` is sideways.
    """

    person: ScenePerson
    role: Role
    arrival_s: float  # joins the queue this long after the scenario starts
    speed_mps: float  # walking pace
    gap_m: float  # distance kept behind the person ahead
    code_delay_s: float | None = None  # from reaching the gate line to holding the phone up; None: no phone
    stop_at_m: float | None = None  # stops once on the way, here ...
    stop_s: float = 0.0  # ... for this long
    turn_at_m: float | None = None  # TURN_BACK: where they hesitate and turn round
    lateral_m: float = 0.0
    face_scale: float = 1.0  # a child's face is smaller ...
    face_drop_m: float = 0.0  # ... and lower

    @property
    def expect_entry(self) -> bool:
        """Return True when this person should end up through the gate (a queuer who should pass)."""
        return self.role is Role.QUEUE and self.person.expected == "pass"


@dataclass(frozen=True, slots=True)
class QueueTiming:
    """Where the queue starts and ends and how people react; distances from the camera in metres."""

    start_distance_m: float = 3.0  # where a queuer comes into view
    gate_m: float = 0.55  # the gate line: where a person stands to be screened (calibrated distance)
    react_s: float = 0.3  # from a decision to walking on
    max_dwell_s: float = 12.0  # a person who gets no decision leaves after this
    pass_end_m: float = 0.25  # walking through, they pass beside the camera ...
    pass_lateral_m: float = 0.45  # ... this far to the side
    aside_lateral_m: float = 1.6  # a person not let through steps this far aside, at the gate line
    passer_lateral_m: float = 1.1  # the passer-by's parallel path, outside the lane
    passer_end_m: float = 1.0
    lane_half_width_m: float = 0.5  # the lane zone: |lateral| within this, up to the queue start
    measure_from_m: float | None = None  # screened on the move: the face can be measured from here (else at the gate line)
    step_s: float = 0.02  # simulation step


# Motion states of a walker (internal).
_WAITING, _WALKING, _PAUSED, _AT_GATE, _PASSING, _ASIDE, _TURNING, _GONE = range(8)
_STATE_NAMES = ("waiting", "walking", "paused", "at_gate", "passing", "aside", "turning", "gone")
QUEUE_STATES = ("walking", "paused", "at_gate")  # in the queue: the people behind keep their gap


@dataclass(frozen=True, slots=True)
class Position:
    """Where one walker is: their motion state, distance from the camera, sideways offset and face box."""

    index: int
    role: Role
    state: str  # one of walking, paused, at_gate, passing, aside, turning
    distance_m: float
    lateral_m: float
    face_box: Box


_CHAIN = (_WALKING, _PAUSED, _AT_GATE)  # in the queue: the people behind keep their gap to them
_VISIBLE = (_WALKING, _PAUSED, _AT_GATE, _PASSING, _ASIDE, _TURNING)


@dataclass(slots=True)
class _Mover:
    walker: Walker
    state: int = _WAITING
    z: float = 0.0
    x: float = 0.0
    stopped: bool = False  # the one stop on the way is used up
    pause_until: float = 0.0
    appeared_t: float | None = None
    gate_t: float | None = None
    in_range_t: float | None = None  # came within measure_from_m
    decided_t: float | None = None
    decision: str | None = None
    leave_t: float | None = None  # walks on (or aside) from here
    entered: bool = False
    crossed_gate: bool = False
    gone_t: float | None = None


class QueueDirector:
    """Thread-safe queue at walking pace: ``state(now)`` for sensors, ``on_decision`` from the gate.

    The simulation advances in fixed ``step_s`` steps from ``start()``: the same decisions at the
    same times give the same motion. ``timeline()`` gives each walker's ground-truth times on the
    director's clock (arrival, gate line, phone shown, decision, entered).
    """

    def __init__(
        self,
        walkers: Sequence[Walker],
        timing: QueueTiming | None = None,
        geometry: SceneGeometry | None = None,
        clock: Callable[[], float] = time.monotonic,
        start: bool = True,
    ) -> None:
        self.walkers = list(walkers)
        self.people = [w.person for w in self.walkers]
        self.timing = timing or QueueTiming()
        self.geometry = geometry or SceneGeometry()
        self._clock = clock
        self._lock = threading.Lock()
        self._movers = [_Mover(w) for w in self.walkers]
        self._lane = [m for m in self._movers if m.walker.role is not Role.PASSER_BY]
        self._t0: float | None = None
        self._sim_t = 0.0
        self.outcomes: list[tuple[ScenePerson, str]] = []
        if start:
            self.start()

    def start(self, now: float | None = None) -> None:
        """Start the scenario's clock now: arrivals count from here."""
        with self._lock:
            if self._t0 is None:
                self._t0 = self._clock() if now is None else now

    @property
    def t0(self) -> float | None:
        """Return the director-clock time the scenario started (None before ``start``)."""
        return self._t0

    # -- simulation ---------------------------------------------------------------------------
    def _advance(self, now: float) -> None:
        if self._t0 is None:
            return
        step = self.timing.step_s
        while self._t0 + self._sim_t + step <= now + 1e-9:
            self._sim_t += step
            self._step(self._t0 + self._sim_t, step)

    def _face(self, m: _Mover) -> Box:
        w = m.walker
        return self.geometry.face_box_at(m.z, m.x, w.face_scale, w.face_drop_m)

    def _step(self, t: float, dt: float) -> None:
        tm = self.timing
        assert self._t0 is not None
        ahead: _Mover | None = None  # the nearest earlier lane walker still in the queue
        blocked = False  # an earlier walker has not come into view yet: nobody behind can
        for m in self._lane:
            w = m.walker
            if m.state == _WAITING:
                room = ahead is None or ahead.z + w.gap_m <= tm.start_distance_m + 1e-9
                if not blocked and t >= self._t0 + w.arrival_s and room:
                    m.state, m.z, m.x, m.appeared_t = _WALKING, tm.start_distance_m, w.lateral_m, t
                else:
                    blocked = True
            self._move_lane(m, ahead, t, dt)
            if m.state in _CHAIN:
                ahead = m
        for m in self._movers:
            if m.walker.role is Role.PASSER_BY:
                self._move_passer(m, t, dt)
            if m.state in _VISIBLE and m.state not in _CHAIN and not self.geometry.in_view(self._face(m)):
                m.state, m.gone_t = _GONE, t

    def _move_lane(self, m: _Mover, ahead: _Mover | None, t: float, dt: float) -> None:
        tm, w = self.timing, m.walker
        v = w.speed_mps
        if m.state == _PAUSED and t >= m.pause_until:
            m.state = _TURNING if w.role is Role.TURN_BACK and w.turn_at_m is not None and m.z <= w.turn_at_m + 1e-9 else _WALKING
        if m.state == _WALKING:
            target = w.turn_at_m if w.role is Role.TURN_BACK and w.turn_at_m is not None else tm.gate_m
            floor = target
            if w.stop_at_m is not None and not m.stopped:
                floor = max(floor, w.stop_at_m)
            limit = ahead.z + w.gap_m if ahead is not None else floor
            m.z = max(m.z - v * dt, floor, limit)
            if m.in_range_t is None and tm.measure_from_m is not None and w.role is Role.QUEUE and m.z <= tm.measure_from_m + 1e-9:
                m.in_range_t = t
            if w.stop_at_m is not None and not m.stopped and m.z <= w.stop_at_m + 1e-9:
                m.stopped, m.state, m.pause_until = True, _PAUSED, t + w.stop_s
            elif w.role is Role.TURN_BACK and m.z <= target + 1e-9:
                m.state, m.pause_until = _PAUSED, t + 0.6  # hesitates, then turns round
            elif m.z <= tm.gate_m + 1e-9:
                m.state, m.gate_t = _AT_GATE, t
        if m.state == _AT_GATE:
            if m.decided_t is None and m.gate_t is not None and t - m.gate_t > tm.max_dwell_s:
                self._record(m, "walked_away", t)
            if m.leave_t is not None and t >= m.leave_t:
                m.state = _PASSING if m.decision == "pass" else _ASIDE
        if m.state == _PASSING:
            span = tm.gate_m - tm.pass_end_m
            m.z = max(tm.pass_end_m, m.z - v * dt)
            m.x = w.lateral_m + tm.pass_lateral_m * min(1.0, (tm.gate_m - m.z) / span)
            if m.z < tm.gate_m - 0.05:
                m.crossed_gate = m.entered = True
            if m.z <= tm.pass_end_m + 1e-9:
                m.state, m.gone_t = _GONE, t
        elif m.state == _ASIDE:
            m.x = max(-tm.aside_lateral_m, m.x - v * dt)
            if m.x <= -tm.aside_lateral_m + 1e-9:
                m.state, m.gone_t = _GONE, t
        elif m.state == _TURNING:
            m.z += v * dt
            m.x = min(m.x + 0.5 * v * dt, tm.aside_lateral_m)
            if m.z >= tm.start_distance_m + 0.3:
                m.state, m.gone_t = _GONE, t

    def _move_passer(self, m: _Mover, t: float, dt: float) -> None:
        tm, w = self.timing, m.walker
        assert self._t0 is not None
        if m.state == _WAITING and t >= self._t0 + w.arrival_s:
            m.state, m.z, m.x, m.appeared_t = _TURNING, tm.start_distance_m + 0.4, tm.passer_lateral_m, t
            return
        if m.state == _TURNING:  # (reuses the not-in-the-queue motion state; its path is its own)
            m.z = max(tm.passer_end_m, m.z - w.speed_mps * dt)
            if m.z <= tm.passer_end_m + 1e-9:
                m.state, m.gone_t = _GONE, t

    def _record(self, m: _Mover, decision: str, now: float) -> None:
        m.decided_t, m.decision = now, decision
        if m.walker.role is Role.QUEUE:
            # Standing at the gate, a person takes react_s to move off; one decided while still
            # walking up simply keeps walking (through the gate, or aside at the gate line).
            m.leave_t = now + self.timing.react_s if m.state == _AT_GATE else now
        self.outcomes.append((m.walker.person, decision))

    # -- sensors' side ------------------------------------------------------------------------
    def state(self, now: float | None = None) -> SceneState:
        """Return the lane at ``now`` (default: the clock's now), advancing the simulation first."""
        now = self._clock() if now is None else now
        with self._lock:
            self._advance(now)
            visible = [m for m in self._movers if m.state in _VISIBLE]
            visible.sort(key=lambda m: -m.z)
            views = tuple(PersonView(m.walker.person, m.z, self._face(m), self._showing(m)) for m in visible)
            front = self._front()
            if front is None:
                done = all(m.state == _GONE for m in self._movers) and self._t0 is not None
                return SceneState(now, Phase.DONE if done else Phase.EMPTY, people=views)
            phase = Phase.STANDING if front.state == _AT_GATE else Phase.APPROACHING
            return SceneState(now, phase, front.walker.person, front.z, self._face(front), self._showing(front), views)

    def _showing(self, m: _Mover) -> bool:
        w = m.walker
        if m.state != _AT_GATE or w.code_delay_s is None or w.person.code_payload is None or m.gate_t is None:
            return False
        return self._t0 is not None and self._t0 + self._sim_t >= m.gate_t + w.code_delay_s

    def _front(self) -> _Mover | None:
        queue = [m for m in self._lane if m.state in _CHAIN]
        return min(queue, key=lambda m: m.z) if queue else None

    # -- the gate's side ----------------------------------------------------------------------
    def on_decision(self, decision: str, now: float | None = None, face_box: Box | None = None) -> ScenePerson | None:
        """Record the gate's decision and return the person it was for (None when nobody in view fits).

        With ``face_box`` (the decided face, visible pixels) the decision goes to whoever in view
        overlaps it most — also someone already decided and walking off (a second decision about
        one person is recorded in ``outcomes`` but changes nothing); without, to the front of the
        queue. A queuer's first decision sends them on ``react_s`` later: through the gate on
        ``pass``, aside on anything else.
        """
        now = self._clock() if now is None else now
        with self._lock:
            self._advance(now)
            chosen: _Mover | None = None
            if face_box is not None:
                cands = [m for m in self._movers if m.state in _VISIBLE]
                best = max(cands, key=lambda m: self._face(m).iou(face_box), default=None)
                if best is not None and self._face(best).iou(face_box) > 0.05:
                    chosen = best
            else:
                chosen = self._front()
            if chosen is None:
                return None
            if chosen.decided_t is None:
                self._record(chosen, decision, now)
            else:
                self.outcomes.append((chosen.walker.person, decision))
            return chosen.walker.person

    def finished(self, now: float | None = None) -> bool:
        """Return True once every walker has left the view."""
        now = self._clock() if now is None else now
        with self._lock:
            self._advance(now)
            return self._t0 is not None and all(m.state == _GONE for m in self._movers)

    def timeline(self) -> list[dict[str, object]]:
        """Return each walker's ground truth and times on the director's clock (None: did not happen)."""
        with self._lock:
            out: list[dict[str, object]] = []
            for m in self._movers:
                w = m.walker
                code_t = (
                    m.gate_t + w.code_delay_s if m.gate_t is not None and w.code_delay_s is not None and w.person.code_payload else None
                )
                # The last input the station needs: the person standing at the gate line (a stable
                # face to measure, at the calibrated distance) and, if they show one, their phone.
                # Screened on the move, the face is there to measure once it is in range, not only at the line.
                reached = m.in_range_t if m.in_range_t is not None else m.gate_t
                needed = [t for t in (reached, code_t) if t is not None]
                out.append(
                    {
                        "index": w.person.index,
                        "label": w.person.label,
                        "role": w.role.value,
                        "expected": w.person.expected or None,
                        "expect_entry": w.expect_entry,
                        "arrival_t": None if self._t0 is None else self._t0 + w.arrival_s,
                        "appeared_t": m.appeared_t,
                        "gate_t": m.gate_t,
                        "code_t": code_t,
                        "last_input_t": max(needed) if reached is not None else None,
                        "decided_t": m.decided_t,
                        "decision": m.decision,
                        "entered": m.entered,
                        "gone_t": m.gone_t,
                    }
                )
            return out

    def positions(self, now: float | None = None) -> list[Position]:
        """Return where everyone in view is at ``now``, in queue order (tests, tools)."""
        now = self._clock() if now is None else now
        with self._lock:
            self._advance(now)
            return [
                Position(m.walker.person.index, m.walker.role, _STATE_NAMES[m.state], m.z, m.x, self._face(m))
                for m in self._movers
                if m.state in _VISIBLE
            ]


SPEED_RANGE_MPS = (0.8, 1.3)
GAP_RANGE_M = (0.8, 1.5)
PEAK_GAP_RANGE_M = (0.8, 1.0)  # a queue at the morning peak keeps the short end of the spacing
# Readings count on the move (no face-size hold) on faces up to ~1.05 m away: a site that has fitted
# the distance term over the approach (bench.lane_scenarios.walkthrough_calibration).
ON_THE_MOVE: dict[str, dict[str, object]] = {
    "screening": {"face_stable_s": 0.0, "face_size_tolerance": 0.3},
    "thermal": {"too_far_ratio": 1.9},
}
WALKTHROUGH_MEASURE_FROM_M = 1.0  # screened on the move: a face this near is measured (thermal.too_far_ratio 1.9 ≈ 1.05 m)
CHILD_FACE_SCALE = 0.72
CHILD_FACE_DROP_M = 0.12
TURN_BACK_AT_M = 1.5  # short of the lane zone: a face here is ~80 px, below the default min_face_px (120)


def queue_walkers(
    people: Sequence[ScenePerson],
    seed: int,
    *,
    code_delay_s: tuple[float, float] | None = (0.0, 0.4),
    lead_s: float = 0.5,
    extras: bool = True,
    gap_range: tuple[float, float] = GAP_RANGE_M,
) -> list[Walker]:
    """Return ``people`` as a queue arriving at walking pace, deterministic by ``seed``.

    Each walks at 0.8–1.3 m/s and keeps ``gap_range`` (default 0.8–1.5 m) behind the one ahead; they arrive as a stream
    at that spacing (the next arrives ``gap / speed`` after the previous). A person with a code
    payload holds their phone up ``code_delay_s`` (drawn from the range) after reaching the gate
    line; ``None`` means nobody shows one. With ``extras`` the queue also holds, at fixed places so
    a short queue has them all: the second person stops once on the way, the fourth is a child
    (smaller, lower face), a person who turns back before the gate is inserted third, and a
    passer-by walks past outside the lane as the fourth arrives.
    """
    rng = np.random.default_rng(seed)
    queue: list[tuple[ScenePerson, Role]] = [(p, Role.QUEUE) for p in people]
    next_index = max((p.index for p in people), default=-1) + 1
    if extras and people:
        turner = ScenePerson(next_index, 36.6, None, None, "turns back before the gate", "")
        queue.insert(min(2, len(queue)), (turner, Role.TURN_BACK))
    walkers: list[Walker] = []
    arrival = lead_s
    for pos, (person, role) in enumerate(queue):
        speed = float(rng.uniform(*SPEED_RANGE_MPS))
        gap = float(rng.uniform(*gap_range))
        delay = float(rng.uniform(*code_delay_s)) if code_delay_s is not None and person.code_payload is not None else None
        lateral = float(rng.uniform(-0.05, 0.05))
        if pos > 0:
            arrival += gap / speed
        child = extras and role is Role.QUEUE and pos == 4
        walkers.append(
            Walker(
                person,
                role,
                arrival_s=round(arrival, 3),
                speed_mps=speed,
                gap_m=gap,
                code_delay_s=delay,
                stop_at_m=1.8 if extras and pos == 1 and role is Role.QUEUE else None,
                stop_s=1.5 if extras and pos == 1 and role is Role.QUEUE else 0.0,
                turn_at_m=TURN_BACK_AT_M if role is Role.TURN_BACK else None,
                lateral_m=lateral,
                face_scale=CHILD_FACE_SCALE if child else 1.0,
                face_drop_m=CHILD_FACE_DROP_M if child else 0.0,
            )
        )
    if extras and people:
        passer = ScenePerson(next_index + 1, 36.7, None, None, "walks past outside the lane", "")
        at = walkers[min(4, len(walkers) - 1)].arrival_s + 0.2
        walkers.append(Walker(passer, Role.PASSER_BY, arrival_s=round(at, 3), speed_mps=float(rng.uniform(*SPEED_RANGE_MPS)), gap_m=0.0))
    return walkers


SCENARIOS = ("temperature_only", "temperature_and_code_prompt", "mixed")


@dataclass(frozen=True, slots=True)
class QueueScenario:
    """A named queue: its walkers (with ground truth), the config it runs under, and what it shows."""

    name: str
    walkers: tuple[Walker, ...]
    config: dict[str, dict[str, object]]  # section → {key: value} applied over the station's config
    description: str
    walkthrough: bool = False  # screened on the move: needs a distance term fitted over the approach (bench.lane_scenarios)
    timing: QueueTiming | None = None  # None: QueueTiming()


def queue_scenario(name: str, people: int, seed: int, now_wall: float, fever_threshold_c: float = 37.3) -> QueueScenario:
    """Return one of ``SCENARIOS`` with ``people`` queuers (plus the turn-back person and the passer-by).

    - ``temperature_only``: a temperature-only lane (``screening.code_required = false`` and
      ``temperature_on = "entry"``, the seeds' 单向测温) at the morning peak: 0.8–1.0 m apart, people
      walk through when the lane has decided before they reach the gate line, screened on the move
      (``walkthrough``); nobody shows a phone; the third queuer has a fever. Expected: ``pass`` for a
      normal temperature, ``deny_fever`` for the fever.
    - ``temperature_and_code_prompt``: everyone holds up a valid green code within 0.4 s of reaching
      the gate line, their temperature taken on the way up; the third has a fever.
    - ``mixed``: the demo's cast (``sim.demo.CAST``: fever, red, yellow, no code, expired, a payment
      QR), each showing their phone 0.3 s after reaching the gate line, as in the demo.
    """
    from sim.issuer import demo_issuer

    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}; one of {', '.join(SCENARIOS)}")
    if name == "mixed":
        from sim.demo import cast_people
        from station.config import StationConfig

        cast = cast_people(people, StationConfig(), now_wall)
        walkers = queue_walkers(cast, seed, code_delay_s=(0.3, 0.3))
        return QueueScenario(name, tuple(walkers), {}, "the demo's mix of codes and temperatures, queueing at walking pace")
    cast = []
    issuer = demo_issuer() if name == "temperature_and_code_prompt" else None
    for i in range(people):
        core = 38.2 if i % 8 == 2 else round(36.4 + 0.1 * (i % 6), 1)
        fever = core >= fever_threshold_c
        payload = None
        colour = None
        if issuer is not None:
            colour = CodeColour.GREEN
            payload = issuer.issue(colour, iat=int(now_wall) - 600, exp=int(now_wall) + 86400, holder=f"queue-person-{i}").encode()
        label = f"{'fever' if fever else 'normal'} {core} °C" + (", green code" if payload else ", no phone")
        cast.append(ScenePerson(i, core, colour, payload, label, "deny_fever" if fever else "pass"))
    if name == "temperature_only":
        # The morning peak: a dense queue (0.8–1.0 m apart) walking through without stopping when the
        # lane has decided in time, measured on the move (ON_THE_MOVE).
        walk = {"temperature_on": "entry", "code_required": False, **ON_THE_MOVE["screening"]}
        return QueueScenario(
            name,
            tuple(queue_walkers(cast, seed, code_delay_s=None, gap_range=PEAK_GAP_RANGE_M)),
            {"screening": walk, "thermal": ON_THE_MOVE["thermal"]},
            "temperature-only lane (单向测温) at the morning peak: people walk through, screened on the move; no code, no phone",
            walkthrough=True,
            timing=QueueTiming(measure_from_m=WALKTHROUGH_MEASURE_FROM_M),
        )
    # The temperature is taken on the way up (the same calibrated distance term), so the station
    # waits only for the phone: what it adds is the code's decode and the decision.
    return QueueScenario(
        name,
        tuple(queue_walkers(cast, seed)),
        {"screening": dict(ON_THE_MOVE["screening"]), "thermal": ON_THE_MOVE["thermal"]},
        "temperature (taken on the move) and a green code held up within 0.4 s of reaching the gate line",
        walkthrough=True,
        timing=QueueTiming(measure_from_m=WALKTHROUGH_MEASURE_FROM_M),
    )
