"""QR code reading with zxing-cpp (PyPI ``zxing-cpp``, module ``zxingcpp``).

Only QR symbols are asked for, for the same reasons as the ZBar reader: less work per frame and no
1-D barcode on a badge mistaken for a health code. zxing-cpp finds QR codes by their finder
patterns with a local-average binariser, which copes with uneven light (glare, a screen brighter
than the room) better than ZBar's scanlines; ``try_invert`` reads dark-mode screens.
"""

from __future__ import annotations

import logging

import numpy as np
import zxingcpp

from drivers.codes.gray import box_from_points, to_gray
from station.domain.model import DecodedCode

log = logging.getLogger("station.codes")

_QR = zxingcpp.BarcodeFormats(zxingcpp.BarcodeFormat.QRCode)


def corner_points(result: zxingcpp.Barcode) -> list[tuple[float, float]]:
    """Return the four corners zxing-cpp reports for a symbol, as (x, y) pairs."""
    p = result.position
    return [(float(c.x), float(c.y)) for c in (p.top_left, p.top_right, p.bottom_right, p.bottom_left)]


class ZxingReader:
    """``CodeReader`` on zxing-cpp; boxes are in the coordinates of the image passed in."""

    name = "zxing"

    def __init__(self, max_side: int = 640, try_invert: bool = True, try_downscale: bool = True) -> None:
        if max_side < 64:
            raise ValueError(f"max_side {max_side} is too small to read a QR code")
        self.max_side = int(max_side)
        self.try_invert = bool(try_invert)
        self.try_downscale = bool(try_downscale)

    def decode(self, image: np.ndarray) -> list[DecodedCode]:
        """Return every QR code zxing-cpp reads, in its order; [] when there is none."""
        gray, scale = to_gray(image, self.max_side)
        h, w = image.shape[:2]
        # try_rotate only matters for 1-D symbols: QR detection is rotation invariant already.
        found = zxingcpp.read_barcodes(gray, formats=_QR, try_rotate=False, try_downscale=self.try_downscale, try_invert=self.try_invert)
        codes = [
            DecodedCode(r.bytes, "QRCODE", box_from_points(corner_points(r), scale, (0.0, 0.0), w, h), self.name) for r in found if r.valid
        ]
        if codes:
            log.debug("decoded %d QR code(s) decoder=zxing", len(codes))
        return codes
