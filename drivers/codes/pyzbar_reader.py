"""QR code reading with ZBar (through pyzbar).

Only QR symbols are decoded: asking ZBar for every symbology costs time on each frame and lets a
1-D barcode on a badge or a parcel be mistaken for a health code. Frames are downscaled to
``max_side`` first because ZBar's cost grows with the pixel count while a phone held at the gate
gives modules several pixels wide even at 640 px. Phone screens in dark mode show light modules on
a dark background, which ZBar does not read, so an inverted pass follows when the first finds
nothing.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np
from pyzbar import pyzbar
from pyzbar.pyzbar import ZBarSymbol

from drivers.codes.gray import to_gray
from station.domain.model import Box, DecodedCode

log = logging.getLogger("station.codes")

_SYMBOLS = [ZBarSymbol.QRCODE]


class PyzbarReader:
    """``CodeReader`` that finds QR codes; boxes are in the coordinates of the image passed in."""

    name = "pyzbar"

    def __init__(self, max_side: int = 640, try_inverted: bool = True) -> None:
        if max_side < 64:
            raise ValueError(f"max_side {max_side} is too small to read a QR code")
        self.max_side = int(max_side)
        self.try_inverted = bool(try_inverted)

    def decode(self, image: np.ndarray) -> list[DecodedCode]:
        """Return every QR code ZBar finds, in ZBar's order; [] when there is none."""
        gray, scale = to_gray(image, self.max_side)
        found = pyzbar.decode(gray, symbols=_SYMBOLS)
        if not found and self.try_inverted:
            found = pyzbar.decode(cv2.bitwise_not(gray), symbols=_SYMBOLS)
        h, w = image.shape[:2]
        codes: list[DecodedCode] = []
        for symbol in found:
            codes.append(DecodedCode(symbol.data, str(symbol.type), self._box(symbol, scale, w, h), self.name))
        if codes:
            log.debug("decoded %d QR code(s)", len(codes))
        return codes

    @staticmethod
    def _box(symbol: pyzbar.Decoded, scale: float, width: int, height: int) -> Box | None:
        """Return the symbol's bounding box back in the original image's pixels."""
        points = symbol.polygon or []
        if points:
            xs = [float(p.x) for p in points]
            ys = [float(p.y) for p in points]
            x1, y1, x2, y2 = min(xs), min(ys), max(xs) + 1.0, max(ys) + 1.0
        else:
            r = symbol.rect
            x1, y1, x2, y2 = float(r.left), float(r.top), float(r.left + r.width), float(r.top + r.height)
        if x2 <= x1 or y2 <= y1:
            return None
        inv = 1.0 / scale
        return Box(
            max(0.0, x1 * inv),
            max(0.0, y1 * inv),
            min(float(width), x2 * inv),
            min(float(height), y2 * inv),
        )
