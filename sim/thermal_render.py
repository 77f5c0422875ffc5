"""Render the demo scene as heat: what a 32×24 MLX90640 sees of the lane, for the demo, tests and bench.

The renderer draws the person the shared ``SceneDirector`` puts in the lane, at the place the visible
camera sees their face (``SceneGeometry.visible_to_thermal``), so both sensors agree. The head is
drawn on a 10× supersampled grid and area-averaged down to 32×24: pixels that straddle skin and
background read low, which reproduces the fill-factor loss that grows with distance (thermal.md §2.6).

Measured on this model (default ``SceneGeometry``, face-box ROI, hottest 3×3 mean whose centre pixel
lies in the face box): at the standing distance of 0.55 m it reads **core − 1.35 °C** without noise
(the 3×3 window straddles the 1.8-pixel-high periorbital band and the forehead/nose around it); with
σ = 0.1 °C noise the mean over 20 people is also core − 1.35 °C (spread σ ≈ 0.03 °C). The loss grows
with distance: 1.00 / 1.20 / 1.35 / 1.57 / 1.70 / 3.66 °C at 0.30 / 0.45 / 0.55 / 0.75 / 1.0 / 1.5 m.
Set the station's default skin→core offset from the 0.55 m figure and re-measure it if the face model
or the geometry changes (``tests/test_thermal_emulator.py`` pins it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from sim.scene import Phase, QueueDirector, SceneDirector, SceneGeometry
from station.domain.model import Box

SUPERSAMPLE = 10

# Face map, relative to the inscribed face ellipse: v runs 0 (top of face box) → 1 (chin),
# u runs -1 (left edge) → +1 (right edge).
HAIRLINE_V = 0.12
EYE_LINE_V = 0.40
EYE_BAND_HALF_V = 0.06
EYE_BAND_HALF_U = 0.55  # the band spans ~55 % of the face width
NOSE_HALF_U = 0.18
NOSE_V = (0.46, 0.68)

PERIORBITAL_BELOW_CORE = 0.9
FOREHEAD_BELOW_CORE = 1.8
CHEEK_BELOW_CORE = 2.3
NOSE_BELOW_CORE = 3.0
HAIR_ABOVE_ROOM = 6.0
CLOTHING_ABOVE_ROOM = 5.0


class ThermalSceneRenderer:
    """The render function for ``GyMcu90640Emulator``: ``renderer(now)`` gives (image °C (24, 32) float32, die °C).

    It draws everyone the director has in view (the demo's one person, or a queue), farthest first.
    """

    def __init__(
        self,
        director: SceneDirector | QueueDirector | None,
        room_c: float = 22.0,
        noise_c: float = 0.1,
        die_above_room_c: float = 8.0,
        seed: int | None = None,
        geometry: SceneGeometry | None = None,
        warmup_tau_s: float = 0.0,
        sensor_offset_c: float = 0.0,
        blackbody: tuple[tuple[int, int, int, int], float] | None = None,
        distractors: Sequence[tuple[Box, float]] = (),
    ) -> None:
        """Set up the room, the sensor and what else is in view; ``director`` None draws only ``render_people``.

        ``warmup_tau_s``: the die starts at room temperature and rises to room + die_above_room_c
        with this time constant (0 = already warm). ``sensor_offset_c``: a unit's uncalibrated offset,
        added to every pixel (what an in-scene blackbody exists to catch). ``blackbody``: (thermal-pixel
        box x1, y1, x2, y2, set-point). ``distractors``: hot objects (thermal-pixel box, °C), e.g. a cup.
        """
        self.director = director
        self.geometry = geometry or (director.geometry if director is not None else SceneGeometry())
        self.room_c = room_c
        self.noise_c = noise_c
        self.die_above_room_c = die_above_room_c
        self.warmup_tau_s = warmup_tau_s
        self.sensor_offset_c = sensor_offset_c
        self.blackbody = blackbody
        self.distractors = tuple(distractors)
        self._scene_rng = np.random.default_rng(seed)  # sensor noise of the simulated scene
        self._t0: float | None = None
        cols, rows = self.geometry.thermal_size
        self._rows, self._cols = rows, cols
        s = SUPERSAMPLE
        ys = (np.arange(rows * s, dtype=np.float64) + 0.5) / s
        xs = (np.arange(cols * s, dtype=np.float64) + 0.5) / s
        self._gy, self._gx = np.meshgrid(ys, xs, indexing="ij")  # thermal pixel coordinates
        # a warmer ceiling and a cooler floor, 0.4 °C top to bottom
        self._background = room_c + 0.4 * (0.5 - self._gy / rows)

    def __call__(self, now: float) -> tuple[np.ndarray, float]:
        """Return the frame at ``now`` for the person the director puts in the lane, and the die temperature."""
        assert self.director is not None, "a renderer without a director draws with render_people()"
        state = self.director.state(now)
        # Everyone in view, farthest first (a queue: the next people stand behind the screened one).
        people = [(v.person.core_c, v.face_box) for v in state.views()]
        return self.render_people(people, now)

    def render_people(self, people: Sequence[tuple[float, Box]], now: float = 0.0, skin_shift_c: float = 0.0) -> tuple[np.ndarray, float]:
        """Return one frame of ``people`` and the die temperature at ``now``.

        ``people`` are (core °C, visible face box) each, farthest first (nearer ones are drawn over
        them). ``skin_shift_c`` moves this person's skin map (person-to-person spread).
        """
        fine = self._background.copy()
        for (x1, y1, x2, y2), temp in self.distractors_fine():
            fine[y1:y2, x1:x2] = temp
        for core_c, face in people:
            box = self._face_box_thermal(face)
            if box is not None:
                self._draw_person(fine, box, core_c + skin_shift_c)
        if self.blackbody is not None:
            (x1, y1, x2, y2), temp = self.blackbody
            s = SUPERSAMPLE
            fine[y1 * s : y2 * s, x1 * s : x2 * s] = temp
        s = SUPERSAMPLE
        img = fine.reshape(self._rows, s, self._cols, s).mean(axis=(1, 3)) + self.sensor_offset_c
        if self.noise_c > 0:
            img = img + self._scene_rng.normal(0.0, self.noise_c, img.shape)
        img = np.round(img, 2).astype(np.float32)
        return img, self.die_c(now)

    def die_c(self, now: float) -> float:
        """Return the sensor die temperature (Ta): room + die_above_room_c once warm, rising from room at power-up."""
        if self.warmup_tau_s <= 0:
            return self.room_c + self.die_above_room_c
        if self._t0 is None:
            self._t0 = now
        return self.room_c + self.die_above_room_c * (1.0 - float(np.exp(-(now - self._t0) / self.warmup_tau_s)))

    def distractors_fine(self) -> list[tuple[tuple[int, int, int, int], float]]:
        """Return the distractors' boxes on the supersampled grid, with their temperatures."""
        s = SUPERSAMPLE
        return [((int(b.x1 * s), int(b.y1 * s), int(b.x2 * s), int(b.y2 * s)), temp) for b, temp in self.distractors]

    def ground_truth(self, now: float) -> dict[str, Any]:
        """Return what the scene holds at ``now``: core temperature, face box in thermal pixels, distance."""
        assert self.director is not None
        state = self.director.state(now)
        present = self._person_visible(state.phase) and state.person is not None
        return {
            "core_c": state.person.core_c if present and state.person else None,
            "face_box_thermal": self._face_box_thermal(state.face_box) if present else None,
            "distance_m": state.distance_m if present else None,
            "people": len(state.views()),
            "phase": state.phase.value,
            "die_c": round(self.die_c(now), 3),
            "room_c": self.room_c,
            "blackbody": list(self.blackbody[0]) + [self.blackbody[1]] if self.blackbody else None,
            "distractors": [b.as_list() + [temp] for b, temp in self.distractors],
        }

    # -- drawing -------------------------------------------------------------------------------------
    @staticmethod
    def _person_visible(phase: Phase) -> bool:
        return phase in (Phase.APPROACHING, Phase.STANDING)

    def _face_box_thermal(self, face: Box | None) -> Box | None:
        """Map the visible face box through the registration homography (all four corners)."""
        if face is None:
            return None
        h = self.geometry.visible_to_thermal()
        corners = np.array([[face.x1, face.y1, 1.0], [face.x2, face.y1, 1.0], [face.x2, face.y2, 1.0], [face.x1, face.y2, 1.0]])
        mapped = corners @ h.T
        xy = mapped[:, :2] / mapped[:, 2:3]
        return Box(float(xy[:, 0].min()), float(xy[:, 1].min()), float(xy[:, 0].max()), float(xy[:, 1].max()))

    def _draw_person(self, fine: np.ndarray, box: Box, core_c: float) -> None:
        gx, gy = self._gx, self._gy
        w, h = box.width, box.height
        cx, cy = box.centre
        u = (gx - cx) / (w / 2.0)
        v = (gy - box.y1) / h
        room = self.room_c

        # torso and neck first, the head over them
        torso = (np.abs(gx - cx) <= 1.3 * w) & (v >= 1.15)
        fine[torso] = room + CLOTHING_ABOVE_ROOM
        neck = (np.abs(u) <= 0.6) & (v >= 0.85) & (v < 1.15)
        fine[neck] = core_c - CHEEK_BELOW_CORE

        # the back of the head: a cap of hair a little wider and taller than the face
        cap = ((gx - cx) / (0.56 * w)) ** 2 + ((gy - (box.y1 + 0.32 * h)) / (0.44 * h)) ** 2 <= 1.0
        fine[cap & (v < 0.45)] = room + HAIR_ABOVE_ROOM

        face = u**2 + ((gy - cy) / (h / 2.0)) ** 2 <= 1.0
        skin = np.full(fine.shape, core_c - CHEEK_BELOW_CORE)
        skin[v < EYE_LINE_V + EYE_BAND_HALF_V] = core_c - FOREHEAD_BELOW_CORE
        skin[(np.abs(v - EYE_LINE_V) <= EYE_BAND_HALF_V) & (np.abs(u) <= EYE_BAND_HALF_U)] = core_c - PERIORBITAL_BELOW_CORE
        skin[(np.abs(u) <= NOSE_HALF_U) & (v >= NOSE_V[0]) & (v < NOSE_V[1])] = core_c - NOSE_BELOW_CORE
        skin[v < HAIRLINE_V] = room + HAIR_ABOVE_ROOM
        fine[face] = skin[face]
