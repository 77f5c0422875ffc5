"""The plate thread's change gate: read plates only on frames where the picture changed, counted.

Plate reading is the vehicle lane's largest per-frame cost. A car standing at the window, or an
empty lane, gives frame after frame with the same plates, so the gate compares each frame with the
last frame that was *read*: a small grey copy (80×60) split into 8×6 cells, and the frame is read
when any cell's mean absolute difference reaches ``diff_threshold`` grey levels (a car entering one
corner of the picture moves one cell a lot and the frame's mean very little). Per-pixel camera
noise averages out in the downscale, so a threshold of a few grey levels ignores it.

Skipped frames are not handed to the lane at all (a repeated read would count as another agreeing
read of the plate). So that a standing car's track does not age out of the lane's memory (and come
back as a second vehicle when it drives off), a frame is read anyway once ``max_skip_s`` has passed
since the last read while that read found a plate, and once ``max_skip_empty_s`` has passed when it
found none (slow light changes, a car creeping in).
"""

from __future__ import annotations

import numpy as np

_SMALL = (80, 60)  # (w, h): ~0.1 ms to make and compare on a 640×480 frame
_CELLS = (8, 6)  # 10×10 px cells of the small copy


class PlateGate:
    """Decides, frame by frame, whether the plate reader runs; counts frames read and skipped."""

    def __init__(self, diff_threshold: float = 4.0, max_skip_s: float = 0.5, max_skip_empty_s: float = 2.0) -> None:
        self.diff_threshold = float(diff_threshold)
        self.max_skip_s = float(max_skip_s)
        self.max_skip_empty_s = float(max_skip_empty_s)
        self._last_small: np.ndarray | None = None
        self._last_t: float | None = None
        self._plates_seen = False
        self.read = 0
        self.skipped = 0

    @property
    def active(self) -> bool:
        """Return whether the gate can skip anything (a threshold above 0 is set)."""
        return self.diff_threshold > 0

    def change(self, image: np.ndarray) -> float:
        """Return the largest cell's mean absolute grey difference from the last read frame (inf when there is none)."""
        small = self._small(image)
        if self._last_small is None or self._last_small.shape != small.shape:
            return float("inf")
        return _largest_cell_change(small, self._last_small)

    def should_read(self, image: np.ndarray, t: float) -> bool:
        """Return True to read this frame's plates (then report with ``read_done``), False to skip it."""
        if not self.active:
            self.read += 1
            return True
        try:
            small = self._small(image)
        except Exception:  # a frame the gate cannot shrink: read it, the reader counts what is wrong with it
            self._last_small, self._last_t = None, None
            self.read += 1
            return True
        if self._last_small is not None and self._last_t is not None and self._last_small.shape == small.shape:
            limit = self.max_skip_s if self._plates_seen else self.max_skip_empty_s
            if t - self._last_t < limit and _largest_cell_change(small, self._last_small) < self.diff_threshold:
                self.skipped += 1
                return False
        self._last_small, self._last_t = small, t
        self.read += 1
        return True

    def read_done(self, plates_found: int) -> None:
        """Tell the gate how many plates the frame it let through had (a plate in view shortens the skip)."""
        self._plates_seen = plates_found > 0

    def stats(self) -> dict[str, int]:
        """Return the frames read and skipped."""
        return {"gate_read": self.read, "gate_skipped": self.skipped}

    @staticmethod
    def _small(image: np.ndarray) -> np.ndarray:
        import cv2  # loaded by the daemon's vision code anyway; kept lazy like the other vision imports

        grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
        small: np.ndarray = cv2.resize(grey, _SMALL, interpolation=cv2.INTER_AREA).astype(np.int16)
        return small


def _largest_cell_change(a: np.ndarray, b: np.ndarray) -> float:
    diff = np.abs(a - b).astype(np.float32)
    cols, rows = _CELLS
    h, w = diff.shape
    cells = diff[: h - h % rows, : w - w % cols].reshape(rows, h // rows, cols, w // cols).mean(axis=(1, 3))
    return float(cells.max())
