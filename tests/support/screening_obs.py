"""A screening lane with test settings, and the timestamped observations fed to it."""

from __future__ import annotations

import numpy as np

from station.domain.model import (
    Box,
    CodeColour,
    CodeObservation,
    CodeStatus,
    CodeVerdict,
    FaceDetection,
    FaceObservation,
    TemperatureMeasurement,
)
from station.domain.screening import ScreeningLane, ScreeningPolicy, ScreeningSettings
from station.domain.thermal import MeasureState, ThermalCalibration

IDENTITY = np.eye(3)

SETTINGS = ScreeningSettings(
    fever_threshold_c=37.3,
    min_face_px=120,
    stable_samples=2,
    max_sample_spread_c=0.7,
    temperature_timeout_s=3.0,
    code_timeout_s=5.0,
    leave_after_s=0.8,
)


def lane(policy: ScreeningPolicy | None = None, settings: ScreeningSettings = SETTINGS) -> ScreeningLane:
    return ScreeningLane(settings, policy or ScreeningPolicy(), ThermalCalibration(IDENTITY, offset_c=1.0))


def faces(t: float, *boxes: Box) -> FaceObservation:
    return FaceObservation(0, t, t + 0.005, tuple(FaceDetection(b, 0.9) for b in boxes), (640, 480), 5.0)


def temp(t: float, core: float | None, state: str = MeasureState.MEASURED) -> TemperatureMeasurement:
    return TemperatureMeasurement(state, t, core, None if core is None else core - 1.0, {}, 40, 1)


def code(t: float, colour: CodeColour | None, status: CodeStatus = CodeStatus.VALID, reason: str = "ok") -> CodeObservation:
    return CodeObservation(0, t, t + 0.01, CodeVerdict(status, colour, reason, "test"), 8.0, "test")
