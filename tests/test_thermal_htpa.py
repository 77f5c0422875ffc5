"""Second module profile (Heimann HTPA32×32): same parser, same ThermalSource seam, own test vector."""

from __future__ import annotations

import numpy as np
import pytest

from drivers.thermal.gy_mcu90640 import FrameParser
from drivers.thermal.htpa32x32 import FRAME_LEN, HTPA32X32, HtpaEmulator, HtpaSource, encode_frame
from station.domain.model import Box
from station.domain.thermal import MeasureState, ThermalCalibration, measure_face

# Hand-built vector: E1, pixel k = 2731 + 250 + (k % 64) deci-K (25.0 … 31.3 °C), Ta 2731 + 305, 4 zero bytes.
VECTOR = (
    b"\xe1"
    + b"".join((2731 + 250 + (k % 64)).to_bytes(2, "big") for k in range(1024))
    + (2731 + 305).to_bytes(2, "big")
    + b"\x00\x00\x00\x00"
)


def test_vector_decodes_exactly():
    assert len(VECTOR) == FRAME_LEN == 2055
    (f,) = FrameParser(HTPA32X32).feed(VECTOR)
    assert f.pixels_c.shape == (32, 32)
    assert f.die_c == pytest.approx(30.5)
    assert f.pixels_c[0, 0] == pytest.approx(25.0, abs=1e-4)  # first word: upper-left, row-major
    assert f.pixels_c[0, 31] == pytest.approx(28.1, abs=1e-4)
    assert f.pixels_c[1, 0] == pytest.approx(28.2, abs=1e-4)  # k = 32
    assert f.pixels_c[31, 31] == pytest.approx(31.3, abs=1e-4)  # k = 1023 → 63


def test_encoder_round_trips_and_garbage_and_implausible_words_are_skipped():
    rng = np.random.default_rng(0)
    img = np.round(rng.uniform(20, 37, (32, 32)), 1)
    raw = encode_frame(img, 31.2)
    p = FrameParser(HTPA32X32)
    bad = bytearray(raw)
    bad[5:7] = b"\xff\xff"  # 6280 °C: the module cannot say that
    out = p.feed(b"\x00\x13\x37" + bytes(bad) + raw)
    assert len(out) == 1 and np.allclose(out[0].pixels_c, img, atol=1e-4)
    assert p.frames_ok == 1 and p.checksum_errors >= 1 and p.resync_bytes >= 3


def test_source_over_a_pty_feeds_the_same_measurement():
    img = np.full((32, 32), 22.0)
    img[8:20, 12:22] = 35.0
    img[11:14, 15:18] = 35.8
    emu = HtpaEmulator(lambda now: (img, 30.0))
    emu.start()
    src = HtpaSource(emu.port, refresh_hz=4.0)
    src.start()
    try:
        f = src.read_frame(3.0)
    finally:
        src.stop()
        emu.stop()
    assert f is not None and f.source == "htpa32x32" and f.pixels_c.shape == (32, 32)
    m = measure_face(f, Box(12, 8, 22, 20), ThermalCalibration(np.eye(3), offset_c=1.0, roi_margin=0.0))
    assert m.state == MeasureState.MEASURED and m.core_c == pytest.approx(36.8, abs=0.01)
    assert emu.queries >= 1
