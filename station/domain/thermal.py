"""Face temperature from one thermal frame: registration, region of interest, hot spot, compensation.

Pure functions over numpy arrays. An MLX90640-class sensor cannot resolve the inner canthus (one
pixel covers 1.6 cm at 0.5 m), so the statistic is the full-face hot spot: the mean of the 3×3
neighbourhood around the hottest face pixel, which is what the clinical data supports as well as the
canthus maximum. Every compensation term is returned with the reading so it can be audited; a value
outside the plausible range is reported as such, never clamped into "normal".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from station.domain.model import Box, TemperatureMeasurement, ThermalFrame


class MeasureState:
    MEASURED = "measured"
    TOO_FAR = "too_far"  # too few thermal pixels on the face
    OUT_OF_VIEW = "out_of_view"  # the face maps outside the thermal image
    COLD_ROI = "cold_roi"  # hottest face pixel is not skin (mask, hair, occlusion)
    OUT_OF_RANGE = "out_of_range"  # a reading no living person has: shown as invalid
    SENSOR_FAULT = "sensor_fault"  # no frames, or frames that cannot be trusted


SKIN_MIN_C = 30.0  # below this the hottest "face" pixel is not exposed skin


@dataclass(frozen=True, slots=True)
class ThermalCalibration:
    registration: np.ndarray  # 3×3, visible pixel → thermal pixel
    offset_c: float  # skin → core
    valid_min_c: float = 34.0
    valid_max_c: float = 42.0
    min_pixels: int = 8
    roi_margin: float = 0.1
    version: str = "default"


def map_box(box: Box, h: np.ndarray) -> tuple[float, float, float, float]:
    """Map a visible-image box through homography ``h``; returns the bounding box of its corners."""
    pts = np.array(
        [[box.x1, box.y1, 1.0], [box.x2, box.y1, 1.0], [box.x1, box.y2, 1.0], [box.x2, box.y2, 1.0]]
    ).T
    m = h @ pts
    xs, ys = m[0] / m[2], m[1] / m[2]
    return float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())


def face_roi(box: Box, frame_shape: tuple[int, int], cal: ThermalCalibration) -> tuple[int, int, int, int] | None:
    """Integer thermal-pixel window (x1, y1, x2, y2, exclusive ends) for a visible face box."""
    x1, y1, x2, y2 = map_box(box, cal.registration)
    # Parallax and registration error move the face by a fraction of its size: keep the centre part.
    mx, my = (x2 - x1) * cal.roi_margin, (y2 - y1) * cal.roi_margin
    x1, x2, y1, y2 = x1 + mx, x2 - mx, y1 + my, y2 - my
    rows, cols = frame_shape
    ix1, iy1 = max(0, int(np.floor(x1))), max(0, int(np.floor(y1)))
    ix2, iy2 = min(cols, int(np.ceil(x2))), min(rows, int(np.ceil(y2)))
    if ix2 <= ix1 or iy2 <= iy1:
        return None
    return ix1, iy1, ix2, iy2


def hot_spot(roi: np.ndarray) -> tuple[float, float]:
    """(hottest 3×3 mean, hottest single pixel) inside ``roi``.

    The 3×3 mean rather than the single maximum: one noisy or dead-hot pixel must not decide a
    fever. A window smaller than 3×3 in either direction is averaged whole.
    """
    peak = float(roi.max())
    if roi.shape[0] < 3 or roi.shape[1] < 3:
        return float(roi.mean()), peak
    means = np.lib.stride_tricks.sliding_window_view(roi, (3, 3)).mean(axis=(2, 3))
    return float(means.max()), peak


def measure_face(frame: ThermalFrame, face_box: Box, cal: ThermalCalibration) -> TemperatureMeasurement:
    """One reading of the face in ``face_box`` (visible coordinates) from one thermal frame."""
    pixels = frame.pixels_c
    if not np.all(np.isfinite(pixels)):
        return TemperatureMeasurement(MeasureState.SENSOR_FAULT, frame.t, thermal_seq=frame.seq)
    window = face_roi(face_box, pixels.shape, cal)
    if window is None:
        return TemperatureMeasurement(MeasureState.OUT_OF_VIEW, frame.t, thermal_seq=frame.seq)
    x1, y1, x2, y2 = window
    roi = pixels[y1:y2, x1:x2]
    n = int(roi.size)
    if n < cal.min_pixels:
        return TemperatureMeasurement(MeasureState.TOO_FAR, frame.t, n_pixels=n, thermal_seq=frame.seq)
    skin, peak = hot_spot(roi)
    terms = {
        "skin_c": round(skin, 3),
        "peak_c": round(peak, 3),
        "offset_c": cal.offset_c,
        "ambient_c": 0.0,
        "distance_c": 0.0,
        "die_c": round(frame.die_c, 2),
    }
    if skin < SKIN_MIN_C:
        return TemperatureMeasurement(MeasureState.COLD_ROI, frame.t, None, skin, terms, n, frame.seq)
    core = skin + cal.offset_c + terms["ambient_c"] + terms["distance_c"]
    state = MeasureState.MEASURED if cal.valid_min_c <= core <= cal.valid_max_c else MeasureState.OUT_OF_RANGE
    return TemperatureMeasurement(state, frame.t, round(core, 2), round(skin, 3), terms, n, frame.seq)
