"""Faults the other thermal tests leave out: joining mid-frame, duplicates, interleaved replies, and the
one error the module's sum-16 cannot see (stated, not hidden). Real bytes through the real parser."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.thermal.gy_protocol import (
    FRAME_LEN,
    DecodedFrame,
    FrameParser,
    ParsedReply,
    checksum,
    emissivity_reply,
    encode_frame,
)


def frame(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return encode_frame(rng.integers(1500, 4000, 768).astype(np.int16), int(rng.integers(2500, 3500)))


@settings(max_examples=80, deadline=None)
@given(start=st.integers(1, FRAME_LEN - 1), seed=st.integers(0, 2**31))
def test_joining_the_stream_mid_frame_costs_exactly_the_partial_frame(start, seed):
    a, b, c = frame(seed), frame(seed + 1), frame(seed + 2)
    p = FrameParser()
    got = [x.raw for x in p.feed((a + b + c)[start:]) if isinstance(x, DecodedFrame)]
    assert got == [b, c]
    # the tail of `a` is thrown away (or, if it happens to hold the sync bytes, fails its checksum)
    assert p.resync_bytes == FRAME_LEN - start
    assert p.frames_ok == 2


def test_a_duplicated_frame_is_delivered_twice_and_is_still_the_true_frame():
    a, b = frame(1), frame(2)
    p = FrameParser()
    got = [x.raw for x in p.feed(a + a + b) if isinstance(x, DecodedFrame)]
    assert got == [a, a, b] and p.checksum_errors == 0 and p.resync_bytes == 0


def test_an_emissivity_reply_inside_the_frame_stream_is_taken_out_whole():
    a, b = frame(3), frame(4)
    reply = emissivity_reply(95)
    p = FrameParser()
    items = p.feed(a + reply + b)
    assert [type(x) for x in items] == [DecodedFrame, ParsedReply, DecodedFrame]
    assert items[1].value == pytest.approx(0.95) and p.resync_bytes == 0


def test_a_small_compensating_error_is_invisible_to_sum16():
    """Known limit, pinned so it stays documented: +1 count on one pixel and −1 on another keeps the
    checksum, and both values stay plausible, so no parser can reject it. It moves two pixels by
    0.01 °C — far below the ±1 °C class of the sensor; large compensating errors are caught by the
    plausibility limits (test_thermal_protocol)."""
    raw = bytearray(frame(5))
    for k, d in ((10, 1), (11, -1)):
        off = 4 + 2 * k
        v = int.from_bytes(raw[off : off + 2], "little", signed=True) + d
        raw[off : off + 2] = v.to_bytes(2, "little", signed=True)
    assert checksum(raw) == int.from_bytes(raw[-2:], "little")
    (f,) = FrameParser().feed(bytes(raw))
    (g,) = FrameParser().feed(frame(5))
    assert float(np.abs(f.pixels_c - g.pixels_c).max()) == pytest.approx(0.01, abs=1e-4)


@pytest.mark.slow  # about a second: kept out of the fast loop
def test_the_emulator_writes_a_ground_truth_sidecar_line_per_frame(tmp_path):
    """Frames the driver delivers can be matched to the scene truth they were rendered from."""
    import json

    from drivers.thermal.gy_mcu90640 import GyMcu90640Source
    from sim.gy_mcu90640_emulator import GyMcu90640Emulator
    from sim.scene import SceneDirector, ScenePerson, SceneTiming
    from sim.thermal_render import ThermalSceneRenderer

    director = SceneDirector([ScenePerson(0, 38.0, None, None)], SceneTiming(approach_s=0.05, gap_s=0.0, max_dwell_s=30.0))
    renderer = ThermalSceneRenderer(director, noise_c=0.05, seed=4)
    sidecar = tmp_path / "truth.jsonl"
    emu = GyMcu90640Emulator(renderer, baud=460800, refresh_hz=8.0, seed=5, truth=renderer.ground_truth, sidecar_path=str(sidecar))
    src = GyMcu90640Source(emu.port, baud=460800, refresh_hz=8.0)
    emu.start()
    try:
        src.start()
        frames = [f for f in (src.read_frame(1.0) for _ in range(4)) if f is not None]
        emu.flip_bit(bit=2)  # a damaged frame is marked in the sidecar too
        deadline = 30
        while emu.stats()["flip_bit"] < 1 and deadline:
            src.read_frame(0.2)
            deadline -= 1
    finally:
        src.stop()
        emu.stop()
    rows = [json.loads(line) for line in sidecar.read_text().splitlines()]
    assert len(frames) == 4 and len(rows) >= 5
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    assert any(r["fault"] == "flip_bit" for r in rows)
    standing = [r for r in rows if r["phase"] == "standing"]
    assert standing and all(r["core_c"] == 38.0 and r["people"] == 1 and len(r["face_box_thermal"]) == 4 for r in standing)
    assert all(r["die_c"] == 30.0 for r in rows)
