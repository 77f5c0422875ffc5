"""Frame preparation shared by the QR readers: grayscale, bounded size, boxes back in frame pixels."""

from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np

from station.domain.model import Box


def to_gray(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """Return the image as grayscale uint8, downscaled so its longer side is at most ``max_side``, and the factor applied.

    Decoders' cost grows with the pixel count, and a phone held at the gate gives modules several
    pixels wide even at 640 px, so larger frames are shrunk (INTER_AREA keeps thin modules).
    """
    if image.ndim == 3:
        if image.shape[2] == 4:
            gray = cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
        elif image.shape[2] == 3:
            gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        elif image.shape[2] == 1:
            gray = image[:, :, 0]
        else:
            raise ValueError(f"unsupported image shape {image.shape}")
    elif image.ndim == 2:
        gray = image
    else:
        raise ValueError(f"unsupported image shape {image.shape}")
    if gray.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {gray.dtype}")
    if gray.size == 0:
        raise ValueError("empty image")
    h, w = gray.shape
    scale = 1.0
    if max(h, w) > max_side:
        scale = max_side / float(max(h, w))
        gray = cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(gray), scale


def box_from_points(
    points: Iterable[tuple[float, float]], scale: float, offset: tuple[float, float], width: int, height: int
) -> Box | None:
    """Return the axis-aligned box around a symbol's corner points, mapped from a (scaled, cropped) work image to the frame."""
    pts = list(points)
    if not pts:
        return None
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts]
    inv = 1.0 / scale
    x1 = offset[0] + min(xs) * inv
    y1 = offset[1] + min(ys) * inv
    x2 = offset[0] + (max(xs) + 1.0) * inv
    y2 = offset[1] + (max(ys) + 1.0) * inv
    box = Box(max(0.0, x1), max(0.0, y1), min(float(width), x2), min(float(height), y2))
    if box.width <= 0.0 or box.height <= 0.0:
        return None
    return box
