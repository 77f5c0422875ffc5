"""OpenCV Haar-cascade face detector: a zero-download fallback and a comparison point.

It is much weaker than UltraFace on masks and turned heads, so it is never the default. It needs
``cv2.CascadeClassifier`` and the cascade XML that OpenCV 4.x wheels ship in ``cv2.data``. OpenCV
5 moved the cascade classifier out of the main wheels: there the constructor raises
``HaarUnavailableError`` with the reason instead of failing on the first frame.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import cv2
import numpy as np

from station.domain.model import Box, FaceDetection

log = logging.getLogger("station.detect")

CASCADE_FILE = "haarcascade_frontalface_default.xml"


class HaarUnavailableError(RuntimeError):
    """The installed OpenCV has no cascade classifier or no frontal-face cascade file."""


def default_cascade_path() -> Path:
    """Return where OpenCV's wheel keeps its bundled frontal-face cascade (the file may not exist)."""
    data = getattr(cv2, "data", None)
    base = getattr(data, "haarcascades", "") if data is not None else ""
    return Path(base) / CASCADE_FILE


class HaarFaceDetector:
    """``FaceDetector`` over ``cv2.CascadeClassifier`` (frontal faces only)."""

    name = "haar-frontalface"

    def __init__(
        self,
        cascade_path: Path | None = None,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_size: tuple[int, int] = (24, 24),
        max_side: int = 640,
    ) -> None:
        if not hasattr(cv2, "CascadeClassifier"):
            raise HaarUnavailableError(f"OpenCV {cv2.__version__} has no CascadeClassifier (moved out of the main wheels in 5.x)")
        path = Path(cascade_path) if cascade_path is not None else default_cascade_path()
        if not path.is_file():
            raise HaarUnavailableError(f"face cascade not found: {path}")
        classifier = cv2.CascadeClassifier(str(path))
        if classifier.empty():
            raise HaarUnavailableError(f"face cascade could not be loaded: {path}")
        self._classifier = classifier
        self.cascade_path = path
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_size = min_size
        # Cascade cost grows with the pixel count; large frames are downscaled like UltraFace does.
        self.max_side = max_side
        log.info("haar face detector loaded", extra={"cascade": str(path)})

    def warm_up(self) -> float:
        """Run one detection on a blank frame and return how long it took, in ms.

        The cascade has no lazy initialisation worth hiding, but the port's contract is kept.
        """
        t0 = time.perf_counter()
        self.detect(np.zeros((240, 320, 3), dtype=np.uint8))
        return (time.perf_counter() - t0) * 1000.0

    def detect(self, image: np.ndarray) -> list[FaceDetection]:
        """Return the faces in a BGR or grey frame, best score first, boxes in the frame's pixels."""
        gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        h, w = gray.shape[:2]
        scale = 1.0
        if max(h, w) > self.max_side:
            scale = self.max_side / float(max(h, w))
            gray = cv2.resize(gray, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        gray = cv2.equalizeHist(gray)
        rects, _levels, weights = self._classifier.detectMultiScale3(
            gray,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=self.min_size,
            outputRejectLevels=True,
        )
        found: list[FaceDetection] = []
        for (x, y, bw, bh), weight in zip(
            np.asarray(rects, dtype=np.float64).reshape(-1, 4).tolist(),
            np.asarray(weights).reshape(-1).tolist(),
            strict=True,
        ):
            box = Box(
                max(0.0, x / scale),
                max(0.0, y / scale),
                min(float(w), (x + bw) / scale),
                min(float(h), (y + bh) / scale),
            )
            # The cascade's "weight" is an unbounded stage sum; squash it to 0..1 so it reads like a score.
            score = 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, weight))))
            found.append(FaceDetection(box, score))
        found.sort(key=lambda f: f.score, reverse=True)
        return found
