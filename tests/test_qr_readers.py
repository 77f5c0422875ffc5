"""The QR readers behind the CodeReader port, on real rendered images (segno + bench/qr_scenes.py).

Every reader must decode plain, coloured, inverted and multi-code frames; the cascade must decode
every code any single reader decodes on a fixed set of rendered phone scenes, and the cases that
need its darkest-channel and upscaled passes; garbage gives no codes and no exception.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import segno

from bench.qr_scenes import CONDITIONS, render_scene
from drivers.codes.cascade import CascadeReader, darkest_channel
from drivers.codes.opencv_reader import OpenCvReader
from drivers.codes.pyzbar_reader import PyzbarReader
from drivers.codes.zxing_reader import ZxingReader
from station.domain.model import Box
from station.ports import CodeReader

HC1 = b"HC1:NCFOXN%TS3DH3ZSUZK+.V0ETD%65NL-AH-R6IOOK.IR9B+9G4G50PHZF0AT4V22F/8X*G3M9JUPY0BX/KR96R/S09T./0LWTKD33238J3HKB5S4VV2 73-E3GG396B-43O058YIB73A*G3W19UEBY5:PI0EGSP4*2DN43U*0CEBQ/GXQFY73CIBC:G 7376BXBJBAJ UNFMJCRN0H3PQN*E33H3OA70M3FMJIJN523.K5QZ4A+2XEN QT QTHC31M3+E32R44$28A9H0D3ZCL4JMYAZ+S-A5$XKX6T2YC 35H/ITX8GL2-LH/CJTK96L6SR9MU9RFGJA6Q3QR$P2OIC0JVLA8J3ET3:H3A+2+33U SAAUOT3TPTO4UBZIC0JKQTL*QDKBO.AI9BVYTOCFOPS4IJCOT0$89NT2V457U8+9W2KQ-7LF9-DF07U$B97JJ1D7WKP/HLIJL8JF8JFHJP7NVDEBU1J*Z222E.GJF67Z JA6B.38O4BH*HB0EGLE2%V -3O+J3.PI2G:M1SSP2Y3D38-G9C+Q6U98L4J/GRHRLVS7QTVP21SLFGTGBPTH5I9VI"  # noqa: E501  (a real HC1 payload, kept whole)
TOKEN = b"https://hc.example.org/t/0123456789abcdef"
GREEN_BGR = (60, 150, 0)
YELLOW_BGR = (0, 200, 245)


def qr_bgr(payload: bytes, module_px: int, dark_rgb: tuple[int, int, int] = (0, 0, 0), border: int = 4) -> np.ndarray:
    modules = np.pad(np.array([list(r) for r in segno.make(payload, error="m").matrix], dtype=bool), border)
    modules = np.repeat(np.repeat(modules, module_px, 0), module_px, 1)
    img = np.full((*modules.shape, 3), 255, np.uint8)
    img[modules] = dark_rgb
    return img


def on_frame(*codes: tuple[np.ndarray, tuple[int, int]], fill: int = 170) -> np.ndarray:
    frame = np.full((480, 640, 3), fill, np.uint8)
    for code, (x, y) in codes:
        h, w = code.shape[:2]
        frame[y : y + h, x : x + w] = code
    return frame


ALL_READERS = [PyzbarReader(), ZxingReader(), OpenCvReader(), CascadeReader()]


@pytest.mark.parametrize("reader", ALL_READERS, ids=lambda r: r.name)
def test_reader_is_a_code_reader_and_reads_a_plain_code(reader: CodeReader) -> None:
    assert isinstance(reader, CodeReader)
    codes = reader.decode(on_frame((qr_bgr(TOKEN, 5), (100, 80))))
    assert [c.payload for c in codes] == [TOKEN]
    assert codes[0].symbology == "QRCODE"
    assert codes[0].decoder.startswith(reader.name)
    n = segno.make(TOKEN, error="m").symbol_size(scale=1, border=0)[0]
    truth = Box(100 + 20, 80 + 20, 100 + 20 + n * 5, 80 + 20 + n * 5)
    assert codes[0].box is not None and codes[0].box.iou(truth) > 0.85


@pytest.mark.parametrize("reader", ALL_READERS, ids=lambda r: r.name)
def test_reader_reads_a_signed_size_green_code(reader: CodeReader) -> None:
    codes = reader.decode(on_frame((qr_bgr(HC1, 4, GREEN_BGR), (40, 20))))
    assert [c.payload for c in codes] == [HC1]


@pytest.mark.parametrize("reader", ALL_READERS, ids=lambda r: r.name)
def test_reader_reads_an_inverted_dark_mode_code(reader: CodeReader) -> None:
    frame = 255 - on_frame((qr_bgr(TOKEN, 5), (200, 100)), fill=255)
    assert [c.payload for c in reader.decode(frame)] == [TOKEN]


@pytest.mark.parametrize("reader", ALL_READERS, ids=lambda r: r.name)
def test_reader_reads_several_codes_in_view(reader: CodeReader) -> None:
    other = b"https://hc.example.org/t/second-phone-0042"
    frame = on_frame((qr_bgr(TOKEN, 4), (20, 40)), (qr_bgr(other, 4), (380, 200)))
    assert sorted(c.payload for c in reader.decode(frame)) == sorted([TOKEN, other])


@pytest.mark.parametrize("reader", ALL_READERS, ids=lambda r: r.name)
@pytest.mark.parametrize("seed", [1, 2])
def test_garbage_gives_no_codes_and_no_exception(reader: CodeReader, seed: int) -> None:
    rng = np.random.default_rng(seed)
    assert reader.decode(rng.integers(0, 256, size=(480, 640, 3), dtype=np.uint8)) == []
    blocks = np.repeat(np.repeat(rng.integers(0, 2, size=(60, 80), dtype=np.uint8) * 255, 8, 0), 8, 1)
    assert reader.decode(blocks) == []
    assert reader.decode(np.zeros((480, 640), np.uint8)) == []
    assert reader.decode(np.full((3, 3, 3), 255, np.uint8)) == []
    # Half a code: finder patterns but no decodable symbol.
    half = on_frame((qr_bgr(HC1, 4), (40, 20)))
    half[:, 40 + 16 + 100 :] = 170
    assert reader.decode(half) == []


@pytest.mark.parametrize("reader", ALL_READERS, ids=lambda r: r.name)
def test_bad_input_is_refused_with_value_error(reader: CodeReader) -> None:
    with pytest.raises(ValueError):
        reader.decode(np.zeros((480, 640, 3), np.float32))


def test_darkest_channel_turns_coloured_modules_dark() -> None:
    img = on_frame((qr_bgr(TOKEN, 4, YELLOW_BGR), (0, 0)))
    luma = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    dark = darkest_channel(img)
    # Yellow on white: little luma contrast, full contrast in the darkest channel.
    assert int(luma.min()) > 150
    assert int(dark.min()) == 0 and int(dark.max()) == 255


def test_cascade_reads_low_contrast_yellow_that_luma_readers_miss() -> None:
    code = qr_bgr(HC1, 2, YELLOW_BGR)
    frame = cv2.GaussianBlur(on_frame((code, (100, 60)), fill=255), (0, 0), 0.9)
    frame = np.clip(frame.astype(np.float32) * 0.55 + 110, 0, 255).astype(np.uint8)  # overexposed screen
    assert ZxingReader().decode(frame) == []
    assert [c.payload for c in CascadeReader().decode(frame)] == [HC1]


def test_cascade_hard_pass_reads_a_small_code_the_cheap_pass_misses() -> None:
    """A signed-size code at 0.72 m (about 1.5 px per module): found but not decoded by the cheap
    pass, read by the upscaled pass on that region."""
    scene = render_scene(2, "far")
    assert scene.distance_m[0] > 0.7
    assert ZxingReader().decode(scene.image) == []
    assert PyzbarReader().decode(scene.image) == []
    cascade = CascadeReader()
    codes = cascade.decode(scene.image)
    assert [c.payload for c in codes] == list(scene.payloads)
    assert codes[0].decoder == "cascade:zxing-x2"
    assert cascade.passes["region"] >= 1 and cascade.passes["full_upscaled"] == 0
    assert codes[0].box is not None and codes[0].box.width > 20


@pytest.mark.slow
def test_cascade_decodes_the_union_of_the_single_readers_on_rendered_phone_scenes() -> None:
    """Two frames of every condition (angles, blur, glare, moiré, far, dark mode, several, none)."""
    scenes = [render_scene(i, c) for c in CONDITIONS for i in range(2)]
    singles = [PyzbarReader(), ZxingReader(), OpenCvReader()]
    cascade = CascadeReader()
    union_total = cascade_total = 0
    for s in scenes:
        union = set().union(*({c.payload for c in r.decode(s.image)} for r in singles))
        got = {c.payload for c in cascade.decode(s.image)}
        assert union <= got, s.name
        assert got <= set(s.payloads), f"false read in {s.name}"
        union_total += len(union)
        cascade_total += len(got)
    assert cascade_total >= union_total > 0
