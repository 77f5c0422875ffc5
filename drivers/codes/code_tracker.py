"""Do not re-decode a code that is still held up unchanged: a ``CodeReader`` wrapper.

After a decode that found codes, the wrapper keeps the codes and a fingerprint of the region they
occupy: that region (with a margin) in gray, area-downsampled to ``grid``×``grid``. On the next
frame it takes the same fingerprint at the same place; if it differs by less than ``threshold``
grey levels on average, the phone has not moved and the screen has not changed, so the cached
codes are returned without decoding. A new code on the screen (a refreshing dynamic code), a phone
moved or taken away all change the fingerprint, and the frame is decoded again. At a 32×32 grid a
cell covers one to two modules, so a different symbol changes most cells by tens of levels, while
sensor noise and compression move the average by one or two.

Frames without codes are always decoded (there is nothing to track), and after ``max_reuse``
consecutive cache hits a frame is decoded anyway, so a second phone held up beside an unchanged
first one is found within ``max_reuse`` frames.

The pipeline still sees the code on every frame — the cached result is returned — so its own
``code_repeat_s`` de-duplication behaves exactly as with a plain reader.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

from station.domain.model import DecodedCode
from station.ports import CodeReader

log = logging.getLogger("station.codes")


class TrackingReader:
    """``CodeReader`` that decodes with ``inner`` only when the decoded codes' region changed."""

    def __init__(self, inner: CodeReader, grid: int = 32, threshold: float = 6.0, margin: float = 0.15, max_reuse: int = 15) -> None:
        if grid < 4:
            raise ValueError("grid must be at least 4")
        if threshold <= 0:
            raise ValueError("threshold must be positive")
        self.inner = inner
        self.name = inner.name
        self.grid = int(grid)
        self.threshold = float(threshold)
        self.margin = float(margin)
        self.max_reuse = int(max_reuse)
        self.decodes = 0
        self.cache_hits = 0
        self._codes: list[DecodedCode] = []
        self._region: tuple[int, int, int, int] | None = None
        self._shape: tuple[int, ...] | None = None
        self._fingerprint: np.ndarray | None = None
        self._reused = 0
        self.last_was_cached = False  # the pipeline counts these ("decodes_cached")

    def stats(self) -> dict[str, int]:
        """Return how many frames were decoded and how many were answered from the cache."""
        return {"decodes": self.decodes, "cache_hits": self.cache_hits}

    def _fingerprint_of(self, image: np.ndarray, region: tuple[int, int, int, int]) -> np.ndarray:
        x1, y1, x2, y2 = region
        crop = image[y1:y2, x1:x2]
        if crop.ndim == 3:
            crop = cv2.cvtColor(crop, cv2.COLOR_BGRA2GRAY if crop.shape[2] == 4 else cv2.COLOR_BGR2GRAY)
        return cv2.resize(crop, (self.grid, self.grid), interpolation=cv2.INTER_AREA).astype(np.float32)

    def _region_of(self, codes: list[DecodedCode], width: int, height: int) -> tuple[int, int, int, int] | None:
        boxes = [c.box for c in codes if c.box is not None]
        if len(boxes) != len(codes) or not boxes:
            return None  # a code without a box cannot be tracked: decode every frame
        x1, y1 = min(b.x1 for b in boxes), min(b.y1 for b in boxes)
        x2, y2 = max(b.x2 for b in boxes), max(b.y2 for b in boxes)
        mx, my = (x2 - x1) * self.margin, (y2 - y1) * self.margin
        region = (max(0, int(x1 - mx)), max(0, int(y1 - my)), min(width, int(x2 + mx) + 1), min(height, int(y2 + my) + 1))
        if region[2] - region[0] < 4 or region[3] - region[1] < 4:
            return None
        return region

    def decode(self, image: np.ndarray) -> list[DecodedCode]:
        """Return the cached codes while their region is unchanged, else decode with ``inner``."""
        if self._fingerprint is not None and self._region is not None and image.shape == self._shape and self._reused < self.max_reuse:
            diff = float(np.mean(np.abs(self._fingerprint_of(image, self._region) - self._fingerprint)))
            if diff < self.threshold:
                self._reused += 1
                self.cache_hits += 1
                self.last_was_cached = True
                return list(self._codes)
            log.debug("tracked code region changed diff=%.1f: decoding", diff)
        self.last_was_cached = False
        codes = self.inner.decode(image)
        self.decodes += 1
        self._reused = 0
        h, w = image.shape[:2]
        region = self._region_of(codes, w, h) if codes else None
        if region is None:
            self._codes, self._region, self._fingerprint, self._shape = [], None, None, None
        else:
            self._codes, self._region, self._shape = list(codes), region, image.shape
            self._fingerprint = self._fingerprint_of(image, region)
        return codes
