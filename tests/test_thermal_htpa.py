"""Second module profile (Heimann HTPA32×32): same parser, same reconnecting serial source, own test vector."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from drivers.thermal.gy_protocol import FrameParser
from drivers.thermal.htpa32x32 import HtpaSource
from drivers.thermal.htpa_protocol import FRAME_LEN, HTPA32X32, encode_frame
from drivers.thermal.serial_source import ThermalLinkError
from sim.htpa_emulator import HtpaEmulator
from station.domain.model import Box
from station.domain.thermal import MeasureState, ThermalCalibration, measure_face
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(30)

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


def counting_scene() -> Callable[[float], tuple[np.ndarray, float]]:
    """Render a 25 °C field whose pixel (0, 0) carries the frame number: every frame is unique."""
    n = 0

    def render(now: float) -> tuple[np.ndarray, float]:
        nonlocal n
        n += 1
        img = np.full((32, 32), 25.0)
        img[0, 0] = 20.0 + (n % 100) / 10.0
        return img, 30.0

    return render


@pytest.fixture
def pair() -> Iterator[Callable[..., tuple[HtpaEmulator, HtpaSource]]]:
    """Start an emulator and a source on its pty (the source follows the emulator's path); stop both at teardown."""
    started: list[Any] = []

    def make(**src_kwargs: Any) -> tuple[HtpaEmulator, HtpaSource]:
        emu = HtpaEmulator(counting_scene())
        emu.start()
        started.append(emu)
        src = HtpaSource(emu.port, port_resolver=lambda: emu.port, **src_kwargs)
        src.start()
        started.append(src)
        return emu, src

    yield make
    for obj in reversed(started):
        obj.stop()


def frames_ok_after(src: HtpaSource, n: int, timeout: float = 5.0) -> None:
    target = int(src.stats()["frames_ok"]) + n
    wait_until(lambda: src.read_frame(0.05) is not None and int(src.stats()["frames_ok"]) >= target, timeout, f"{n} more frames")


@pytest.mark.slow
def test_source_is_connected_only_while_frames_arrive(pair: Callable[..., tuple[HtpaEmulator, HtpaSource]]) -> None:
    emu, src = pair()
    frames_ok_after(src, 2)
    assert src.connected() and src.stats()["state"] == "connected"
    emu.silence(3.0)  # the port stays open, the module says nothing
    wait_until(lambda: not src.connected(), 3.0, "connected() to turn false while the module is silent")
    wait_until(lambda: int(src.stats()["stalls"]) >= 1, 3.0, "the stall to be counted")
    assert int(src.stats()["timeouts"]) >= 1  # queries went unanswered before the stall
    frames_ok_after(src, 2, timeout=8.0)  # silence over: the source reopened and reads again
    st = src.stats()
    assert src.connected() and st["state"] == "connected" and int(st["reconnects"]) >= 1


@pytest.mark.slow
def test_unplug_and_replug_reconnects(pair: Callable[..., tuple[HtpaEmulator, HtpaSource]]) -> None:
    emu, src = pair()
    frames_ok_after(src, 2)
    emu.unplug()
    wait_until(lambda: int(src.stats()["read_errors"]) + int(src.stats()["stalls"]) >= 1, 3.0, "the lost link")
    wait_until(lambda: int(src.stats()["open_failures"]) >= 1, 3.0, "a failed reopen while unplugged")
    assert not src.connected() and src.stats()["state"] == "reconnecting"
    new_port = emu.replug()
    frames_ok_after(src, 3, timeout=8.0)
    st = src.stats()
    assert src.connected() and st["state"] == "connected" and int(st["reconnects"]) >= 1 and st["port"] == new_port
    f = src.read_frame(1.0)
    assert f is not None and f.source == "htpa32x32" and f.pixels_c.shape == (32, 32)


@pytest.mark.slow
def test_a_silent_port_is_not_a_link() -> None:
    emu = HtpaEmulator(counting_scene())
    emu.silence(60.0)
    emu.start()
    try:
        with pytest.raises(ThermalLinkError, match="no htpa32x32 frame"):
            HtpaSource(emu.port).start()
        src = HtpaSource(emu.port, require_link_at_start=False)
        src.start()
        try:
            assert not src.connected() and src.stats()["state"] in ("reconnecting", "probing")
            assert src.read_frame(0.2) is None
        finally:
            src.stop()
    finally:
        emu.stop()
