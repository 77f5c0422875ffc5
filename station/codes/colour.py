"""Colour on screen: what staff did by eye — read the health-code colour from the pixels around the QR.

A fallback for codes no other verifier can judge (an app whose QR carries nothing we can verify).
It can never lead to ``pass`` on its own, because a screenshot, a printout or a phone photo has the
same colour:

* a red screen → ``deny_code`` (returned as a valid *red*: nobody forges a red code to be turned
  away, so the colour is taken at its word only in that direction);
* a green or yellow screen → ``unverifiable`` with the colour → ``manual_check`` (staff look);
* no clear colour → ``unknown_format`` (the next verifier, or ``garbage``).

The colour is judged in a ring around the code's box (the app's banner and frame), in HSV: a
pixel counts when it is saturated and bright enough; the ring is judged only if enough pixels count
and one hue class clearly dominates.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from station.domain.model import CodeColour, CodeStatus, CodeVerdict, DecodedCode

SOURCE = "screen_colour"
RING = 0.45  # ring width as a fraction of the code's side
MIN_SATURATED = 0.06  # of the ring's pixels
MIN_DOMINANCE = 0.6  # of the saturated pixels
# OpenCV hue is 0..180.
HUE_CLASSES = ((CodeColour.RED, ((0, 9), (165, 180))), (CodeColour.YELLOW, ((18, 34),)), (CodeColour.GREEN, ((38, 88),)))


def _bgr8(image: object) -> np.ndarray | None:
    """Return the frame as 8-bit BGR, or None when it is not a colour picture (grey, empty, odd shape or type)."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] not in (3, 4) or image.size == 0:
        return None
    bgr: np.ndarray = image[..., :3] if image.shape[2] == 4 else image
    if bgr.dtype == np.uint8:
        return bgr
    if bgr.dtype == np.uint16:
        high: np.ndarray = bgr >> 8  # (numpy's operators are typed Any: the annotation keeps the return typed)
        return high.astype(np.uint8)
    if bgr.dtype.kind == "f":
        # Taken as 0..1 (OpenCV's float convention); NaN and out-of-range values are clipped, not trusted.
        scaled: np.ndarray = np.nan_to_num(np.clip(bgr, 0.0, 1.0), nan=0.0) * 255.0
        return scaled.astype(np.uint8)
    return None


def _box_of(box: Any) -> tuple[float, float, float, float] | None:
    """Return a box's corners as finite floats, or None when it is not a usable box (any object may come in)."""
    try:
        x1, y1, x2, y2 = float(box.x1), float(box.y1), float(box.x2), float(box.y2)
    except (AttributeError, TypeError, ValueError, OverflowError):
        return None
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or x2 <= x1 or y2 <= y1:
        return None
    return x1, y1, x2, y2


def ring_colour(image: object, box: Any) -> tuple[CodeColour | None, dict[str, float]]:
    """Return the colour that clearly dominates the ring around ``box``, or None, with the shares counted.

    Any input is judged: a frame that is not a colour picture, or a box that is not a box, has no colour.
    """
    bgr, coords = _bgr8(image), _box_of(box)
    if bgr is None or coords is None:
        return None, {}  # a grey frame, or no box, has no colour to judge
    image = bgr
    bx1_, by1_, bx2_, by2_ = coords
    h, w = image.shape[:2]
    side = max(bx2_ - bx1_, by2_ - by1_)
    pad = side * RING
    x1, y1 = int(max(0, bx1_ - pad)), int(max(0, by1_ - pad))
    x2, y2 = int(min(w, bx2_ + pad)), int(min(h, by2_ + pad))
    if x2 - x1 < 4 or y2 - y1 < 4:
        return None, {}
    region = image[y1:y2, x1:x2]
    mask = np.ones(region.shape[:2], dtype=bool)
    bx1, by1 = int(max(0, bx1_ - x1)), int(max(0, by1_ - y1))
    bx2, by2 = int(min(x2, bx2_) - x1), int(min(y2, by2_) - y1)
    mask[by1:by2, bx1:bx2] = False  # the code itself: its modules may be coloured or not
    hsv = cv2.cvtColor(np.ascontiguousarray(region), cv2.COLOR_BGR2HSV)
    hue, sat, val = hsv[..., 0][mask], hsv[..., 1][mask], hsv[..., 2][mask]
    n = max(1, int(mask.sum()))
    saturated = (sat >= 90) & (val >= 70)
    share = float(saturated.sum()) / n
    counts: dict[str, float] = {"saturated": round(share, 3)}
    if share < MIN_SATURATED:
        return None, counts
    hues = hue[saturated]
    best, best_n = None, 0
    for colour, ranges in HUE_CLASSES:
        k = int(sum(((hues >= lo) & (hues <= hi)).sum() for lo, hi in ranges))
        counts[colour.value] = round(k / len(hues), 3)
        if k > best_n:
            best, best_n = colour, k
    if best is None or best_n / len(hues) < MIN_DOMINANCE:
        return None, counts
    return best, counts


class ScreenColourVerifier:
    """Judges by the screen's colour; needs the frame (``verify_in_frame``), never yields a pass."""

    name = "screen-colour"

    def verify(self, payload: bytes, now_wall: float) -> CodeVerdict:
        """Refuse as ``unknown_format``: without the frame there is no colour to judge."""
        return CodeVerdict(CodeStatus.INVALID, None, "unknown_format", SOURCE, None, {})  # no pixels, no colour

    def verify_in_frame(self, code: DecodedCode, image: np.ndarray | None, now_wall: float) -> CodeVerdict:
        """Judge a code by the colour around it in ``image``: red is taken at its word, green or yellow go to staff."""
        if image is None or code.box is None:
            return self.verify(code.payload, now_wall)
        colour, counts = ring_colour(image, code.box)
        detail = {"colour": colour.value if colour else None, "ring": counts}
        if colour is None:
            return CodeVerdict(CodeStatus.INVALID, None, "unknown_format", SOURCE, None, detail)
        if colour is CodeColour.RED:
            return CodeVerdict(CodeStatus.VALID, CodeColour.RED, "screen_colour_red", SOURCE, None, detail)
        # Green or yellow seen on a screen proves nothing: staff check it.
        return CodeVerdict(CodeStatus.UNVERIFIABLE, colour, f"screen_colour_{colour.value}", SOURCE, None, detail)
