"""The demo scene: who walks up to the gate, when, where they stand, what they show.

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

import numpy as np

from station.domain.model import Box, CodeColour

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

    def face_box_at(self, distance_m: float) -> Box:
        """Return where a face at ``distance_m`` appears in the visible image."""
        f = self.visible_focal_px
        fw = f * FACE_WIDTH_M / distance_m
        fh = f * FACE_HEIGHT_M / distance_m
        cx, cy = self.face_centre
        return Box(cx - fw / 2.0, cy - fh / 2.0, cx + fw / 2.0, cy + fh / 2.0)


@dataclass(frozen=True, slots=True)
class ScenePerson:
    """One person in the queue, with the ground truth the tests check against."""

    index: int
    core_c: float  # body core temperature
    code_colour: CodeColour | None  # None: shows no code at all
    code_payload: bytes | None  # what the phone's QR encodes
    label: str = ""
    expected: str = ""  # the decision a correct station makes under default policy


class Phase(StrEnum):
    """Where the lane is in its cycle: empty, someone walking up, someone standing, queue over."""

    EMPTY = "empty"
    APPROACHING = "approaching"
    STANDING = "standing"
    DONE = "done"


@dataclass(frozen=True, slots=True)
class SceneState:
    """What the sensors see at time ``t``: the phase, the person, their distance and face box."""

    t: float
    phase: Phase
    person: ScenePerson | None = None
    distance_m: float = 0.0
    face_box: Box | None = None  # visible-image coordinates
    showing_code: bool = False


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
