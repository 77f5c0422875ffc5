"""Face crops of recent frames, so a decision can come with the screened person's best capture.

The face thread measures every detected face's sharpness (variance of the Laplacian of the grey
crop: blur removes the high frequencies it measures) and keeps the crops of the last few frames;
the lane (pure) scores frames with ``station.domain.tracking.capture_score`` and names the best one
by frame sequence number and box; the executor asks for that crop here. Crops stay in memory only:
storing face images is a privacy decision for the site, not a default.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from station.domain.model import Box, FaceDetection


class CaptureKeeper:
    """Keeps the face crops of the last few frames; thread-safe: the face thread writes, the executor reads."""

    def __init__(self, frames: int = 48) -> None:
        # 48 frames ≈ 3 s at 15 fps: a screening's best frame is usually its last stable second,
        # and older crops are not worth their memory (~100 kB per face).
        self._frames = frames
        self._crops: OrderedDict[int, list[tuple[Box, np.ndarray]]] = OrderedDict()
        self._lock = threading.Lock()

    def measure(self, frame_seq: int, image: np.ndarray, faces: list[FaceDetection]) -> tuple[float, ...]:
        """Return the sharpness of each face (in ``faces`` order), and keep the crops of this frame."""
        import cv2  # the daemon has it loaded already; stationctl, which imports the app, need not

        h, w = image.shape[:2]
        sharpness: list[float] = []
        crops: list[tuple[Box, np.ndarray]] = []
        for f in faces:
            x1, y1 = max(0, int(f.box.x1)), max(0, int(f.box.y1))
            x2, y2 = min(w, int(round(f.box.x2))), min(h, int(round(f.box.y2)))
            if x2 - x1 < 3 or y2 - y1 < 3:
                sharpness.append(0.0)
                continue
            crop = image[y1:y2, x1:x2]
            grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY) if crop.ndim == 3 else crop
            sharpness.append(float(cv2.Laplacian(grey, cv2.CV_64F).var()))
            crops.append((f.box, crop.copy()))
        with self._lock:
            self._crops[frame_seq] = crops
            while len(self._crops) > self._frames:
                self._crops.popitem(last=False)
        return tuple(sharpness)

    def crop_for(self, capture: dict[str, Any] | None) -> np.ndarray | None:
        """Return the crop the lane chose (``{"frame_seq", "box"}``), or None when it is no longer kept."""
        if not capture:
            return None
        with self._lock:
            crops = self._crops.get(int(capture["frame_seq"]))
        if not crops:
            return None
        want = Box(*capture["box"])
        box, crop = max(crops, key=lambda c: c[0].iou(want))
        return crop if box.iou(want) > 0.5 else None
