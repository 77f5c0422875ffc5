"""Blank the 2-D codes in a picture before it leaves the station.

A QR code in a picture *is* its payload: a board snapshot (station.link.snapshots) or any other image
that shows a phone's health code would send the raw payload to whoever can decode a JPEG. The
station's privacy rule (no raw payload leaves the box) therefore covers pictures too.

:func:`redact_codes` finds every QR / Data Matrix / Aztec symbol zxing-cpp can locate — also the
ones it locates but cannot decode (``return_errors``), and inverted ones — and fills each symbol's
box, grown by ``MARGIN``, with its mean colour: the screen's colour survives (staff may want to see
a red screen on the board), the modules do not.
"""

from __future__ import annotations

import numpy as np
import zxingcpp

MARGIN = 0.12  # of the symbol's side, each way: a box that clips the outer modules leaves a decodable code
_FORMATS = zxingcpp.BarcodeFormats(
    (
        zxingcpp.BarcodeFormat.QRCode,
        zxingcpp.BarcodeFormat.MicroQRCode,
        zxingcpp.BarcodeFormat.DataMatrix,
        zxingcpp.BarcodeFormat.Aztec,
    )
)


def find_code_boxes(image: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Return the box (x1, y1, x2, y2, grown by ``MARGIN``, clipped to the image) of every 2-D code zxing-cpp locates."""
    h, w = image.shape[:2]
    boxes = []
    for r in zxingcpp.read_barcodes(np.ascontiguousarray(image), formats=_FORMATS, try_invert=True, return_errors=True):
        p = r.position
        xs = [p.top_left.x, p.top_right.x, p.bottom_right.x, p.bottom_left.x]
        ys = [p.top_left.y, p.top_right.y, p.bottom_right.y, p.bottom_left.y]
        side = max(max(xs) - min(xs), max(ys) - min(ys), 1)
        m = side * MARGIN
        boxes.append((int(max(0, min(xs) - m)), int(max(0, min(ys) - m)), int(min(w, max(xs) + m + 1)), int(min(h, max(ys) + m + 1))))
    return boxes


def redact_codes(image: np.ndarray) -> tuple[np.ndarray, int]:
    """Return a copy of ``image`` with every code found filled flat, and the number of codes blanked.

    An image without codes is returned as is (not copied).
    """
    boxes = find_code_boxes(image)
    if not boxes:
        return image, 0
    out = image.copy()
    for x1, y1, x2, y2 in boxes:
        region = out[y1:y2, x1:x2]
        if not region.size:
            continue
        if region.ndim == 3:
            region[...] = region.reshape(-1, region.shape[2]).mean(axis=0).astype(out.dtype)
        else:
            region[...] = region.mean().astype(out.dtype)
    return out, len(boxes)
