"""The QR reader cascade: a cheap pass on the whole frame, a harder pass only where it is needed.

1. **Cheap pass** — zxing-cpp on the frame at ≤ ``max_side``, on the *darkest channel* of a colour
   frame (min(B, G, R): green, yellow and red modules turn nearly black, white stays white),
   inverted too (dark-mode screens), reporting the symbols it *found but could not decode* as well
   (``return_errors``): their corners say where a harder look is worth it.
2. **Hard pass** — only when the cheap pass found a symbol it could not decode: the luma frame once
   at 1×, then each region still undecoded (with a margin) through ``_REGION_VARIANTS``: luma at
   1×, upscaled ×``upscale`` (bicubic; darkest channel, then luma), then both again with an unsharp
   mask. The first look that decodes a region ends its search.
3. Optionally (``full_pass``), when the cheap pass saw no symbol at all: the luma frame, then the
   whole frame upscaled; off by default.

Codes found by either pass are de-duplicated by payload. Boxes are in the coordinates of the image
passed in. Why each step is there, with the measurements (``python -m bench.qr``):
``docs/design-notes.md``, section *drivers/codes/cascade.py*.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Literal

import cv2
import numpy as np
import zxingcpp

from drivers.codes.gray import box_from_points, to_gray
from drivers.codes.zxing_reader import corner_points
from station.domain.model import DecodedCode

log = logging.getLogger("station.codes")

_QR = zxingcpp.BarcodeFormats(zxingcpp.BarcodeFormat.QRCode)


def darkest_channel(image: np.ndarray) -> np.ndarray:
    """Return min(B, G, R) per pixel of a colour frame (coloured modules → dark), or the frame itself if gray."""
    if image.ndim == 3 and image.shape[2] in (3, 4):
        if image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 image, got {image.dtype}")
        b, g, r = cv2.split(image)[:3]
        return cv2.min(cv2.min(b, g), r)
    return image


def _read(gray: np.ndarray, errors: bool) -> list[zxingcpp.Barcode]:
    return list(zxingcpp.read_barcodes(gray, formats=_QR, try_rotate=False, try_downscale=True, try_invert=True, return_errors=errors))


class CascadeReader:
    """``CodeReader``: zxing-cpp on the darkest channel, then an upscaled pass where that failed."""

    name = "cascade"

    def __init__(
        self,
        max_side: int = 640,
        upscale: float = 2.0,
        margin: float = 0.35,
        full_pass: Literal["none", "luma", "luma+upscaled"] = "none",
        region_variants: int = 5,
        luma_on_regions: bool = True,
        max_regions: int = 4,
    ) -> None:
        if max_side < 64:
            raise ValueError(f"max_side {max_side} is too small to read a QR code")
        if not 1.0 < upscale <= 4.0:
            raise ValueError(f"upscale {upscale} must be in (1, 4]")
        if not 1 <= region_variants <= len(_REGION_VARIANTS):
            raise ValueError(f"region_variants must be 1..{len(_REGION_VARIANTS)}")
        self.max_side = int(max_side)
        self.upscale = float(upscale)
        self.margin = float(margin)
        self.full_pass = full_pass
        self.region_variants = _REGION_VARIANTS[:region_variants]
        self.luma_on_regions = bool(luma_on_regions)
        # Bounds the hard pass's worst case (a frame full of clutter that looks like finder patterns).
        self.max_regions = int(max_regions)
        self.passes = {"cheap": 0, "full_luma": 0, "full_upscaled": 0, "region": 0}  # how often each pass ran

    def decode(self, image: np.ndarray) -> list[DecodedCode]:
        """Return every QR code the cheap pass, then the hard pass where needed, reads; [] when there is none."""
        dark, scale = to_gray(darkest_channel(image), self.max_side)
        h, w = image.shape[:2]
        gh, gw = dark.shape
        codes: dict[bytes, DecodedCode] = {}
        regions: list[tuple[int, int, int, int]] = []
        luma: list[np.ndarray] = []

        def luma_image() -> np.ndarray:  # converted at most once, and only when a hard pass needs it
            if not luma:
                luma.append(to_gray(image, self.max_side)[0])
            return luma[0]

        def collect(results: list[zxingcpp.Barcode], factor: float, origin: tuple[int, int], tag: str, want_regions: bool) -> bool:
            """Keep the decoded codes (boxes mapped back to the frame); note where undecoded symbols are."""
            new = False
            for r in results:
                pts = [(x / factor, y / factor) for x, y in corner_points(r)]
                if r.valid:
                    if r.bytes not in codes:
                        box = box_from_points(pts, scale, (origin[0] / scale, origin[1] / scale), w, h)
                        codes[r.bytes] = DecodedCode(r.bytes, "QRCODE", box, tag)
                        new = True
                elif want_regions:
                    xs = [origin[0] + x for x, _ in pts]
                    ys = [origin[1] + y for _, y in pts]
                    m = max(max(xs) - min(xs), max(ys) - min(ys), 8.0) * self.margin
                    regions.append(
                        (max(0, int(min(xs) - m)), max(0, int(min(ys) - m)), min(gw, int(max(xs) + m) + 1), min(gh, int(max(ys) + m) + 1))
                    )
            return new

        self.passes["cheap"] += 1
        found = _read(dark, errors=True)
        collect(found, 1.0, (0, 0), "cascade:zxing", want_regions=True)
        if not found and self.full_pass != "none":
            # No symbol seen at all. MJPEG's chroma subsampling smears the darkest channel of a
            # black-on-white code, so luma gets one look; then the whole frame upscaled, for codes
            # too small to show finder patterns at 1×.
            self.passes["full_luma"] += 1
            found = _read(luma_image(), errors=True)
            collect(found, 1.0, (0, 0), "cascade:zxing-luma", want_regions=True)
            if not found and self.full_pass == "luma+upscaled":
                self.passes["full_upscaled"] += 1
                collect(
                    _read(_upscaled(dark, self.upscale, False), errors=False),
                    self.upscale,
                    (0, 0),
                    f"cascade:zxing-x{self.upscale:g}",
                    False,
                )
        if regions and not luma and self.luma_on_regions:
            # A symbol was seen but not decoded. Its corners can be a wrong guess in the darkest
            # channel (then the region misses part of the code), so luma gets one look at the whole
            # frame before the regions are searched.
            self.passes["full_luma"] += 1
            if collect(_read(luma_image(), errors=False), 1.0, (0, 0), "cascade:zxing-luma", False):
                regions = [r for r in regions if not _covered(r, codes.values(), scale)]
        for x1, y1, x2, y2 in regions[: self.max_regions]:
            if x2 - x1 < 8 or y2 - y1 < 8:
                continue
            self.passes["region"] += 1
            for source, upscale, sharpen in self.region_variants:
                src = dark if source == "dark" else luma_image()
                factor = self.upscale if upscale else 1.0
                crop = _upscaled(src[y1:y2, x1:x2], factor, sharpen) if upscale else np.ascontiguousarray(src[y1:y2, x1:x2])
                tag = (
                    "cascade:zxing"
                    + ("-luma" if source == "luma" else "")
                    + (f"-x{factor:g}" if upscale else "")
                    + ("-sharp" if sharpen else "")
                )
                if collect(_read(crop, errors=False), factor, (x1, y1), tag, False):
                    break
        out = list(codes.values())
        if out:
            log.debug("decoded %d QR code(s) decoder=cascade regions=%d", len(out), len(regions))
        return out


# Looks at a found-but-undecoded symbol as (channel, upscaled?, sharpened?), cheapest first; the
# first that decodes ends the search. The luma crop at 1× comes first because MJPEG's chroma
# subsampling can blur the darkest channel of a black code; sharpening (an unsharp mask) restores
# module edges that defocus and hand motion smeared.
_REGION_VARIANTS: tuple[tuple[str, bool, bool], ...] = (
    ("luma", False, False),
    ("dark", True, False),
    ("luma", True, False),
    ("dark", True, True),
    ("luma", True, True),
)


def _covered(region: tuple[int, int, int, int], codes: Iterable[DecodedCode], scale: float) -> bool:
    """Return whether the centre of a work-image region lies in the box of a decoded code (frame pixels)."""
    cx, cy = (region[0] + region[2]) / 2.0 / scale, (region[1] + region[3]) / 2.0 / scale
    return any(c.box is not None and c.box.x1 <= cx <= c.box.x2 and c.box.y1 <= cy <= c.box.y2 for c in codes)


def _upscaled(gray: np.ndarray, factor: float, sharpen: bool) -> np.ndarray:
    big = cv2.resize(gray, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)
    if sharpen:
        blurred = cv2.GaussianBlur(big, (0, 0), 1.5 * factor)
        big = cv2.addWeighted(big, 2.0, blurred, -1.0, 0)
    return big
