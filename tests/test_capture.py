"""Best-frame capture: sharpness measured on real face crops, the lane's choice, the crop handed out."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from station.domain.model import FaceObservation
from station.domain.screening import ScreeningLane, ScreeningPolicy, ScreeningSettings
from station.domain.thermal import ThermalCalibration
from station.lane.capture import CaptureKeeper

FACES_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "images" / "faces"
pytestmark = pytest.mark.skipif(not FACES_DIR.is_dir(), reason="shared test photos not found")


@pytest.fixture(scope="module")
def photo_and_face():  # type: ignore[no-untyped-def]
    from drivers.detect.ultraface import UltraFaceDetector
    from station.models import path_for

    img = cv2.imread(str(FACES_DIR / "ultraface-5.jpg"))
    (face,) = UltraFaceDetector(path_for("ultraface-rfb-320")).detect(img)
    return img, face


def test_blurred_frames_measure_less_sharp_and_crops_are_kept(photo_and_face) -> None:  # type: ignore[no-untyped-def]
    img, face = photo_and_face
    keeper = CaptureKeeper(frames=3)
    (sharp,) = keeper.measure(1, img, [face])
    (blurred,) = keeper.measure(2, cv2.GaussianBlur(img, (0, 0), 4), [face])
    assert sharp > 3 * blurred > 0
    crop = keeper.crop_for({"frame_seq": 1, "box": face.box.as_list()})
    assert crop is not None and crop.shape[0] == pytest.approx(face.box.height, abs=2)
    assert keeper.crop_for({"frame_seq": 1, "box": [0, 0, 5, 5]}) is None  # not that face
    for seq in (3, 4, 5):
        keeper.measure(seq, img, [face])
    assert keeper.crop_for({"frame_seq": 1, "box": face.box.as_list()}) is None  # older than 3 frames: dropped


def test_the_lane_names_the_sharpest_large_frame_as_the_capture(photo_and_face) -> None:  # type: ignore[no-untyped-def]
    img, face = photo_and_face
    keeper = CaptureKeeper()
    lane = ScreeningLane(ScreeningSettings(min_face_px=100), ScreeningPolicy(), ThermalCalibration(np.eye(3), offset_c=1.0))
    blur = {0: 6, 1: 4, 2: 0, 3: 5, 4: 8}  # frame 2 is the sharp one
    for seq, sigma in blur.items():
        frame = cv2.GaussianBlur(img, (0, 0), sigma) if sigma else img
        sharp = keeper.measure(seq, frame, [face])
        t = seq * 0.1
        lane.on_faces(FaceObservation(seq, t, t + 0.01, (face,), (img.shape[1], img.shape[0]), 5.0, sharp))
    assert lane._current is not None and lane._current.capture is not None
    assert lane._current.capture["frame_seq"] == 2
    crop = keeper.crop_for(lane._current.capture)
    assert crop is not None and np.array_equal(
        crop, img[int(face.box.y1) : int(round(face.box.y2)), int(face.box.x1) : int(round(face.box.x2))]
    )


@pytest.mark.slow
def test_demo_decisions_carry_the_capture_crop(tmp_path: Path) -> None:
    """Through the real pipeline (demo devices): each decision names its best frame and hands the crop out."""
    from sim.demo import DemoRun
    from station.config import StationConfig

    run = DemoRun(StationConfig(), people=2, data_dir=tmp_path, fast=True)
    result = run.run(max_s=40)
    assert len(result.decided) == 2
    for _, d in result.decided:
        cap = d.event.face["capture"]
        assert cap is not None and cap["score"] > 0 and d.event.face["track_id"] is not None
        assert isinstance(d.capture, np.ndarray) and d.capture.shape[0] >= 100
        # Walking up, the face grows: entry. The fast demo's approach lasts 0.15 s (2 frames), so the
        # face may be first seen already at the gate with no travel to judge: then no direction.
        assert d.event.face["direction"] in ("entry", None)
    # Two people, two tracks.
    assert len({d.event.face["track_id"] for _, d in result.decided}) == 2
