"""The detection budget: run the face detector at most ``max_rate_hz`` and skip frames that did not change.

On a Pi the detector is the biggest per-frame cost after QR decoding. A frame whose downscaled
grey image differs from the last *detected* frame by less than ``diff_threshold`` grey levels (mean
absolute difference) shows the same scene, so the previous detections still hold and are re-used
for it; but never for longer than ``max_reuse_s``, so slow changes (a person creeping up, light
drifting) are always re-detected. A re-used result is still handed to the lane with the new frame's
time, so a person standing still keeps the lane's "face seen" clock fresh.
"""

from __future__ import annotations

import numpy as np

_SMALL = (80, 60)  # enough to see a person move, ~0.1 ms to compare


class FrameGate:
    """Decides, frame by frame, whether the face detector runs or its last result is re-used."""

    def __init__(self, max_rate_hz: float = 0.0, diff_threshold: float = 0.0, max_reuse_s: float = 0.5) -> None:
        self.min_interval_s = 1.0 / max_rate_hz if max_rate_hz > 0 else 0.0
        self.diff_threshold = float(diff_threshold)
        self.max_reuse_s = float(max_reuse_s)
        self._last_small: np.ndarray | None = None
        self._last_t: float | None = None
        self.detected = 0
        self.reused = 0

    @property
    def active(self) -> bool:
        """Return whether the gate limits anything (a rate or a change threshold is set)."""
        return self.min_interval_s > 0 or self.diff_threshold > 0

    def should_detect(self, image: np.ndarray, t: float) -> bool:
        """Return True to run the detector on this frame, False to re-use the last result."""
        if not self.active:
            self.detected += 1
            return True
        import cv2  # loaded by the daemon anyway; kept lazy like the other vision imports

        grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
        small = cv2.resize(grey, _SMALL, interpolation=cv2.INTER_AREA).astype(np.int16)
        if self._last_t is not None and self._last_small is not None and t - self._last_t < self.max_reuse_s:
            too_soon = t - self._last_t < self.min_interval_s
            unchanged = self.diff_threshold > 0 and float(np.abs(small - self._last_small).mean()) < self.diff_threshold
            if too_soon or unchanged:
                self.reused += 1
                return False
        self._last_small, self._last_t = small, t
        self.detected += 1
        return True
