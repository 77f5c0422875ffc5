"""The GY-MCU90640 driver against the pty emulator (real pty, real bytes), the emulator alone, and the
thermal scene renderer."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import serial

from drivers.thermal.gy_mcu90640 import GyMcu90640Source
from drivers.thermal.gy_protocol import (
    DecodedFrame,
    FrameParser,
    cmd_query_mode,
    cmd_save,
    cmd_set_baud,
    cmd_set_emissivity,
    cmd_set_refresh,
    frame_time_s,
)
from sim.gy_mcu90640_emulator import GyMcu90640Emulator
from sim.scene import Phase, SceneDirector, ScenePerson, SceneTiming
from sim.thermal_render import ThermalSceneRenderer
from station.domain.model import ThermalFrame
from station.ports import ThermalSource
from tests.support.waiting import wait_until

# Real-time frame streams over a pty at the module's 4-8 Hz: about a second a test, so out of the fast loop.
pytestmark = [pytest.mark.timeout(30), pytest.mark.slow]

MARKER_RC = (3, 5)  # a hot pixel at an asymmetric place: proves the mirror is undone


class CountingScene:
    """25 °C field, a 40 °C marker, and the frame number in pixel (23, 0): every frame is unique."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, now: float) -> tuple[np.ndarray, float]:
        self.n += 1
        img = np.full((24, 32), 25.0)
        img[MARKER_RC] = 40.0
        img[23, 0] = 20.0 + (self.n % 1000) / 100.0
        return img, 30.0


Pair = tuple[GyMcu90640Emulator, GyMcu90640Source]


@pytest.fixture
def make_pair() -> Iterator[Callable[..., Pair]]:
    """Start an emulator and a driver on its pty; both are stopped at teardown."""
    started: list[Any] = []

    def make(emu_kwargs: dict[str, Any] | None = None, resolver: bool = False, **src_kwargs: Any) -> Pair:
        ekw = {"baud": 460800, "refresh_hz": 8.0, "seed": 1, "history": 256, **(emu_kwargs or {})}
        emu = GyMcu90640Emulator(CountingScene(), **ekw)
        emu.start()
        started.append(emu)
        skw = {"baud": 460800, "refresh_hz": 8.0, **src_kwargs}
        src = GyMcu90640Source(emu.port, port_resolver=(lambda: emu.port) if resolver else None, **skw)
        src.start()
        started.append(src)
        return emu, src

    yield make
    for obj in reversed(started):
        obj.stop()


def collect(src: GyMcu90640Source, until: Callable[[], bool], timeout: float, what: str) -> list[ThermalFrame]:
    """Read frames until ``until()`` holds; fail with the driver's stats if it never does."""
    frames: list[ThermalFrame] = []
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}; stats={src.stats()}")
        f = src.read_frame(0.05)
        if f is not None:
            frames.append(f)
    return frames


def frames_after(src: GyMcu90640Source, n: int, timeout: float = 3.0) -> list[ThermalFrame]:
    target = int(src.stats()["frames_ok"]) + n
    return collect(src, lambda: int(src.stats()["frames_ok"]) >= target, timeout, f"{n} more frames")


def assert_genuine(emu: GyMcu90640Emulator, frames: list[ThermalFrame]) -> None:
    """Every delivered frame is one the emulator built and sent undamaged."""
    clean = set()
    for _, raw, fault in emu.sent_frames:
        if not fault:
            (item,) = FrameParser().feed(raw)
            assert isinstance(item, DecodedFrame)
            clean.add(item.pixels_c.tobytes())
    for f in frames:
        assert f.pixels_c.tobytes() in clean, f"frame {f.seq} was never sent intact"


