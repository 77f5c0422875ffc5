"""Face temperature from one thermal frame: registration, region of interest, hot spot, compensation.

Pure functions over numpy arrays. An MLX90640-class sensor cannot resolve the inner canthus (one
pixel covers 1.6 cm at 0.5 m), so the statistic is the full-face hot spot: the mean of the 3×3
neighbourhood around the hottest face pixel, which is what the clinical data supports as well as the
canthus maximum.

The reading is ``core = skin + offset + ambient + distance + reference`` (thermal.md §2.7, the
Bio_Guard form plus an in-scene reference): every term is returned with the reading so it can be
audited, and ``core`` is exactly their sum. A value outside the plausible range is reported as such,
never clamped into "normal"; nothing here invents a number that did not come from the frame.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from station.domain.model import Box, TemperatureMeasurement, ThermalFrame


class MeasureState:
    """Why a thermal reading is, or is not, one the gate may use."""

    MEASURED = "measured"
    WARMING_UP = "warming_up"  # the sensor die is still settling: its offsets drift
    NO_FACE = "no_face"  # nobody to measure
    TOO_FAR = "too_far"  # too few thermal pixels on the face, or the face is much smaller than calibrated
    TOO_CLOSE = "too_close"  # the face is much larger than calibrated (the distance term would extrapolate)
    SEVERAL_PEOPLE = "several_people"  # another face as near as this one: whose temperature is it?
    OUT_OF_VIEW = "out_of_view"  # the face maps outside the thermal image
    COLD_ROI = "cold_roi"  # hottest face pixel is not skin (mask, hair, occlusion)
    REFERENCE_MISSING = "reference_missing"  # a blackbody is configured but not seen at its set-point
    OUT_OF_RANGE = "out_of_range"  # a reading no living person has: shown as invalid
    SENSOR_FAULT = "sensor_fault"  # no frames, or frames that cannot be trusted


SKIN_MIN_C = 30.0  # below this the hottest "face" pixel is not exposed skin


@dataclass(frozen=True, slots=True)
class ThermalCalibration:
    """Everything that turns thermal pixels under a visible face into a core temperature."""

    registration: np.ndarray  # 3×3, visible pixel → thermal pixel
    offset_c: float  # skin → core at the calibrated distance and ambient
    valid_min_c: float = 34.0
    valid_max_c: float = 42.0
    min_pixels: int = 8
    roi_margin: float = 0.1
    version: str = "default"
    # ambient term: gain · (ambient_ref − ambient); ambient = room sensor value if given, else die − shift
    ambient_gain: float = 0.0
    ambient_ref_c: float = 22.0
    ta_shift_c: float = 8.0  # the MLX90640 die runs ~8 °C above the room (Melexis issue #66)
    room_c: float | None = None  # a room sensor's reading, when one is configured
    # distance / fill-factor term: gain · (skin − ambient) · (face_ref_px / face_px − 1)
    face_ref_px: float = 0.0  # visible face-box height at the calibrated distance; 0 = no distance term
    distance_gain: float = 0.0
    too_close_ratio: float = 0.6  # face_ref_px / face_px below this: too close
    too_far_ratio: float = 1.6  # ... above this: too far
    # in-scene reference (blackbody): a fixed thermal-pixel box held at a set-point
    reference_box: tuple[int, int, int, int] | None = None  # x1, y1, x2, y2 (exclusive ends)
    reference_c: float = 0.0
    reference_max_std_c: float = 0.5  # a patch this uneven is not the blackbody (occluded, edge)
    reference_max_drift_c: float = 3.0  # |set-point − seen| beyond this: not the blackbody
    several_people_ratio: float = 0.8  # a second face at least this tall relative to the measured one
    warmup_s: float = 0.0  # see WarmupTracker
    warmup_max_die_rate: float = 0.0  # °C/min; 0 = off


def map_box(box: Box, h: np.ndarray) -> tuple[float, float, float, float]:
    """Map a visible-image box through homography ``h``; returns the bounding box of its corners."""
    pts = np.array([[box.x1, box.y1, 1.0], [box.x2, box.y1, 1.0], [box.x1, box.y2, 1.0], [box.x2, box.y2, 1.0]]).T
    m = h @ pts
    xs, ys = m[0] / m[2], m[1] / m[2]
    return float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())


def face_roi(box: Box, frame_shape: tuple[int, int], cal: ThermalCalibration) -> tuple[int, int, int, int] | None:
    """Return the integer thermal-pixel window (x1, y1, x2, y2, exclusive ends) for a visible face box."""
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
    """Return (hottest 3×3 mean, hottest single pixel) inside ``roi``.

    The 3×3 mean rather than the single maximum: one noisy or dead-hot pixel must not decide a
    fever. A window smaller than 3×3 in either direction is averaged whole.
    """
    peak = float(roi.max())
    if roi.shape[0] < 3 or roi.shape[1] < 3:
        return float(roi.mean()), peak
    means = np.lib.stride_tricks.sliding_window_view(roi, (3, 3)).mean(axis=(2, 3))
    return float(means.max()), peak


# --------------------------------------------------------------------------------------------
# Registration: visible → thermal homography from calibration point pairs
# --------------------------------------------------------------------------------------------


def _normalise(pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalise points Hartley's way: centroid at 0, mean distance √2 (keeps the DLT well conditioned)."""
    c = pts.mean(axis=0)
    d = np.sqrt(((pts - c) ** 2).sum(axis=1)).mean()
    s = np.sqrt(2.0) / d if d > 0 else 1.0
    t = np.array([[s, 0.0, -s * c[0]], [0.0, s, -s * c[1]], [0.0, 0.0, 1.0]])
    ph = np.column_stack([pts, np.ones(len(pts))]) @ t.T
    return ph, t


