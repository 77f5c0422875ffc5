"""PyzbarReader on QR codes rendered like health-code apps: coloured modules on white.

Codes are generated with segno, so every test knows the exact payload and where the symbol is.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import segno

from drivers.codes.pyzbar_reader import PyzbarReader
from station.domain.model import Box
from station.ports import CodeReader

PAYLOAD = b'{"v":1,"id":"c3f1a9e2","colour":"green","exp":1893456000,"sig":"MEUCIQDx3q2+7w=="}'

# RGB as the apps show them; converted to BGR when drawn.
COLOURS_RGB = {
    "green": (0, 150, 60),
    "amber": (255, 176, 0),
    "yellow": (245, 200, 0),
    "red": (220, 30, 30),
    "black": (0, 0, 0),
}


def qr_image(payload: bytes, rgb: tuple[int, int, int], module_px: int, border: int = 4) -> np.ndarray:
    """A BGR image of the code: modules in ``rgb`` on white with a ``border``-module quiet zone."""
    qr = segno.make(payload, error="m", micro=False)
    modules = np.pad(np.array([list(r) for r in qr.matrix], dtype=bool), border)
    modules = np.repeat(np.repeat(modules, module_px, axis=0), module_px, axis=1)
    img = np.full((*modules.shape, 3), 255, np.uint8)
    img[modules] = rgb[::-1]
    return img


def on_canvas(code: np.ndarray, size: tuple[int, int] = (640, 480), at: tuple[int, int] = (40, 30), fill: int = 190) -> np.ndarray:
    w, h = size
    canvas = np.full((h, w, 3), fill, np.uint8)
    ch, cw = code.shape[:2]
    canvas[at[1] : at[1] + ch, at[0] : at[0] + cw] = code
    return canvas


def symbol_box(payload: bytes, module_px: int, at: tuple[int, int], border: int = 4) -> Box:
    """Where the symbol itself (without quiet zone) is on the canvas."""
    n = segno.make(payload, error="m", micro=False).symbol_size(scale=1, border=0)[0]
    x0, y0 = at[0] + border * module_px, at[1] + border * module_px
    return Box(x0, y0, x0 + n * module_px, y0 + n * module_px)


@pytest.fixture(scope="module")
def reader() -> PyzbarReader:
    return PyzbarReader()


def test_protocol(reader: PyzbarReader) -> None:
    assert isinstance(reader, CodeReader)
    assert reader.name == "pyzbar"


@pytest.mark.parametrize("colour", sorted(COLOURS_RGB))
@pytest.mark.parametrize("module_px", [2, 3, 4, 6])
def test_coloured_codes_at_several_sizes(reader: PyzbarReader, colour: str, module_px: int) -> None:
    at = (40, 30)
    img = on_canvas(qr_image(PAYLOAD, COLOURS_RGB[colour], module_px), at=at)
    codes = reader.decode(img)
    assert [c.payload for c in codes] == [PAYLOAD]
    code = codes[0]
    assert code.symbology == "QRCODE"
    assert code.decoder == "pyzbar"
    assert code.box is not None
    assert code.box.iou(symbol_box(PAYLOAD, module_px, at)) > 0.9


@pytest.mark.parametrize("colour", ["green", "amber", "red"])
def test_blurred_code(reader: PyzbarReader, colour: str) -> None:
    img = on_canvas(qr_image(PAYLOAD, COLOURS_RGB[colour], 4))
    blurred = cv2.GaussianBlur(img, (0, 0), 1.2)
    assert [c.payload for c in reader.decode(blurred)] == [PAYLOAD]


@pytest.mark.parametrize("colour", ["green", "yellow", "red"])
def test_perspective_warped_code(reader: PyzbarReader, colour: str) -> None:
    """A phone tilted away from the camera: one side of the code is 20 % shorter than the other."""
    code = qr_image(PAYLOAD, COLOURS_RGB[colour], 5)
    s = code.shape[0]
    src = np.float32([[0, 0], [s, 0], [s, s], [0, s]])
    dst = np.float32([[100, 60], [100 + s * 0.9, 60 + s * 0.1], [100 + s * 0.9, 60 + s * 0.9], [100, 60 + s]])
    matrix = cv2.getPerspectiveTransform(src, dst)
    warped = cv2.warpPerspective(code, matrix, (640, 480), flags=cv2.INTER_LINEAR, borderValue=(255, 255, 255))
    codes = reader.decode(warped)
    assert [c.payload for c in codes] == [PAYLOAD]
    assert codes[0].box is not None
    assert codes[0].box.x1 >= 100 and codes[0].box.x2 <= 100 + s


def test_inverted_code_needs_the_inverted_pass() -> None:
    """Dark-mode phone screens show light modules on dark: only the inverted pass reads them."""
    img = 255 - on_canvas(qr_image(PAYLOAD, COLOURS_RGB["black"], 4), fill=255)
    assert [c.payload for c in PyzbarReader(try_inverted=True).decode(img)] == [PAYLOAD]
    assert PyzbarReader(try_inverted=False).decode(img) == []


def test_large_frame_is_downscaled_and_box_is_in_original_coordinates(reader: PyzbarReader) -> None:
    at = (1200, 500)
    img = on_canvas(qr_image(PAYLOAD, COLOURS_RGB["green"], 8), size=(1920, 1080), at=at)
    codes = reader.decode(img)
    assert [c.payload for c in codes] == [PAYLOAD]
    assert codes[0].box is not None
    assert codes[0].box.iou(symbol_box(PAYLOAD, 8, at)) > 0.85


def test_grayscale_and_bgra_input(reader: PyzbarReader) -> None:
    img = on_canvas(qr_image(PAYLOAD, COLOURS_RGB["red"], 4))
    assert [c.payload for c in reader.decode(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY))] == [PAYLOAD]
    assert [c.payload for c in reader.decode(cv2.cvtColor(img, cv2.COLOR_BGR2BGRA))] == [PAYLOAD]


def test_two_codes_in_one_frame(reader: PyzbarReader) -> None:
    other = b"second-code-0042"
    img = np.full((480, 640, 3), 200, np.uint8)
    a = qr_image(PAYLOAD, COLOURS_RGB["green"], 3)
    b = qr_image(other, COLOURS_RGB["red"], 4)
    img[20 : 20 + a.shape[0], 20 : 20 + a.shape[1]] = a
    img[240 : 240 + b.shape[0], 400 : 400 + b.shape[1]] = b
    assert sorted(c.payload for c in reader.decode(img)) == sorted([PAYLOAD, other])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_noise_and_garbage_give_nothing(reader: PyzbarReader, seed: int) -> None:
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
    assert reader.decode(noise) == []
    # Blocky noise looks more like QR modules than pixel noise does.
    blocks = np.repeat(np.repeat(rng.integers(0, 2, size=(60, 80), dtype=np.uint8) * 255, 8, axis=0), 8, axis=1)
    assert reader.decode(blocks) == []
    assert reader.decode(np.zeros((480, 640), np.uint8)) == []


def test_bad_input_is_refused(reader: PyzbarReader) -> None:
    with pytest.raises(ValueError):
        reader.decode(np.zeros((480, 640, 3), np.float32))
    with pytest.raises(ValueError):
        PyzbarReader(max_side=10)