# ---------------------------------------------------------------------------------------------
# Driver + emulator
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_frames_arrive_at_the_refresh_rate_in_scene_orientation(make_pair: Callable[..., Pair]) -> None:
    emu, src = make_pair({"baud": 115200, "refresh_hz": 4.0}, baud=115200, refresh_hz=4.0)
    assert isinstance(src, ThermalSource)
    frames = collect(src, lambda: float(src.stats()["observed_hz"]) > 0, 6.0, "the rate measurement")
    st = src.stats()
    assert st["state"] == "connected" and st["baud"] == 115200
    assert abs(float(st["observed_hz"]) - 4.0) <= 0.35 * 4.0 and st["rate_ok"] is True
    assert len(frames) >= 6
    ts = [f.t for f in frames[1:]]
    rate = (len(ts) - 1) / (ts[-1] - ts[0])
    assert abs(rate - 4.0) <= 0.35 * 4.0, rate
    assert [f.seq for f in frames] == sorted(f.seq for f in frames)
    for f in frames:
        assert f.pixels_c.shape == (24, 32) and f.pixels_c.dtype == np.float32
        assert f.pixels_c[MARKER_RC] == np.float32(40.0)  # not at column 31 - 5
        assert f.die_c == 30.0 and f.source == "gy-mcu90640"
        assert f.t <= time.monotonic()
    assert_genuine(emu, frames)
    assert st["checksum_errors"] == 0 and st["implausible_frames"] == 0
    assert emu.settings.emissivity == 0.98 and emu.settings.mode == "continuous"


def test_auto_probe_finds_460800(make_pair: Callable[..., Pair]) -> None:
    t0 = time.monotonic()
    emu, src = make_pair({"baud": 460800}, baud=None, refresh_hz=8.0)
    started_s = time.monotonic() - t0
    st = src.stats()
    assert st["baud"] == 460800 and st["state"] == "connected"
    # the 115200 attempt saw only line noise, and its frame request reached the module garbled
    assert emu.stats()["rx_garbled_bytes"] >= 4
    frames = frames_after(src, 3)
    assert_genuine(emu, frames)
    assert started_s < 3.0


def test_probe_wakes_a_module_saved_in_query_mode(make_pair: Callable[..., Pair], tmp_path: Any) -> None:
    flash = os.path.join(tmp_path, "flash.json")
    with open(flash, "w", encoding="utf-8") as fh:
        json.dump({"baud": 115200, "refresh_hz": 0.5, "mode": "query", "emissivity": 0.95}, fh)
    emu, src = make_pair({"baud": 460800, "flash_path": flash}, baud=None, refresh_hz=4.0)
    assert src.stats()["baud"] == 115200
    frames_after(src, 3)
    s = emu.settings
    assert (s.mode, s.refresh_hz, s.emissivity, s.baud) == ("continuous", 4.0, 0.98, 115200)


FAULTS: list[tuple[str, Callable[[GyMcu90640Emulator], None], str, str, int | None]] = [
    # (id, inject, emulator counter, driver counter that must grow by one, resync bytes expected)
    ("drop", lambda e: e.drop_byte(), "drop_byte", "checksum_errors", 1543),
    ("insert", lambda e: e.insert_byte(value=0x00), "insert_byte", "checksum_errors", 1545),
    ("flip", lambda e: e.flip_bit(bit=3), "flip_bit", "checksum_errors", 1544),
    ("truncate", lambda e: e.truncate_next_frame(keep=700), "truncated_frames", "checksum_errors", 700),
    ("garbage", lambda e: e.garbage_burst(300), "garbage_bytes", "resync_bytes", 300),
    ("zeros", lambda e: e.implausible_frame("zeros"), "implausible_frames", "implausible_frames", 0),
    ("hot", lambda e: e.implausible_frame("hot"), "implausible_frames", "implausible_frames", 0),
    ("dead", lambda e: e.implausible_frame("dead"), "implausible_frames", "implausible_frames", 0),
]


