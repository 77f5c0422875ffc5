"""The visible camera sources: the demo's rendered scene camera and the OpenCV camera adapter.

The scene camera is checked with the real detectors, because its whole point is that the station's
UltraFace and ZBar see in the rendered frames what the scene director says is there.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from drivers.camera.opencv_camera import OpenCVCamera
from drivers.codes.pyzbar_reader import PyzbarReader
from drivers.detect.ultraface import UltraFaceDetector
from sim.scene import Phase, SceneDirector, ScenePerson, SceneState, SceneTiming
from sim.scene_camera import FACE_PHOTO, SceneCamera, SceneRenderer
from station.domain.model import CodeColour
from station.models import path_for
from station.ports import FrameSource
from tests.support.waiting import wait_until


class FakeClock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def payload(i: int, colour: str) -> bytes:
    return f'{{"v":1,"id":"demo-{i:04d}","colour":"{colour}","exp":1893456000,"sig":"q83vEjRWeJA="}}'.encode()


PEOPLE = [
    ScenePerson(0, 36.8, CodeColour.GREEN, payload(0, "green"), "green"),
    ScenePerson(1, 36.9, CodeColour.YELLOW, payload(1, "yellow"), "yellow"),
    ScenePerson(2, 36.7, CodeColour.RED, payload(2, "red"), "red"),
    ScenePerson(3, 36.8, None, None, "no code"),
]
TIMING = SceneTiming(approach_s=1.2, start_distance_m=2.5, stand_distance_m=0.55, code_delay_s=0.3, gap_s=1.0)


@pytest.fixture(scope="module")
def face_detector() -> UltraFaceDetector:
    return UltraFaceDetector(path_for("ultraface-rfb-320"))


@pytest.fixture(scope="module")
def code_reader() -> PyzbarReader:
    return PyzbarReader()


@pytest.fixture(scope="module")
def renderer() -> SceneRenderer:
    return SceneRenderer(seed=11)


def states_for(person_index: int) -> dict[str, SceneState]:
    """The scene's states for one person: entering at 2.5 m, standing before and while showing a code."""
    clock = FakeClock(0.0)
    director = SceneDirector([PEOPLE[person_index]], TIMING, clock=clock)
    enter = TIMING.gap_s / 2.0
    return {
        "empty": director.state(enter / 2.0),
        "entering": director.state(enter),
        "standing_no_code": director.state(enter + TIMING.approach_s + 0.1),
        "showing": director.state(enter + TIMING.approach_s + TIMING.code_delay_s + 0.2),
    }


# -- rendering seen by the real detectors ----------------------------------------------------------
@pytest.mark.parametrize("index", range(len(PEOPLE)))
def test_standing_person_face_is_where_the_scene_says(renderer: SceneRenderer, face_detector: UltraFaceDetector, index: int) -> None:
    for key in ("standing_no_code", "showing"):
        state = states_for(index)[key]
        assert state.phase is Phase.STANDING and state.face_box is not None
        frame = renderer.render(state)
        assert frame.shape == (480, 640, 3) and frame.dtype == np.uint8
        faces = face_detector.detect(frame)
        assert len(faces) == 1, f"{key}: {[f.box.as_list() for f in faces]}"
        assert faces[0].box.iou(state.face_box) > 0.5


@pytest.mark.parametrize("index", [0, 1])
def test_approaching_person_at_2_5_m_shows_a_smaller_face(renderer: SceneRenderer, face_detector: UltraFaceDetector, index: int) -> None:
    states = states_for(index)
    far, near = states["entering"], states["showing"]
    assert far.phase is Phase.APPROACHING and far.distance_m == pytest.approx(2.5)
    assert far.face_box is not None and near.face_box is not None
    far_faces = face_detector.detect(renderer.render(far))
    near_faces = face_detector.detect(renderer.render(near))
    assert len(far_faces) == 1 and len(near_faces) == 1
    assert far_faces[0].box.iou(far.face_box) > 0.5
    assert far_faces[0].box.area < near_faces[0].box.area / 10.0


@pytest.mark.parametrize("index", [0, 1, 2])
def test_phone_code_decodes_for_each_colour(renderer: SceneRenderer, code_reader: PyzbarReader, index: int) -> None:
    state = states_for(index)["showing"]
    assert state.showing_code
    person = state.person
    assert person is not None and person.code_colour is not None
    codes = code_reader.decode(renderer.render(state))
    assert [c.payload for c in codes] == [person.code_payload]
    # The phone is held beside the face, not in front of it.
    assert codes[0].box is not None and state.face_box is not None
    assert codes[0].box.iou(state.face_box) < 0.05