def fit_homography(visible: Sequence[Sequence[float]], thermal: Sequence[Sequence[float]]) -> tuple[np.ndarray, float]:
    """Fit the visible → thermal homography from ≥ 4 point pairs (normalised DLT, numpy only).

    Returns (H, reprojection RMSE in thermal pixels). Below 1 thermal pixel is good (thermal.md T5).
    The pairs come from a heated target seen by both cameras; collinear points are refused.
    """
    src = np.asarray(visible, dtype=np.float64)
    dst = np.asarray(thermal, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 4:
        raise ValueError("need at least 4 (x, y) point pairs, the same number in each image")
    sn, ts = _normalise(src)
    dn, td = _normalise(dst)
    rows = []
    for (x, y, _), (u, v, _) in zip(sn, dn, strict=True):
        rows.append([-x, -y, -1.0, 0.0, 0.0, 0.0, u * x, u * y, u])
        rows.append([0.0, 0.0, 0.0, -x, -y, -1.0, v * x, v * y, v])
    a = np.asarray(rows)
    _, sv, vt = np.linalg.svd(a)
    if sv[-2] < 1e-9 * sv[0]:
        raise ValueError("the calibration points do not determine a homography (collinear or repeated)")
    hn = vt[-1].reshape(3, 3)
    h = np.linalg.inv(td) @ hn @ ts
    h = h / h[2, 2]
    return h, reprojection_rmse(h, src, dst)


def reprojection_rmse(h: np.ndarray, visible: np.ndarray, thermal: np.ndarray) -> float:
    """Return the RMS distance, in thermal pixels, between ``visible`` mapped through ``h`` and ``thermal``."""
    src = np.column_stack([np.asarray(visible, dtype=np.float64), np.ones(len(visible))])
    m = src @ np.asarray(h).T
    proj = m[:, :2] / m[:, 2:3]
    return float(np.sqrt(((proj - np.asarray(thermal, dtype=np.float64)) ** 2).sum(axis=1).mean()))


# --------------------------------------------------------------------------------------------
# Warm-up: the die temperature must have settled before offsets mean anything
# --------------------------------------------------------------------------------------------


class WarmupTracker:
    """Tell whether a thermal module is still warming up, from its die temperature over time.

    Warming up while the module has been seen for less than ``min_s``, or while its die
    temperature still rises faster than ``max_rate_c_per_min`` (judged over the last ``window_s``).
    """

    def __init__(self, min_s: float = 0.0, max_rate_c_per_min: float = 0.0, window_s: float = 30.0) -> None:
        self.min_s = min_s
        self.max_rate = max_rate_c_per_min
        self.window_s = window_s
        self._first_t: float | None = None
        self._die: deque[tuple[float, float]] = deque()

    def update(self, t: float, die_c: float) -> bool:
        """Feed one frame's die temperature; return True while still warming up."""
        if self._first_t is None:
            self._first_t = t
        self._die.append((t, die_c))
        while len(self._die) > 2 and self._die[1][0] <= t - self.window_s:
            self._die.popleft()
        if t - self._first_t < self.min_s:
            return True
        if self.max_rate > 0.0 and len(self._die) >= 2:
            (t0, d0), (t1, d1) = self._die[0], self._die[-1]
            # Too short a history gives a rate made of noise: judge only over ≥ 2 s.
            if t1 - t0 >= 2.0 and abs(d1 - d0) / (t1 - t0) * 60.0 > self.max_rate:
                return True
        return False


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------


def ambient_estimate(frame: ThermalFrame, cal: ThermalCalibration) -> float:
    """Return the room temperature the compensation uses: a room sensor if configured, else die − shift."""
    return cal.room_c if cal.room_c is not None else frame.die_c - cal.ta_shift_c


def reference_term(pixels: np.ndarray, cal: ThermalCalibration) -> tuple[float, float, float] | None:
    """Return (term, seen mean, seen std) for the configured blackbody, or None when it is not seen."""
    assert cal.reference_box is not None
    x1, y1, x2, y2 = cal.reference_box
    patch = pixels[y1:y2, x1:x2]
    if patch.size == 0:
        return None
    seen, spread = float(patch.mean()), float(patch.std())
    if spread > cal.reference_max_std_c or abs(cal.reference_c - seen) > cal.reference_max_drift_c:
        return None
    return cal.reference_c - seen, seen, spread


def measure_face(
    frame: ThermalFrame,
    face_box: Box | None,
    cal: ThermalCalibration,
    *,
    others: Sequence[Box] = (),
    warming_up: bool = False,
) -> TemperatureMeasurement:
    """Measure the face in ``face_box`` (visible coordinates) in one thermal frame.

    ``others``: the other faces the camera sees; ``warming_up``: from a ``WarmupTracker``.
    """
    t, seq = frame.t, frame.seq
    pixels = frame.pixels_c
    if not np.all(np.isfinite(pixels)):
        return TemperatureMeasurement(MeasureState.SENSOR_FAULT, t, thermal_seq=seq)
    if warming_up:
        return TemperatureMeasurement(MeasureState.WARMING_UP, t, thermal_seq=seq)
    if face_box is None:
        return TemperatureMeasurement(MeasureState.NO_FACE, t, thermal_seq=seq)
    if any(o.height >= cal.several_people_ratio * face_box.height for o in others):
        return TemperatureMeasurement(MeasureState.SEVERAL_PEOPLE, t, thermal_seq=seq)
    window = face_roi(face_box, pixels.shape, cal)
    if window is None:
        return TemperatureMeasurement(MeasureState.OUT_OF_VIEW, t, thermal_seq=seq)
    x1, y1, x2, y2 = window
    roi = pixels[y1:y2, x1:x2]
    n = int(roi.size)
    if n < cal.min_pixels:
        return TemperatureMeasurement(MeasureState.TOO_FAR, t, n_pixels=n, thermal_seq=seq)
    size_ratio = cal.face_ref_px / face_box.height if cal.face_ref_px > 0 and face_box.height > 0 else 1.0
    if cal.face_ref_px > 0:
        if size_ratio > cal.too_far_ratio:
            return TemperatureMeasurement(MeasureState.TOO_FAR, t, n_pixels=n, thermal_seq=seq)
        if size_ratio < cal.too_close_ratio:
            return TemperatureMeasurement(MeasureState.TOO_CLOSE, t, n_pixels=n, thermal_seq=seq)
    skin, peak = hot_spot(roi)
    ambient = ambient_estimate(frame, cal)
    terms: dict[str, float] = {
        "skin_c": round(skin, 3),
        "peak_c": round(peak, 3),
        "p90_c": round(float(np.percentile(roi, 90)), 3),
        "offset_c": cal.offset_c,
        "ambient_c": round(cal.ambient_gain * (cal.ambient_ref_c - ambient), 3),
        "distance_c": round(cal.distance_gain * (skin - ambient) * (size_ratio - 1.0), 3),
        "reference_c": 0.0,
        "ambient_est_c": round(ambient, 2),
        "size_ratio": round(size_ratio, 3),
        "die_c": round(frame.die_c, 2),
    }
    if cal.reference_box is not None:
        ref = reference_term(pixels, cal)
        if ref is None:
            return TemperatureMeasurement(MeasureState.REFERENCE_MISSING, t, None, skin, terms, n, seq)
        terms["reference_c"] = round(ref[0], 3)
        terms["reference_seen_c"] = round(ref[1], 3)
    if skin < SKIN_MIN_C:
        return TemperatureMeasurement(MeasureState.COLD_ROI, t, None, skin, terms, n, seq)
    core = terms["skin_c"] + sum(terms[k] for k in COMPENSATION_TERMS)
    core = round(core, 2)  # judged on the value that is reported and recorded, so the two never disagree at a bound
    state = MeasureState.MEASURED if cal.valid_min_c <= core <= cal.valid_max_c else MeasureState.OUT_OF_RANGE
    return TemperatureMeasurement(state, t, core, round(skin, 3), terms, n, seq)


COMPENSATION_TERMS = ("offset_c", "ambient_c", "distance_c", "reference_c")


# --------------------------------------------------------------------------------------------
# Compensation fit (``stationctl calibrate thermal``)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CalibrationSample:
    """One paired observation: what the station saw and what the clinical thermometer said."""

    skin_c: float  # hot-spot statistic plus any reference term
    reference_core_c: float
    ambient_c: float | None = None
    size_ratio: float = 1.0


@dataclass(frozen=True, slots=True)
class CompensationFit:
    """The fitted compensation terms and how well they explain the reference readings."""

    offset_c: float
    ambient_gain: float
    distance_gain: float
    fitted: tuple[str, ...]  # which terms had enough span to be fitted
    rmse_c: float
    n: int


MIN_AMBIENT_SPAN_C = 3.0  # Bio_Guard: fit the ambient gain only over ≥ 3 °C of rooms
MIN_SIZE_RATIO_SPAN = 0.35  # ... and the distance gain only over ≥ 0.35 of face-size ratio


def fit_compensation(samples: Sequence[CalibrationSample], ambient_ref_c: float = 22.0) -> CompensationFit:
    """Fit (reference − skin) by least squares on the terms that the samples span well enough."""
    if len(samples) < 1:
        raise ValueError("need at least one reference reading")
    y = np.array([s.reference_core_c - s.skin_c for s in samples])
    cols = [np.ones(len(samples))]
    names = ["offset"]
    amb = [s.ambient_c for s in samples]
    if all(a is not None for a in amb) and len(samples) >= 3:
        a = np.array(amb, dtype=np.float64)
        if a.max() - a.min() >= MIN_AMBIENT_SPAN_C:
            cols.append(ambient_ref_c - a)
            names.append("ambient")
    r = np.array([s.size_ratio for s in samples])
    if len(samples) >= 3 and r.max() - r.min() >= MIN_SIZE_RATIO_SPAN and all(a is not None for a in amb):
        a = np.array(amb, dtype=np.float64)
        cols.append((np.array([s.skin_c for s in samples]) - a) * (r - 1.0))
        names.append("distance")
    x = np.column_stack(cols)
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    resid = y - x @ coef
    got = dict(zip(names, (float(c) for c in coef), strict=True))
    return CompensationFit(
        offset_c=round(got["offset"], 3),
        ambient_gain=round(got.get("ambient", 0.0), 4),
        distance_gain=round(got.get("distance", 0.0), 4),
        fitted=tuple(names),
        rmse_c=round(float(np.sqrt((resid**2).mean())), 3),
        n=len(samples),
    )