@pytest.mark.parametrize(("inject", "emu_counter", "counter", "resync"), [f[1:] for f in FAULTS], ids=[f[0] for f in FAULTS])
def test_fault_is_counted_and_skipped(
    make_pair: Callable[..., Pair],
    inject: Callable[[GyMcu90640Emulator], None],
    emu_counter: str,
    counter: str,
    resync: int,
) -> None:
    emu, src = make_pair()
    frames = frames_after(src, 2)
    before = src.stats()
    inject(emu)
    collect(src, lambda: int(emu.stats()[emu_counter]) >= 1, 2.0, "the fault to be sent")
    frames += frames_after(src, 3)
    after = src.stats()
    if counter != "resync_bytes":
        assert int(after[counter]) - int(before[counter]) == 1
    assert int(after["resync_bytes"]) - int(before["resync_bytes"]) == resync
    for other in ("checksum_errors", "implausible_frames"):
        if other != counter:
            assert after[other] == before[other], other
    assert after["stalls"] == 0 and after["state"] == "connected"
    assert_genuine(emu, frames)
    for f in frames:
        assert -40.0 <= float(f.pixels_c.min()) and float(f.pixels_c.max()) <= 300.0 and f.pixels_c.any()


@pytest.mark.slow
def test_stall_is_counted_and_the_link_recovers(make_pair: Callable[..., Pair]) -> None:
    emu, src = make_pair()
    frames_after(src, 2)
    emu.stall(1.6)
    collect(src, lambda: int(src.stats()["stalls"]) >= 1, 3.0, "a stall")
    frames = frames_after(src, 3, timeout=4.0)
    st = src.stats()
    assert st["state"] == "connected" and int(st["reconnects"]) >= 1
    assert float(st["last_frame_age_s"]) < 1.0
    assert_genuine(emu, frames)


def test_unplug_and_replug_reconnects(make_pair: Callable[..., Pair]) -> None:
    emu, src = make_pair(resolver=True)
    frames_after(src, 2)
    old_port = emu.port
    emu.unplug()
    collect(src, lambda: int(src.stats()["read_errors"]) >= 1, 2.0, "the read error")
    collect(src, lambda: int(src.stats()["open_failures"]) >= 1, 3.0, "a failed reopen")
    assert src.stats()["state"] in ("reconnecting", "probing")
    assert src.read_frame(0.2) is None
    new_port = emu.replug()
    assert new_port == emu.port
    frames = frames_after(src, 3, timeout=5.0)
    st = src.stats()
    assert st["state"] == "connected" and int(st["reconnects"]) >= 1 and st["port"] == new_port
    assert_genuine(emu, frames)
    del old_port  # the old pty is gone; the new one may or may not reuse its number


def test_emissivity_query_round_trip(make_pair: Callable[..., Pair]) -> None:
    emu, src = make_pair(emissivity=0.98)
    assert src.query_emissivity(timeout=1.0) == 0.98
    assert emu.stats()["emissivity_replies_sent"] == 1
    st = src.stats()
    assert st["emissivity_replies"] == 1 and st["module_emissivity"] == 0.98
    frames_after(src, 2)  # the reply did not disturb the frame stream
    assert src.stats()["resync_bytes"] == st["resync_bytes"]


def test_a_slow_reader_gets_the_freshest_frames(make_pair: Callable[..., Pair]) -> None:
    emu, src = make_pair()
    frames_after(src, 1)
    time.sleep(1.0)  # ~8 frames arrive while nobody reads
    st = src.stats()
    first, second = src.read_frame(0.1), src.read_frame(0.1)
    assert first is not None and second is not None
    assert int(st["frames_dropped"]) >= 4
    assert second.seq == first.seq + 1 and second.seq >= int(st["frames_ok"]) - 1
    assert time.monotonic() - second.t < 0.3
    assert_genuine(emu, [first, second])


def test_query_mode_driver_requests_each_frame(make_pair: Callable[..., Pair]) -> None:
    emu, src = make_pair(continuous=False)
    t0 = time.monotonic()
    frames = frames_after(src, 8, timeout=3.0)
    rate = len(frames) / (time.monotonic() - t0)
    assert emu.settings.mode == "query"
    assert int(emu.stats()["frame_requests"]) >= 8
    assert 8.0 * 0.65 <= rate <= 8.0 * 1.35
    assert src.stats()["stalls"] == 0