def test_code_modules_are_drawn_in_the_code_colour(renderer: SceneRenderer, code_reader: PyzbarReader) -> None:
    expected_dominant = {CodeColour.GREEN: 1, CodeColour.YELLOW: 2, CodeColour.RED: 2}  # BGR channel
    for index in (0, 1, 2):
        state = states_for(index)["showing"]
        frame = renderer.render(state)
        box = code_reader.decode(frame)[0].box
        assert box is not None and state.person is not None and state.person.code_colour is not None
        patch = frame[int(box.y1) : int(box.y2), int(box.x1) : int(box.x2)].reshape(-1, 3).astype(int)
        dark = patch[patch.sum(axis=1) < 500]  # the modules, not the white between them
        assert len(dark) > 100
        assert int(np.argmax(dark.mean(axis=0))) == expected_dominant[state.person.code_colour]


@pytest.mark.parametrize("index", range(len(PEOPLE)))
def test_no_code_unless_showing(renderer: SceneRenderer, code_reader: PyzbarReader, index: int) -> None:
    states = states_for(index)
    for key in ("entering", "standing_no_code"):
        assert not states[key].showing_code
        assert code_reader.decode(renderer.render(states[key])) == []
    if PEOPLE[index].code_payload is None:
        assert not states["showing"].showing_code
        assert code_reader.decode(renderer.render(states["showing"])) == []


def test_empty_lane_has_no_face_and_no_code(renderer: SceneRenderer, face_detector: UltraFaceDetector, code_reader: PyzbarReader) -> None:
    state = states_for(0)["empty"]
    assert state.phase is Phase.EMPTY
    for _ in range(3):  # different sensor noise each frame
        frame = renderer.render(state)
        assert face_detector.detect(frame) == []
        assert code_reader.decode(frame) == []


def test_people_look_different_and_frames_are_noisy(renderer: SceneRenderer) -> None:
    a = renderer.render(states_for(0)["standing_no_code"]).astype(int)
    b = renderer.render(states_for(1)["standing_no_code"]).astype(int)
    assert np.abs(a - b).mean() > 5.0  # mirrored photo, other clothes
    empty = states_for(0)["empty"]
    e1, e2 = renderer.render(empty).astype(int), renderer.render(empty).astype(int)
    diff = np.abs(e1 - e2)
    assert 0.3 < diff.mean() < 4.0  # sensor noise, not a different picture


def test_face_photo_asset_is_shipped() -> None:
    assert FACE_PHOTO.is_file()
    assert (FACE_PHOTO.parent / "ATTRIBUTION.md").is_file()
    img = cv2.imread(str(FACE_PHOTO))
    assert img is not None and img.shape == (320, 256, 3)


# -- real-time camera behaviour --------------------------------------------------------------------
def short_scene() -> SceneDirector:
    timing = SceneTiming(approach_s=0.2, code_delay_s=0.0, max_dwell_s=0.3, gap_s=0.2)
    return SceneDirector(PEOPLE[:1], timing)


def test_scene_camera_paces_frames_and_ends_with_the_scene() -> None:
    cam = SceneCamera(short_scene(), fps=20.0, seed=3)
    assert isinstance(cam, FrameSource)
    assert cam.name == "scene-camera"
    cam.start()
    frames = []
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        f = cam.read(timeout=0.5)
        if f is None:
            break
        frames.append(f)
    cam.stop()
    assert 4 <= len(frames) <= 20  # about 0.8 s of scene at 20 fps, fewer if the machine is busy
    seqs = [f.seq for f in frames]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    gaps = np.diff([f.t for f in frames])
    assert np.all(gaps >= 0.05 - 1e-6)
    stats = cam.stats()
    assert stats["frames"] == len(frames)
    assert stats["state"] == "finished"
    assert frames[0].image.shape == (480, 640, 3)


