"""The accuracy figures quoted in the README come from these functions (bench/vision.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.vision import face_accuracy, face_scores, matched, plate_scores
from station.domain.model import Box

FACES_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "images" / "faces"


def test_face_scores_count_matching() -> None:
    s = face_scores([(2, 2), (7, 5), (7, 10)])
    assert s == {"labelled": 17, "found": 16, "recall": round(14 / 17, 3), "precision": round(14 / 16, 3)}


def test_matched_is_one_to_one() -> None:
    ref = [Box(0, 0, 10, 10), Box(20, 0, 30, 10)]
    assert matched([Box(1, 0, 11, 10), Box(0, 1, 10, 11)], ref) == 1  # two boxes on one face: one match
    assert matched([Box(1, 0, 11, 10), Box(21, 0, 31, 10), Box(50, 50, 60, 60)], ref) == 2


def test_plate_scores_ignore_unreadable_characters() -> None:
    s = plate_scores([("皖E28579", "?E28579"), ("49885", "皖1149885")])
    assert (s["exact"], s["chars"], s["char_errors"]) == (1, 6 + 8, 3)


@pytest.mark.skipif(not FACES_DIR.is_dir(), reason="shared test photos not found")
@pytest.mark.slow
def test_ultraface_finds_every_labelled_face_and_haar_does_not() -> None:
    from drivers.detect.haar import HaarFaceDetector
    from drivers.detect.ultraface import UltraFaceDetector
    from station.models import path_for

    ref = UltraFaceDetector(path_for("ultraface-rfb-640"), input_size=(640, 480))
    out = face_accuracy({"ultraface-rfb-320": UltraFaceDetector(path_for("ultraface-rfb-320")), "haar": HaarFaceDetector()}, reference=ref)
    u = out["ultraface-rfb-320"]
    assert (u["recall"], u["precision"]) == (1.0, 1.0)
    assert u["box_matched_to_reference"] == {"recall": 1.0, "precision": 1.0}
    h = out["haar"]
    assert h["per_image"]["ultraface-mask_img2.jpeg"] != "10/10"  # masks defeat the cascade
    assert h["box_matched_to_reference"]["recall"] < 0.95