@pytest.mark.slow
def test_rate_shortfall_is_flagged_not_fatal(make_pair: Callable[..., Pair], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="station.thermal")
    emu, src = make_pair({"subpage_refresh": True})  # firmware whose "8 Hz" means sub-pages
    collect(src, lambda: float(src.stats()["observed_hz"]) > 0, 4.0, "the rate measurement")
    st = src.stats()
    assert st["rate_ok"] is False and 3.0 <= float(st["observed_hz"]) <= 5.0
    assert st["state"] == "connected"
    assert any("thermal rate off" in r.getMessage() for r in caplog.records)


def test_start_fails_clearly_without_a_module() -> None:
    src = GyMcu90640Source("/dev/does-not-exist-thermal", baud=115200)
    with pytest.raises(RuntimeError, match="cannot open"):
        src.start()
    assert src.stats()["state"] == "stopped"


def test_port_is_locked_exclusively(make_pair: Callable[..., Pair]) -> None:
    emu, _src = make_pair()
    with pytest.raises(serial.SerialException):
        serial.Serial(emu.port, 460800, exclusive=True)


# ---------------------------------------------------------------------------------------------
# The emulator on its own, driven with plain pyserial
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def emulator() -> Iterator[Callable[..., GyMcu90640Emulator]]:
    made: list[GyMcu90640Emulator] = []

    def make(**kw: Any) -> GyMcu90640Emulator:
        emu = GyMcu90640Emulator(CountingScene(), seed=2, **kw)
        emu.start()
        made.append(emu)
        return emu

    yield make
    for emu in made:
        emu.stop()


def read_frames(ser: serial.Serial, seconds: float) -> tuple[list[tuple[float, DecodedFrame]], FrameParser]:
    parser = FrameParser()
    out: list[tuple[float, DecodedFrame]] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        data = ser.read(ser.in_waiting or 1)
        now = time.monotonic()
        out += [(now, x) for x in parser.feed(data) if isinstance(x, DecodedFrame)]
    return out, parser


def test_emulator_paces_frames_at_the_link_limit(emulator: Callable[..., GyMcu90640Emulator]) -> None:
    emu = emulator(baud=115200, refresh_hz=8.0)  # 8 Hz does not fit 115200: back-to-back frames
    with serial.Serial(emu.port, 115200, timeout=0.05) as ser:
        frames, _ = read_frames(ser, 1.6)
    ts = [t for t, _ in frames[1:]]
    rate = (len(ts) - 1) / (ts[-1] - ts[0])
    assert rate == pytest.approx(1.0 / frame_time_s(115200), rel=0.15)


def test_emulator_query_mode_sends_one_frame_per_request(emulator: Callable[..., GyMcu90640Emulator]) -> None:
    emu = emulator(baud=460800)
    with serial.Serial(emu.port, 460800, timeout=0.05) as ser:
        ser.write(cmd_query_mode())
        time.sleep(0.2)  # the module reacts after ~100 ms, a frame may be in flight
        ser.reset_input_buffer()
        quiet, _ = read_frames(ser, 0.3)
        assert quiet == []
        ser.write(cmd_query_mode())
        got, _ = read_frames(ser, 0.4)
        assert len(got) == 1
    assert emu.settings.mode == "query"


def test_emulator_ignores_invalid_commands(emulator: Callable[..., GyMcu90640Emulator]) -> None:
    emu = emulator(baud=460800, refresh_hz=4.0)
    with serial.Serial(emu.port, 460800, timeout=0.05) as ser:
        ser.write(bytes.fromhex("A52502CB"))  # the vendor SDK's "1 Hz": wrong sum byte
        ser.write(bytes.fromhex("A52509D3"))  # right sum, no such refresh setting
        ser.write(b"\x00\x13hello")
        ser.write(cmd_set_refresh(2))
        # Commands are taken in order: once the last (valid) one is applied, the others were judged.
        wait_until(lambda: emu.settings.refresh_hz == 2.0, 5, "the valid command applied")
    st = emu.stats()
    assert int(st["commands_invalid"]) == 2 and st["commands_ok"] == 1
    assert emu.settings.refresh_hz == 2.0