def test_scene_camera_counts_frames_a_slow_consumer_missed() -> None:
    director = SceneDirector(PEOPLE[:1], SceneTiming(max_dwell_s=30.0))
    cam = SceneCamera(director, fps=30.0, seed=4)
    cam.start()
    first = cam.read(timeout=1.0)
    time.sleep(0.35)  # about ten frame periods the consumer does not read: the passage of time is the test
    second = cam.read(timeout=1.0)
    cam.stop()
    assert first is not None and second is not None
    dropped = cam.stats()["frames_dropped"]
    assert second.seq - first.seq - 1 == dropped
    assert 5 <= dropped <= 30


def test_scene_camera_read_times_out_and_stop_unblocks() -> None:
    cam = SceneCamera(SceneDirector(PEOPLE[:1], SceneTiming(max_dwell_s=30.0)), fps=0.5, seed=5)
    with pytest.raises(RuntimeError):
        cam.read(timeout=0.1)
    cam.start()
    assert cam.read(timeout=0.5) is not None  # the first frame is due at start
    t0 = time.monotonic()
    assert cam.read(timeout=0.2) is None  # the next one is 2 s away
    assert time.monotonic() - t0 < 1.0
    result: list[object] = []
    reader = threading.Thread(target=lambda: result.append(cam.read(timeout=5.0)))
    reader.start()
    time.sleep(0.1)  # let the reader block in read() (nothing to observe from outside): stop() must wake it
    cam.stop()
    reader.join(timeout=2.0)
    assert not reader.is_alive() and result == [None]
    assert cam.read(timeout=0.1) is None  # a consumer racing with stop() gets None, not an error


# -- OpenCV camera over a video file ---------------------------------------------------------------
def write_clip(path: Path, n: int = 12, fps: float = 30.0) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (640, 480))
    assert writer.isOpened()
    for i in range(n):
        img = np.full((480, 640, 3), 40, np.uint8)
        cv2.putText(img, str(i), (260, 280), cv2.FONT_HERSHEY_SIMPLEX, 4, (255, 255, 255), 8)
        writer.write(img)
    writer.release()


@pytest.mark.slow  # about a second: kept out of the fast loop
def test_opencv_camera_reads_a_clip_and_reopens_at_its_end(tmp_path: Path) -> None:
    clip = tmp_path / "clip.avi"
    write_clip(clip, n=12, fps=30.0)
    cam = OpenCVCamera(str(clip), fps=30, backoff_s=(0.05, 0.2))
    assert isinstance(cam, FrameSource)
    assert cam.realtime  # a file is paced like a camera
    cam.start()
    frames = []
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline and (len(frames) < 20 or cam.stats()["reopens"] < 2):
        f = cam.read(timeout=1.0)
        if f is not None:
            frames.append(f)
    stats = dict(cam.stats())
    cam.stop()
    assert len(frames) >= 20  # more than one pass through the 12-frame clip
    assert frames[0].image.shape == (480, 640, 3)
    assert [f.seq for f in frames] == sorted(f.seq for f in frames)
    assert stats["reopens"] >= 2 and stats["read_failures"] >= 1  # end of stream, then reopened
    assert stats["width"] == 640 and stats["height"] == 480
    # Every captured frame was delivered, overwritten (dropped), or is still waiting in the slot.
    assert 0 <= stats["frames"] - stats["frames_delivered"] - stats["frames_dropped"] <= 1
    assert cam.stats()["state"] == "stopped"


def test_opencv_camera_keeps_only_the_latest_frame(tmp_path: Path) -> None:
    clip = tmp_path / "clip.avi"
    write_clip(clip, n=30)
    cam = OpenCVCamera(str(clip), realtime=False, backoff_s=(5.0, 5.0))
    cam.start()
    wait_until(lambda: cam.stats()["frames"] == 30, 10, "the thread to read all 30 frames")  # far faster than real time
    latest = cam.read(timeout=1.0)
    again = cam.read(timeout=0.1)
    stats = cam.stats()
    cam.stop()
    assert latest is not None and again is None  # one slot: the unread ones were overwritten
    assert stats["frames"] == 30
    assert stats["frames_dropped"] == 29
    assert latest.seq == 29


def test_opencv_camera_missing_device_retries_with_backoff(tmp_path: Path) -> None:
    cam = OpenCVCamera(str(tmp_path / "no-such-camera.avi"), backoff_s=(0.05, 0.1))
    cam.start()
    assert cam.read(timeout=0.5) is None
    stats = cam.stats()
    cam.stop()
    assert stats["open_failures"] >= 3
    assert stats["reopens"] >= 2
    assert stats["state"] in ("reopening", "opening")
    assert stats["frames"] == 0
