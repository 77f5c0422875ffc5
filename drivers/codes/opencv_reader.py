"""QR code reading with OpenCV's detector (``cv2.QRCodeDetectorAruco`` or the classic ``cv2.QRCodeDetector``).

Measured beside ZBar and zxing-cpp in ``bench/qr.py``; OpenCV is already a dependency, so this
reader costs nothing to offer. OpenCV returns the payload as text, so binary payloads come back
UTF-8 encoded rather than byte for byte; health-code payloads (HC1 Base45, tokens) are ASCII.
OpenCV reads dark-on-light only, so an inverted pass follows when the first finds nothing.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import cv2
import numpy as np

from drivers.codes.gray import box_from_points, to_gray
from station.domain.model import DecodedCode

log = logging.getLogger("station.codes")


class OpenCvReader:
    """``CodeReader`` on OpenCV's QR detector; boxes are in the coordinates of the image passed in."""

    def __init__(self, max_side: int = 640, detector: Literal["aruco", "classic"] = "aruco", try_inverted: bool = True) -> None:
        if max_side < 64:
            raise ValueError(f"max_side {max_side} is too small to read a QR code")
        self.max_side = int(max_side)
        self.try_inverted = bool(try_inverted)
        self.name = "opencv" if detector == "aruco" else "opencv-classic"
        # The ArUco-based detector finds finder patterns by contours and is markedly more robust to
        # perspective and small symbols than the classic one (measured in bench/qr.py).
        self._detector: Any = cv2.QRCodeDetectorAruco() if detector == "aruco" else cv2.QRCodeDetector()

    def _pass(self, gray: np.ndarray) -> list[tuple[str, np.ndarray]]:
        ok, texts, points, _ = self._detector.detectAndDecodeMulti(gray)
        if not ok or points is None:
            return []
        return [(t, p) for t, p in zip(texts, points, strict=False) if t]

    def decode(self, image: np.ndarray) -> list[DecodedCode]:
        """Return every QR code OpenCV decodes; [] when there is none."""
        gray, scale = to_gray(image, self.max_side)
        found = self._pass(gray)
        if not found and self.try_inverted:
            found = self._pass(cv2.bitwise_not(gray))
        h, w = image.shape[:2]
        codes = [
            DecodedCode(
                text.encode("utf-8"), "QRCODE", box_from_points([(float(x), float(y)) for x, y in pts], scale, (0.0, 0.0), w, h), self.name
            )
            for text, pts in found
        ]
        if codes:
            log.debug("decoded %d QR code(s) decoder=%s", len(codes), self.name)
        return codes