def test_emulator_save_writes_flash_and_replug_boots_from_it(emulator: Callable[..., GyMcu90640Emulator], tmp_path: Any) -> None:
    flash = os.path.join(tmp_path, "flash.json")
    emu = emulator(baud=460800, refresh_hz=4.0, flash_path=flash)
    with serial.Serial(emu.port, 460800, timeout=0.05) as ser:
        ser.write(cmd_set_emissivity(0.9))
        time.sleep(0.05)  # one command at a time, as a host sends them
        ser.write(cmd_set_refresh(1))
        time.sleep(0.05)  # one command at a time, as a host sends them
        ser.write(cmd_save())
        wait_until(lambda: os.path.exists(flash), 5, "the flash file written")  # written whole (os.replace)
    with open(flash, encoding="utf-8") as fh:
        saved = json.load(fh)
    assert saved == {"baud": 460800, "refresh_hz": 1.0, "mode": "continuous", "emissivity": 0.9}
    emu.replug()
    assert emu.settings.emissivity == 0.9 and emu.settings.refresh_hz == 1.0
    fresh = emulator(baud=115200, refresh_hz=8.0, flash_path=flash)
    assert fresh.settings.baud == 460800 and fresh.settings.refresh_hz == 1.0


def test_emulator_baud_change_gives_noise_until_the_host_follows(emulator: Callable[..., GyMcu90640Emulator]) -> None:
    emu = emulator(baud=115200, refresh_hz=8.0)
    with serial.Serial(emu.port, 115200, timeout=0.05) as ser:
        ser.write(cmd_set_baud(460800))
        time.sleep(0.35)  # the module switches after ~100 ms and a frame at the old rate may still be in flight
        ser.reset_input_buffer()
        noise, parser = read_frames(ser, 0.4)
        assert noise == [] and parser.resync_bytes > 1000
        ser.baudrate = 460800
        ser.reset_input_buffer()
        good, _ = read_frames(ser, 0.5)
        assert len(good) >= 2
    assert emu.settings.baud == 460800 and int(emu.stats()["noise_frames"]) >= 1


def test_emulator_unplug_breaks_the_hosts_read(emulator: Callable[..., GyMcu90640Emulator]) -> None:
    emu = emulator(baud=460800)
    ser = serial.Serial(emu.port, 460800, timeout=0.05)
    try:
        emu.unplug()
        with pytest.raises((serial.SerialException, OSError)):  # EIO from in_waiting or read
            for _ in range(20):
                ser.read(ser.in_waiting or 1)
    finally:
        ser.close()
    emu.stop()
    emu.stop()  # idempotent


# ---------------------------------------------------------------------------------------------
# Scene renderer
# ---------------------------------------------------------------------------------------------


def standing_director(core_c: float = 37.0, distance_m: float = 0.55) -> tuple[SceneDirector, float]:
    """A director whose only person has entered at t=1 and stands at ``distance_m`` from t=2.2."""
    timing = SceneTiming(stand_distance_m=distance_m)
    d = SceneDirector([ScenePerson(0, core_c, None, None)], timing, clock=lambda: 0.0)
    d.state(1.0)  # the person steps into the lane
    return d, 1.0 + timing.approach_s + 1.0


def hottest_3x3_in_face(img: np.ndarray, box: Any) -> float:
    best = -1e9
    for r in range(1, img.shape[0] - 1):
        for c in range(1, img.shape[1] - 1):
            if box.x1 <= c + 0.5 <= box.x2 and box.y1 <= r + 0.5 <= box.y2:
                best = max(best, float(img[r - 1 : r + 2, c - 1 : c + 2].mean()))
    return best


