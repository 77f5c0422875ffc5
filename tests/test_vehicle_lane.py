"""Vehicle lane: resident list, one event per vehicle (resident / outsider), entry vs exit counts."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from station.cli.stationctl import main
from station.domain.direction import DirectionCounter, LaneGeometry, passage
from station.domain.model import Box
from station.domain.tracking import FaceTracker
from station.domain.vehicles import OUTSIDER, RESIDENT, VehicleLane, normalise_plate
from station.store import residents
from tests.support.waiting import wait_until

PLATES_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "images" / "plates"


def read(text: str, x: float, conf: float = 0.9) -> dict:
    return {"text": text, "confidence": conf, "score": 0.95, "box": [x, 300.0, x + 120.0, 340.0]}


# -- one event per vehicle -----------------------------------------------------------------------


def test_outsider_vehicle_raised_once_after_agreeing_reads_and_never_an_alarm() -> None:
    lane = VehicleLane(lambda: {"浙A12345"}, min_reads=2)
    events = []
    # A car creeps forward for 10 frames; one read is wrong, one is too unsure to count.
    texts = ["皖K66666", "皖K66G66", "皖K66666", "皖K66666", "皖K66666"] + ["皖K66666"] * 5
    for i, text in enumerate(texts):
        events += lane.on_plates([read(text, 200 + 8 * i, conf=0.1 if i == 1 else 0.9)], i * 0.1)
    assert [(e.kind, e.plate, e.reads, e.alarm) for e in events] == [(OUTSIDER, "皖K66666", 2, False)]
    assert events[0].as_record()["type"] == "outsider_vehicle" and events[0].as_record()["alarm"] is False


def test_resident_vehicle_and_a_second_vehicle_get_their_own_events() -> None:
    listed = {"皖K66666"}
    lane = VehicleLane(lambda: listed, min_reads=2)
    events = []
    for i in range(3):
        events += lane.on_plates([read("皖K·66666", 200 + 5 * i)], i * 0.1)
    for i in range(3):  # the next car, 3 s later
        events += lane.on_plates([read("鲁L88888", 210 + 5 * i)], 3.0 + i * 0.1)
    assert [(e.kind, e.plate) for e in events] == [(RESIDENT, "皖K66666"), (OUTSIDER, "鲁L88888")]
    assert events[0].track_id != events[1].track_id


@pytest.mark.skipif(not PLATES_DIR.is_dir(), reason="shared test photos not found")
def test_real_reads_of_a_moving_car_give_one_outsider_event(tmp_path: Path) -> None:
    from drivers.detect.plates import OnnxPlateReader

    reader = OnnxPlateReader.from_models_dir()
    img = cv2.imread(str(PLATES_DIR / "zeusees-11.jpg"))
    listed = residents.ResidentFile(tmp_path / residents.FILE_NAME)
    lane = VehicleLane(listed, min_reads=2)
    events = []
    for i in range(4):  # the photo sliding into a 640×480 frame: a car rolling up
        frame = np.zeros((480, 640, 3), dtype=np.uint8)
        small = cv2.resize(img, None, fx=0.9, fy=0.9, interpolation=cv2.INTER_AREA)[:400, :560]
        frame[20 + 5 * i : 20 + 5 * i + small.shape[0], 10 * i : 10 * i + small.shape[1]] = small
        events += lane.on_plates(reader.read(frame), i * 0.1)
    assert [(e.kind, e.plate) for e in events] == [(OUTSIDER, "皖K66666")]


def test_normalise_plate() -> None:
    assert normalise_plate(" 浙a·12345 ") == "浙A12345" == normalise_plate("浙A-12345")


# -- the resident list file and stationctl plates --------------------------------------------------


def test_resident_file_add_remove_and_reload(tmp_path: Path) -> None:
    path = tmp_path / residents.FILE_NAME
    live = residents.ResidentFile(path)
    assert live() == frozenset()
    assert residents.add(path, "浙a 12345") and not residents.add(path, "浙A12345")
    assert live() == {"浙A12345"}
    with pytest.raises(residents.PlateTextError):
        residents.add(path, "hello world!")
    path.write_text(path.read_text() + "garbage!!\n京EA5331  # the bakery van\n", encoding="utf-8")
    assert residents.load(path) == ["浙A12345", "京EA5331"]  # the bad line is skipped (and logged)
    assert residents.remove(path, "浙A12345") and not residents.remove(path, "浙A12345")
    assert live() == {"京EA5331"}


def test_stationctl_plates_add_list_remove(tmp_path: Path) -> None:
    base = ["--config", "/nonexistent.toml", "--data-dir", str(tmp_path)]
    r = CliRunner().invoke(main, base + ["plates", "add", "浙A12345", "皖K66666"])
    assert r.exit_code == 0 and "浙A12345: added" in r.output
    r = CliRunner().invoke(main, base + ["plates", "add", "not a plate!"])
    assert r.exit_code == 2 and "is not a plate" in r.output
    r = CliRunner().invoke(main, base + ["plates", "list", "--json"])
    assert json.loads(r.output)["plates"] == ["浙A12345", "皖K66666"]
    r = CliRunner().invoke(main, base + ["plates", "remove", "浙A12345", "粤B00000"])
    assert r.exit_code == 1 and "浙A12345: removed" in r.output and "粤B00000: not listed" in r.output
    assert (tmp_path / "resident_plates.txt").read_text(encoding="utf-8").splitlines()[1:] == ["皖K66666"]


# -- direction ----------------------------------------------------------------------------------------


def _walk(tr: FaceTracker, counter: DirectionCounter, heights: list[float], x0: float = 320, t0: float = 0.0) -> list[tuple[int, str]]:
    out = []
    for i, h in enumerate(heights):
        b = Box(x0 - h * 0.4, 240 - h / 2, x0 + h * 0.4, 240 + h / 2)
        out += counter.update(tr.update([b], None, t0 + i * 0.1), (640, 480))
    return out


def test_walking_towards_the_camera_is_an_entry_away_is_an_exit_each_counted_once() -> None:
    tr, counter = FaceTracker(), DirectionCounter(LaneGeometry(by="size", entry="increasing", min_travel=0.25))
    assert _walk(tr, counter, [80 + 8 * i for i in range(20)]) == [(1, "entry")]
    assert _walk(tr, counter, [220 - 8 * i for i in range(15)], x0=330, t0=5.0) == [(2, "exit")]
    # Someone dithering at the gate (±10 %) is never counted.
    assert _walk(tr, counter, [150 + (10 if i % 2 else -10) for i in range(20)], x0=100, t0=10.0) == []
    assert counter.counts == {"entry": 1, "exit": 1}


def test_axis_geometry_and_reversed_entry() -> None:
    tr = FaceTracker()
    counter = DirectionCounter(LaneGeometry(by="x", entry="decreasing", min_travel=0.2))
    out = []
    for i in range(15):  # moving right by 12 px a frame: 168 px > 0.2 × 640 = 128 px
        out += counter.update(tr.update([Box(100 + 12 * i, 200, 180 + 12 * i, 300)], None, i * 0.1), (640, 480))
    assert out == [(1, "exit")] and counter.direction_of(1) == "exit"
    assert passage(tr.tracks[1], LaneGeometry(by="y"), (640, 480)) is None


def test_the_lane_counts_directions_of_its_tracks() -> None:
    from station.domain.model import FaceDetection, FaceObservation
    from station.domain.screening import ScreeningLane, ScreeningPolicy, ScreeningSettings
    from station.domain.thermal import ThermalCalibration

    lane = ScreeningLane(ScreeningSettings(), ScreeningPolicy(), ThermalCalibration(np.eye(3), offset_c=1.0))
    for i in range(20):
        h = 60 + 6 * i
        b = Box(320 - h * 0.4, 240 - h / 2, 320 + h * 0.4, 240 + h / 2)
        lane.on_faces(FaceObservation(i, i * 0.1, i * 0.1, (FaceDetection(b, 0.9),), (640, 480), 5.0))
    assert lane.directions.counts == {"entry": 1, "exit": 0}


# -- the plate thread and the station in vehicle mode ---------------------------------------------------


@pytest.mark.skipif(not PLATES_DIR.is_dir(), reason="shared test photos not found")
@pytest.mark.slow  # about a second: kept out of the fast loop
def test_plate_loop_reads_offered_frames_and_emits_one_event(tmp_path: Path) -> None:
    import time

    from drivers.detect.plates import OnnxPlateReader
    from station.domain.model import VisibleFrame
    from station.lane.vehicle_loop import PlateLoop

    path = tmp_path / residents.FILE_NAME
    residents.add(path, "皖K66666")
    loop = PlateLoop(OnnxPlateReader.from_models_dir(), VehicleLane(residents.ResidentFile(path), min_reads=2), max_rate_hz=50.0)
    heard = []
    loop.add_listener(heard.append)
    img = cv2.imread(str(PLATES_DIR / "zeusees-11.jpg"))
    loop.start()
    try:
        for seq in range(6):
            loop.offer(VisibleFrame(img, seq, seq * 0.1))
            time.sleep(0.15)  # one frame at a time: the slot keeps only the newest
        wait_until(lambda: heard, 10, "a vehicle decision")
    finally:
        loop.stop()
    assert [(e.kind, e.plate) for e in heard] == [(RESIDENT, "皖K66666")]
    stats = loop.stats()
    assert stats["reads"] >= 2 and stats["resident_vehicle"] == 1 and stats["last_event"]["alarm"] is False


@pytest.mark.slow
def test_station_in_vehicle_mode_runs_the_plate_thread(tmp_path: Path) -> None:
    """The real station (demo devices) with vehicle.mode = vehicle: plate reader loaded, frames read,
    and the person screening unaffected."""
    from sim.demo import DemoRun
    from station.config import StationConfig

    run = DemoRun(StationConfig.model_validate({"vehicle": {"mode": "vehicle"}}), people=1, data_dir=tmp_path, fast=True)
    box: dict = {}

    def on_decided(_person, _d) -> None:  # type: ignore[no-untyped-def]
        assert run.app is not None
        box["status"] = run.app.runtime_status()

    run.on_decided = on_decided
    result = run.run(max_s=30)
    assert [p.expected for p, _ in result.decided] == [d.event.decision.value for _, d in result.decided] and len(result.decided) == 1
    status = box["status"]
    assert status["plate_reader"] == "ok"
    assert status["vehicles"]["reads"] >= 1 and status["vehicles"].get("outsider_vehicle", 0) == 0  # the demo scene has no car
