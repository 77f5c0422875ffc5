"""The plate thread's change gate (station/lane/plate_gate.py) and the plate reader's low-memory mode.

Frames are drawn with the evaluation set's renderer (bench/plate_render.py): a road, a car with a
plate, camera noise on every frame. The replayed scene runs the real plate models.
"""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from station.config import StationConfig
from station.lane.plate_gate import PlateGate


def _noisy(base: np.ndarray, seed: int, sigma: float = 3.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(base.astype(np.int16) + rng.normal(0, sigma, base.shape).astype(np.int16), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def road() -> np.ndarray:
    from bench.plate_render import background

    return background(640, 480, np.random.default_rng(1))


def test_camera_noise_is_skipped_a_change_in_one_corner_is_read(road: np.ndarray) -> None:
    gate = PlateGate(diff_threshold=4.0, max_skip_s=0.5, max_skip_empty_s=2.0)
    assert gate.should_read(_noisy(road, 0), 0.0)  # nothing to compare with: read
    gate.read_done(0)
    assert not gate.should_read(_noisy(road, 1), 0.1)
    assert not gate.should_read(_noisy(road, 2), 0.2)
    moved = _noisy(road, 3)
    moved[400:470, 560:630] = (30, 30, 170)  # a car's corner comes into one cell, ~2 % of the picture
    assert gate.change(moved) >= 4.0
    assert gate.should_read(moved, 0.3)
    assert gate.stats() == {"gate_read": 2, "gate_skipped": 2}


def test_read_anyway_sooner_while_a_plate_is_in_view(road: np.ndarray) -> None:
    gate = PlateGate(diff_threshold=4.0, max_skip_s=0.5, max_skip_empty_s=2.0)
    assert gate.should_read(road, 0.0)
    gate.read_done(1)  # a plate was there: read again within half a second
    assert not gate.should_read(_noisy(road, 1, 1.0), 0.4)
    assert gate.should_read(_noisy(road, 2, 1.0), 0.55)
    gate.read_done(0)  # none now: the long skip applies
    assert not gate.should_read(_noisy(road, 3, 1.0), 2.0)
    assert gate.should_read(_noisy(road, 4, 1.0), 2.6)


def test_threshold_zero_reads_every_frame(road: np.ndarray) -> None:
    gate = PlateGate(diff_threshold=0.0)
    assert not gate.active
    assert all(gate.should_read(road, t * 0.1) for t in range(5))
    assert gate.stats() == {"gate_read": 5, "gate_skipped": 0}


@pytest.mark.parametrize(
    "frame",
    [
        np.zeros((0, 0, 3), np.uint8),
        np.zeros((1, 1, 3), np.uint8),
        np.zeros((480, 640), np.uint8),
        np.zeros((7, 5, 4), np.uint8),
        np.full((480, 640, 3), 1e9, np.float64),
        "not an image",
    ],
)
def test_any_frame_gives_a_verdict_never_an_exception(road: np.ndarray, frame: object) -> None:
    gate = PlateGate()
    gate.should_read(road, 0.0)
    assert gate.should_read(frame, 0.1) in (True, False)  # type: ignore[arg-type]
    assert gate.should_read(road, 0.2) in (True, False)  # a frame of another size after it is compared afresh


def test_gate_keys_are_checked() -> None:
    v = StationConfig().vehicle
    assert (v.plate_gate_diff, v.plate_gate_max_skip_s, v.plate_low_memory) == (4.0, 0.5, True)
    with pytest.raises(ValidationError, match="plate_gate_max_skip_s"):
        StationConfig.model_validate({"vehicle": {"plate_gate_max_skip_s": 2.0}})  # the lane forgets a plate after 2 s
    with pytest.raises(ValidationError, match="plate_gate_diff"):
        StationConfig.model_validate({"vehicle": {"plate_gate_diff": -1}})


@pytest.mark.slow
def test_replayed_car_is_one_vehicle_with_fewer_reads() -> None:
    """A car rolls up, stands 5 s and leaves: one event, its plate right, a third of the frames or more not read."""
    from bench.vehicle import vehicle_scene
    from drivers.detect.plates import OnnxPlateReader
    from station.domain.vehicles import VehicleLane

    reader = OnnxPlateReader.from_models_dir()
    lane = VehicleLane(lambda: [], min_reads=2)
    gate = PlateGate(diff_threshold=4.0, max_skip_s=0.5, max_skip_empty_s=2.0)
    events = []
    frames = vehicle_scene()
    for t, image, _ in frames:
        if gate.should_read(image, t):
            plates = reader.read(image)
            gate.read_done(len(plates))
            events += lane.on_plates(plates, t)
    # One vehicle, not two (its track outlived the skipped frames). The vote may settle on the far
    # plate's first reads, whose province the recogniser can misread (a letter fits a military
    # layout): the lane's vote, not the gate, decides which read wins.
    assert len(events) == 1 and events[0].kind == "outsider_vehicle"
    assert events[0].plate[1:] == "A12345"
    assert gate.skipped >= len(frames) // 3
    assert gate.read + gate.skipped == len(frames)


@pytest.mark.slow
def test_low_memory_reader_reads_the_same_and_trims() -> None:
    import cv2

    from bench.plates import SET_DIR, load_manifest
    from drivers.detect.plates import OnnxPlateReader, release_freed_memory

    file = next(r["file"] for r in load_manifest() if r["split"] == "tune" and r["source"] == "rendered")
    img = cv2.imread(str(SET_DIR / file), cv2.IMREAD_COLOR)
    low = OnnxPlateReader.from_models_dir(low_memory=True)
    arena = OnnxPlateReader.from_models_dir(low_memory=False)
    assert low.trim_memory and not arena.trim_memory
    assert [p["text"] for p in low.read(img)] == [p["text"] for p in arena.read(img)]
    assert release_freed_memory() is True  # glibc (Debian, Raspberry Pi OS)


@pytest.mark.slow
def test_tracked_read_looks_near_the_last_plates_and_falls_back_to_the_whole_frame() -> None:
    from bench.vehicle import vehicle_scene
    from drivers.detect.plates import OnnxPlateReader

    frames = vehicle_scene()
    standing = [image for _, image, n in frames[50:60] if n]  # the car at the window
    empty = frames[0][1]
    tracked = OnnxPlateReader.from_models_dir(track_s=1.0)
    whole = OnnxPlateReader.from_models_dir()
    first = tracked.read(standing[0])
    assert [p["text"] for p in first] == ["浙A12345"] and tracked.full_searches == 1
    second = tracked.read(standing[1])
    assert tracked.tracked_searches == 1 and tracked.full_searches == 1  # found again around its last place
    assert [p["text"] for p in second] == [p["text"] for p in whole.read(standing[1])]
    assert abs(second[0]["box"][0] - first[0]["box"][0]) < 10
    assert tracked.read(empty) == []  # the car is gone: nothing near, so the whole frame is searched
    assert tracked.full_searches == 2
    tracked.read(standing[2])
    assert tracked.full_searches == 3  # nothing was tracked from the empty frame


@pytest.mark.slow
def test_plate_loop_with_the_gate_skips_a_standing_car_and_still_decides_it() -> None:
    from bench.vehicle import vehicle_scene
    from drivers.detect.plates import OnnxPlateReader
    from station.domain.model import VisibleFrame
    from station.domain.vehicles import VehicleLane
    from station.lane.vehicle_loop import PlateLoop
    from tests.support.waiting import wait_until

    standing = [image for _, image, n in vehicle_scene()[50:60] if n]
    gate = PlateGate(diff_threshold=4.0, max_skip_s=0.5, max_skip_empty_s=2.0)
    loop = PlateLoop(OnnxPlateReader.from_models_dir(track_s=1.0), VehicleLane(lambda: [], min_reads=2), max_rate_hz=50.0, gate=gate)
    heard: list = []
    loop.add_listener(heard.append)
    loop.start()
    try:
        for seq, image in enumerate(standing[:8]):  # 0.0 … 0.7 s of the car standing at the window
            loop.offer(VisibleFrame(image, seq, seq * 0.1))
            wait_until(lambda seq=seq: gate.read + gate.skipped > seq, 10, f"frame {seq} gated")
        wait_until(lambda: heard, 10, "the vehicle's event")
    finally:
        loop.stop()
    stats = loop.stats()
    assert [e.plate for e in heard] == ["浙A12345"]
    assert stats["gate_read"] == 2 and stats["gate_skipped"] == 6  # t = 0 and the first frame >= 0.5 s later
    assert stats["reads"] == 2