def test_renderer_empty_lane_is_room_temperature() -> None:
    d = SceneDirector([], SceneTiming(), clock=lambda: 0.0)
    r = ThermalSceneRenderer(d, room_c=21.0, noise_c=0.1, seed=3)
    img, die = r(5.0)
    assert img.shape == (24, 32) and img.dtype == np.float32
    assert abs(float(img.mean()) - 21.0) < 0.05 and float(img.max() - img.min()) < 1.2
    assert die == 29.0
    centi = img.astype(np.float64) * 100
    np.testing.assert_allclose(centi, np.round(centi), atol=1e-3)  # quantised to 0.01 °C
    assert r.ground_truth(5.0)["people"] == 0


def test_renderer_hot_spot_reads_core_minus_1_35_at_the_standing_distance() -> None:
    d, t = standing_director(37.0)
    r = ThermalSceneRenderer(d, noise_c=0.0)
    gt = r.ground_truth(t)
    assert gt["phase"] == Phase.STANDING.value and gt["core_c"] == 37.0 and gt["distance_m"] == 0.55
    img, _ = r(t)
    box = gt["face_box_thermal"]
    assert 37.0 - hottest_3x3_in_face(img, box) == pytest.approx(1.35, abs=0.02)
    # the hottest pixel is the periorbital band, inside the face box; clothing is room + 5
    row, col = np.unravel_index(int(np.argmax(img)), img.shape)
    assert box.x1 <= col + 0.5 <= box.x2 and box.y1 <= row + 0.5 <= box.y1 + 0.5 * box.height
    assert img[-1, 16] == pytest.approx(27.0, abs=0.01)


def test_renderer_face_box_follows_the_shared_geometry() -> None:
    d, t = standing_director()
    r = ThermalSceneRenderer(d, noise_c=0.0)
    visible = d.state(t).face_box
    assert visible is not None
    h = d.geometry.visible_to_thermal()
    x1, y1, _ = h @ np.array([visible.x1, visible.y1, 1.0])
    x2, y2, _ = h @ np.array([visible.x2, visible.y2, 1.0])
    box = r.ground_truth(t)["face_box_thermal"]
    assert (box.x1, box.y1, box.x2, box.y2) == pytest.approx((x1, y1, x2, y2))


def test_renderer_fill_factor_loss_grows_with_distance() -> None:
    readings = []
    for dist in (0.3, 0.55, 1.0):
        d, t = standing_director(37.0, dist)
        r = ThermalSceneRenderer(d, noise_c=0.0)
        img, _ = r(t)
        readings.append(hottest_3x3_in_face(img, r.ground_truth(t)["face_box_thermal"]))
    assert readings[0] > readings[1] > readings[2]


def test_renderer_through_emulator_and_driver_keeps_the_face_in_place() -> None:
    timing = SceneTiming(approach_s=0.05, gap_s=0.0, max_dwell_s=30.0)
    director = SceneDirector([ScenePerson(0, 38.0, None, None)], timing)
    renderer = ThermalSceneRenderer(director, noise_c=0.05, seed=4)
    emu = GyMcu90640Emulator(renderer, baud=460800, refresh_hz=8.0, seed=5)
    src = GyMcu90640Source(emu.port, baud=460800, refresh_hz=8.0)
    emu.start()
    try:
        src.start()
        frame = None
        for _ in range(20):
            frame = src.read_frame(1.0)
            if frame is not None and renderer.ground_truth(frame.t)["phase"] == "standing":
                break
        assert frame is not None
        box = renderer.ground_truth(frame.t)["face_box_thermal"]
        row, col = np.unravel_index(int(np.argmax(frame.pixels_c)), frame.pixels_c.shape)
        assert box.x1 <= col + 0.5 <= box.x2 and box.y1 <= row + 0.5 <= box.y2
        assert 38.0 - float(frame.pixels_c.max()) < 1.5
        assert frame.die_c == pytest.approx(30.0)
    finally:
        src.stop()
        emu.stop()
