"""A real screening lane with one person standing at the gate and no phone: the operator-assisted check's rig.

The pipeline, the lane (``lane_for`` the default config), the SQLite store and the gpiozero mock
gate are the station's own; the camera shows a plain frame (nothing to read), the face detector
reports the person's face while ``present`` is set, and the thermal source renders that face at
``core_c`` with the demo's thermal renderer at the place the default registration maps it to. So
the lane measures a real temperature, waits for a code that never comes and decides
``retry``/``no_code`` while the person still stands there: the moment staff step in.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from drivers.codes.cascade import CascadeReader
from sim.scene import SceneGeometry
from sim.thermal_render import ThermalSceneRenderer
from station.app import build_gate, lane_for
from station.config import StationConfig
from station.domain.model import FaceDetection, ThermalFrame, VisibleFrame
from station.lane.pipeline import Decided, Pipeline, PipelineSettings, StationIdentity
from station.ops.clock import SystemClock
from station.store.events import SqliteEventStore

STAND_M = 0.55


class StandingCamera:
    """Plain grey frames at ``fps``: no code anywhere."""

    name = "standing-camera"

    def __init__(self, fps: float = 20.0) -> None:
        self.period, self.seq = 1.0 / fps, 0
        self.image = np.full((480, 640, 3), 128, np.uint8)
        self._stop = threading.Event()

    def start(self) -> None:
        """Nothing to open."""

    def stop(self) -> None:
        """End reads."""
        self._stop.set()

    def read(self, timeout: float) -> VisibleFrame | None:
        """Return the next frame at the camera's pace."""
        if self._stop.wait(self.period):
            return None
        self.seq += 1
        return VisibleFrame(image=self.image, seq=self.seq, t=time.monotonic())

    def stats(self) -> dict[str, Any]:
        """Return the camera's state."""
        return {"state": "running", "reads": self.seq}


class PersonDetector:
    """Report the standing person's face while ``present`` is set."""

    name = "person-detector"

    def __init__(self, box: Any) -> None:
        self.box = box
        self.present = threading.Event()
        self.present.set()

    def warm_up(self) -> float:
        """Nothing to load."""
        return 0.0

    def detect(self, image: np.ndarray) -> list[FaceDetection]:
        """Return the person's face, or nobody."""
        return [FaceDetection(self.box, 0.95)] if self.present.is_set() else []


class PersonThermal:
    """Thermal frames at 8 Hz with the person's face at ``core_c`` (the demo's renderer) while present."""

    name = "person-thermal"

    def __init__(self, detector: PersonDetector, core_c: float) -> None:
        self.detector, self.core_c = detector, core_c
        self.renderer = ThermalSceneRenderer(None, seed=3)
        self.reads = 0
        self._stop = threading.Event()

    def start(self) -> None:
        """Nothing to open."""

    def stop(self) -> None:
        """End reads."""
        self._stop.set()

    def read_frame(self, timeout: float) -> ThermalFrame | None:
        """Return the next frame at 8 Hz."""
        if self._stop.wait(1 / 8):
            return None
        self.reads += 1
        now = time.monotonic()
        people = [(self.core_c, self.detector.box)] if self.detector.present.is_set() else []
        image, die = self.renderer.render_people(people, now)
        return ThermalFrame(image, die, self.reads, now)

    def stats(self) -> dict[str, Any]:
        """Return the source's state."""
        return {"state": "connected", "reads": self.reads}


class StaffLane:
    """The running pipeline, its store and gate, and every decision it made (``decided``)."""

    def __init__(self, tmp_path: Path, core_c: float = 36.6, code_timeout_s: float = 0.8) -> None:
        self.cfg = StationConfig.model_validate(
            {"screening": {"code_timeout_s": code_timeout_s, "leave_after_s": 1.0}, "gate": {"pin_factory": "mock"}}
        )
        self.db = tmp_path / "events.sqlite3"
        self.store = SqliteEventStore(self.db, station_id="st-01", site="gate-a")
        self.store.begin_session()
        clock = SystemClock()
        self.gate = build_gate(self.cfg, clock)
        self.detector = PersonDetector(SceneGeometry().face_box_at(STAND_M))
        self.pipeline = Pipeline(
            identity=StationIdentity("gate-a", "st-01", "entry"),
            lane=lane_for(self.cfg),
            thermal=PersonThermal(self.detector, core_c),
            camera=StandingCamera(),
            detector=self.detector,
            reader=CascadeReader(),
            verifiers=[],
            store=self.store,
            gate=self.gate,
            clock=clock,
            settings=PipelineSettings(),
        )
        self.decided: list[Decided] = []
        self.pipeline.add_listener(self.decided.append)
        self.pipeline.start()

    def decisions(self) -> list[tuple[str, str, str]]:
        """Return (decision, reason, decision source) of every decision so far."""
        return [(d.event.decision.value, d.event.reason, d.event.decision_source) for d in list(self.decided)]

    def close(self) -> None:
        """Stop the pipeline, then the gate and the store."""
        self.pipeline.stop()
        self.gate.close()
        self.store.close()
