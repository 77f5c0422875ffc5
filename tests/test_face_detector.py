"""UltraFace (and the Haar fallback) on the shared test photos.

Measured before writing the assertions (score threshold 0.7, NMS IoU 0.3): both the RFB-320 and
RFB-640 models find exactly the labelled number of faces on every photo, and still do at
thresholds 0.6 and 0.8, so exact counts are asserted. The weakest face is a masked one in the grid
of ten (score 0.87 with the 320 model).
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from drivers.detect.haar import HaarFaceDetector, HaarUnavailableError
from drivers.detect.ultraface import UltraFaceDetector, nms
from station.models import path_for
from station.ports import FaceDetector

SHARED = Path(__file__).resolve().parents[2] / "shared"
FACES_DIR = SHARED / "data" / "images" / "faces"

pytestmark = pytest.mark.skipif(not FACES_DIR.is_dir(), reason=f"shared test photos not found at {FACES_DIR}")


def _labels() -> list[tuple[str, int, str]]:
    if not FACES_DIR.is_dir():
        return []
    with (FACES_DIR / "labels.csv").open(newline="") as f:
        return [(row["file"], int(row["faces"]), row["note"]) for row in csv.DictReader(f)]


LABELS = _labels()
MODELS = {"320": ("ultraface-rfb-320", (320, 240)), "640": ("ultraface-rfb-640", (640, 480))}


@pytest.fixture(scope="module", params=sorted(MODELS))
def detector(request: pytest.FixtureRequest) -> UltraFaceDetector:
    name, size = MODELS[request.param]
    det = UltraFaceDetector(path_for(name), input_size=size)
    det.warm_up()
    return det


@pytest.fixture(scope="module")
def detector320() -> UltraFaceDetector:
    return UltraFaceDetector(path_for("ultraface-rfb-320"))


def _image(file: str) -> np.ndarray:
    img = cv2.imread(str(FACES_DIR / file), cv2.IMREAD_COLOR)
    assert img is not None, file
    return img


@pytest.mark.parametrize(("file", "expected", "note"), LABELS, ids=[row[0] for row in LABELS])
def test_finds_the_labelled_faces(detector: UltraFaceDetector, file: str, expected: int, note: str) -> None:
    img = _image(file)
    faces = detector.detect(img)
    assert len(faces) == expected, f"{file} ({note}): {[f.box.as_list() for f in faces]}"
    h, w = img.shape[:2]
    for f in faces:
        assert 0.0 <= f.box.x1 < f.box.x2 <= w
        assert 0.0 <= f.box.y1 < f.box.y2 <= h
        assert detector.score_threshold < f.score <= 1.0
    # Best first, and no two kept boxes overlap beyond the NMS threshold.
    assert [f.score for f in faces] == sorted((f.score for f in faces), reverse=True)
    for i, a in enumerate(faces):
        for b in faces[i + 1 :]:
            assert a.box.iou(b.box) <= detector.nms_iou + 1e-6


def test_masked_grid_all_ten_found(detector: UltraFaceDetector) -> None:
    faces = detector.detect(_image("ultraface-mask_img2.jpeg"))
    assert len(faces) == 10
    # Two rows of five: five face centres above the middle, five below.
    centres_y = sorted(f.box.centre[1] for f in faces)
    img_h = _image("ultraface-mask_img2.jpeg").shape[0]
    assert sum(1 for y in centres_y if y < img_h / 2) == 5


@pytest.mark.parametrize("fill", [0, 127, 255])
def test_blank_image_has_no_faces(detector: UltraFaceDetector, fill: int) -> None:
    assert detector.detect(np.full((480, 640, 3), fill, dtype=np.uint8)) == []


def test_noise_image_has_no_faces(detector: UltraFaceDetector) -> None:
    rng = np.random.default_rng(7)
    assert detector.detect(rng.integers(0, 256, size=(480, 640, 3), dtype=np.uint8)) == []


def test_grayscale_input_is_accepted(detector320: UltraFaceDetector) -> None:
    gray = cv2.cvtColor(_image("ultraface-13.jpg"), cv2.COLOR_BGR2GRAY)
    assert len(detector320.detect(gray)) == 2


def test_boxes_follow_the_frame_scale(detector320: UltraFaceDetector) -> None:
    img = _image("ultraface-5.jpg")
    big = detector320.detect(img)
    small = detector320.detect(cv2.resize(img, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA))
    assert len(big) == len(small) == 1
    b, s = big[0].box, small[0].box
    assert abs(b.x1 / 2 - s.x1) < 8 and abs(b.x2 / 2 - s.x2) < 8
    assert abs(b.y1 / 2 - s.y1) < 8 and abs(b.y2 / 2 - s.y2) < 8


def test_protocol_and_warm_up(detector320: UltraFaceDetector) -> None:
    assert isinstance(detector320, FaceDetector)
    assert detector320.name == "ultraface-rfb-320"
    ms = detector320.warm_up()
    assert ms > 0.0


def test_wrong_input_size_for_the_model_is_refused() -> None:
    with pytest.raises(ValueError, match="expects input"):
        UltraFaceDetector(path_for("ultraface-rfb-320"), input_size=(640, 480))


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        UltraFaceDetector(tmp_path / "nope.onnx")


def test_non_image_is_refused(detector320: UltraFaceDetector) -> None:
    with pytest.raises(ValueError):
        detector320.detect(np.zeros((10, 10, 4), dtype=np.uint8))


# -- NMS -------------------------------------------------------------------------------------------
def test_nms_suppresses_overlaps_and_keeps_disjoint_boxes() -> None:
    boxes = np.array(
        [[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10.5]],
        dtype=np.float32,
    )
    scores = np.array([0.8, 0.9, 0.75, 0.7], dtype=np.float32)
    assert nms(boxes, scores, 0.3) == [1, 2]
    assert nms(boxes, scores, 0.99) == [1, 0, 2, 3]
    assert nms(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), 0.3) == []


def test_nms_handles_degenerate_boxes() -> None:
    boxes = np.array([[5, 5, 5, 5], [5, 5, 5, 5]], dtype=np.float32)
    assert nms(boxes, np.array([0.9, 0.8], np.float32), 0.3) == [0, 1]


# -- Haar fallback ---------------------------------------------------------------------------------
def test_haar_fallback_or_a_clear_reason() -> None:
    """OpenCV 5 wheels have no CascadeClassifier: the detector must say so at construction."""
    if not hasattr(cv2, "CascadeClassifier"):
        with pytest.raises(HaarUnavailableError, match="CascadeClassifier"):
            HaarFaceDetector()
        return
    det = HaarFaceDetector()
    assert isinstance(det, FaceDetector)
    assert det.detect(np.zeros((480, 640, 3), np.uint8)) == []
    faces = det.detect(_image("ultraface-13.jpg"))  # two frontal faces
    assert len(faces) == 2
    h, w = _image("ultraface-13.jpg").shape[:2]
    for f in faces:
        assert 0.0 <= f.box.x1 < f.box.x2 <= w and 0.0 <= f.box.y1 < f.box.y2 <= h


def test_haar_missing_cascade_file(tmp_path: Path) -> None:
    with pytest.raises(HaarUnavailableError):
        HaarFaceDetector(cascade_path=tmp_path / "missing.xml")
