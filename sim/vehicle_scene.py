"""A vehicle scene for the vehicle lane: a car rolls up, its occupants are screened at the window, it drives off.

What the emulated sensors would report, by time: ``plate_reads(t)`` is the plate reader's answer for
a frame at ``t`` (box, text, confidence, score: the ``PlateReader`` port's form), and ``face_at(t)``
the face at the window (one occupant at a time leans out) with that occupant's core temperature
and the code they show. The car approaches (its plate box grows: an entry with the default lane
geometry), stops at the window while each occupant is screened, then pulls out of the picture to
the right. A few reads are wrong or unsure, as a moving plate's are.

``vehicle_scenario(name)`` gives the presets with their ground truth.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from station.domain.model import Box, CodeColour

FRAME = (640, 480)


@dataclass(frozen=True, slots=True)
class SceneOccupant:
    """One person in the car: when they lean to the window, their core temperature, the code they show."""

    name: str
    at_t: float
    core_c: float = 36.6
    colour: CodeColour | None = CodeColour.GREEN
    dwell_s: float = 2.0  # at the window this long, then back in their seat
    face_x: float = 320.0  # where their face shows across the picture (each sits elsewhere)


@dataclass(frozen=True, slots=True)
class VehicleScene:
    """A car's path through the picture and its occupants."""

    plate: str
    occupants: tuple[SceneOccupant, ...]
    stop_t: float = 1.5  # reaches the window
    leave_t: float = 6.0  # pulls away
    gone_t: float = 7.5  # out of the picture
    misreads: dict[int, tuple[str, float]] = field(default_factory=dict)  # read number → (text, confidence)

    def plate_box(self, t: float) -> Box | None:
        """Return the plate's box at ``t``, or None when the car is not in the picture."""
        if t < 0.0 or t > self.gone_t:
            return None
        if t < self.stop_t:  # approaching: the plate grows from 80 to 140 px wide
            w = 80.0 + 60.0 * t / self.stop_t
            cx = 300.0
        elif t < self.leave_t:
            w, cx = 140.0, 300.0
        else:  # pulling out to the right
            w, cx = 140.0, 300.0 + 300.0 * (t - self.leave_t)
        cy = 380.0
        return Box(cx - w / 2, cy - w * 0.16, cx + w / 2, cy + w * 0.16)

    def plate_reads(self, t: float, n: int) -> list[dict[str, Any]]:
        """Return the plate reader's answer for read number ``n`` at ``t`` (empty when no plate is in view)."""
        box = self.plate_box(t)
        if box is None or box.x2 > FRAME[0] + 40:
            return []
        text, conf = self.misreads.get(n, (self.plate, 0.92))
        return [{"box": [box.x1, box.y1, box.x2, box.y2], "text": text, "confidence": conf, "score": 0.95}]

    def face_at(self, t: float) -> tuple[SceneOccupant, Box] | None:
        """Return the occupant at the window at ``t`` and their face box, or None."""
        for o in self.occupants:
            if o.at_t <= t < o.at_t + o.dwell_s:
                h = 170.0
                return o, Box(o.face_x - h * 0.4, 200 - h / 2, o.face_x + h * 0.4, 200 + h / 2)
        return None


def vehicle_scenario(name: str, fever_threshold_c: float = 37.3) -> tuple[VehicleScene, dict[str, object]]:
    """Return a preset scene and its ground truth (``plate``, ``occupants``, ``fever``, ``denied``, ``flagged``)."""
    if name == "three_occupants_one_fever":
        people = (
            SceneOccupant("driver", 2.0, 36.5),
            SceneOccupant("front passenger", 5.5, 38.4, face_x=300.0),
            SceneOccupant("back passenger", 9.0, 36.7, face_x=350.0),
        )
        scene = VehicleScene("浙A12345", people, leave_t=12.0, gone_t=13.5, misreads={1: ("浙A1Z345", 0.4), 3: ("浙A12345", 0.1)})
    elif name == "resident_red_code":
        scene = VehicleScene("皖K66666", (SceneOccupant("driver", 2.0, 36.6, CodeColour.RED),))
    elif name == "outsider_alone":
        scene = VehicleScene("鲁L88888", (SceneOccupant("driver", 2.0, 36.6),))
    else:
        raise ValueError(f"unknown vehicle scenario {name!r}: three_occupants_one_fever, resident_red_code or outsider_alone")
    fever = sum(o.core_c >= fever_threshold_c for o in scene.occupants)
    denied = sum(o.core_c >= fever_threshold_c or o.colour is CodeColour.RED for o in scene.occupants)
    truth: dict[str, object] = {
        "plate": scene.plate,
        "occupants": len(scene.occupants),
        "fever": fever,
        "denied": denied,
        "flagged": denied > 0,
    }
    return scene, truth


class ScenePlateReader:
    """A plate reader (the ``PlateReader`` port) that answers with the scene's plates at the time it is asked.

    The vehicle lane's plate thread calls ``read`` on its newest frame; this emulator reports what
    the real reader would have read of the scene's car then (scene time = ``clock() - start``), so
    a running station can be driven by a car without plate photos. ``start`` is set by ``drive``.
    """

    name = "scene-plates"

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.scene: VehicleScene | None = None
        self.start = 0.0
        self.reads = 0

    def drive(self, scene: VehicleScene) -> None:
        """Let ``scene``'s car drive through from now."""
        self.scene, self.start, self.reads = scene, self.clock(), 0

    def warm_up(self) -> float:
        """Nothing to load."""
        return 0.0

    def read(self, image: np.ndarray) -> list[dict[str, Any]]:
        """Return the plates of the scene's car now (none between cars)."""
        if self.scene is None:
            return []
        self.reads += 1
        return self.scene.plate_reads(self.clock() - self.start, self.reads - 1)
