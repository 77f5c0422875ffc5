"""The second plate recogniser (HyperLPR's segmentation-free model) and the character-by-character join."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from bench.vision import char_distance
from drivers.detect import plate_second
from drivers.detect.plate_second import CHARSET, SegmentationFreeRecognizer, fuse, greedy_runs
from drivers.detect.plates import OnnxPlateReader, PlateDetection
from station.models import path_for


def _plate(text: str) -> np.ndarray:
    """A clean blue plate drawn by the evaluation set's renderer (GA 36 layout), BGR."""
    from bench.plate_render import draw_plate, plate_spec

    return draw_plate(plate_spec(text, "blue"))


def _run(ch: str, dist: dict[str, float]) -> plate_second.Run:
    return (ch, dist[ch], dist)


def _dist(**p: float) -> dict[str, float]:
    base = dict.fromkeys("皖浙苏AFP0123", 0.0)
    base.update({k.replace("wan", "皖").replace("zhe", "浙").replace("su", "苏"): v for k, v in p.items()})
    return base


def test_a_confident_wrong_province_is_outvoted_when_the_other_model_rules_it_out() -> None:
    # 苏AP48A8 as the tune split's lprnet-23: ours says 皖 at 0.95, theirs 苏 at 0.9 and 皖 at 0.0.
    ours = [_run("皖", _dist(wan=0.953, su=0.042)), _run("A", _dist(A=0.99))]
    theirs = [_run("苏", _dist(su=0.905, zhe=0.05)), _run("A", _dist(A=0.98))]
    (c0, p0), (c1, p1) = fuse(ours, theirs)
    assert (c0, c1) == ("苏", "A")
    assert 0.5 < p0 < 1.0 and p1 > 0.99


def test_where_the_two_disagree_and_neither_is_sure_the_character_comes_out_unsure() -> None:
    ours = [_run("F", _dist(F=0.5, P=0.45))]
    theirs = [_run("P", _dist(P=0.5, F=0.45))]
    ((_, p),) = fuse(ours, theirs)
    assert p < 0.55  # about even: plate_rules marks anything under 0.35, and this is near a coin toss


def test_reads_of_different_lengths_keep_ours_as_read() -> None:
    ours = [_run("苏", _dist(su=0.6)), _run("A", _dist(A=0.9))]
    theirs = [_run("浙", _dist(zhe=0.99))]
    assert fuse(ours, theirs) == [("苏", 0.6), ("A", 0.9)]
    assert fuse(ours, []) == [("苏", 0.6), ("A", 0.9)]


def test_a_character_only_one_model_knows_stays_as_ours_read_it() -> None:
    ours = [("领", 0.7, {"领": 0.7, "0": 0.3})]
    theirs = [_run("0", _dist(**{"0": 0.9}))]
    assert fuse(ours, theirs) == [("领", 0.7)]


def test_greedy_runs_handle_a_blank_first_or_last() -> None:
    charset = ("A", "B")
    first = np.array([[0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.9, 0.05, 0.05], [0.1, 0.1, 0.8]])  # blank = class 0
    assert [(c, round(p, 2)) for c, p, _ in greedy_runs(first, charset, 0)] == [("A", 0.8), ("B", 0.8)]
    last = first[:, [1, 2, 0]]  # the same probabilities with the blank as the last class
    runs = greedy_runs(last, charset, 2)
    assert [(c, round(p, 2)) for c, p, _ in runs] == [("A", 0.8), ("B", 0.8)]
    assert runs[0][2] == pytest.approx({"A": 0.8, "B": 0.1})


@pytest.fixture(scope="module")
def second() -> SegmentationFreeRecognizer:
    return SegmentationFreeRecognizer(path_for("plate-recognizer2", check_hash=True))


def test_the_shipped_model_has_the_table_and_reads_a_rendered_plate(second: SegmentationFreeRecognizer) -> None:
    assert len(CHARSET) == 83 and len(set(CHARSET)) == 83
    crop = _plate("浙A12345")
    runs = second.read_runs(crop)
    text = "".join(c for c, _, _ in runs)
    # Our renderer's thin "1" comes out as J: one character off, which is why this model only ever votes.
    assert text.startswith("浙A") and char_distance(text, "浙A12345") <= 1
    assert all(set(dist) == set(CHARSET) and 0.0 <= p <= 1.0 for _, p, dist in runs)


def test_the_reader_uses_the_second_opinion_by_default_and_can_do_without() -> None:
    assert OnnxPlateReader.from_models_dir().second is not None
    assert OnnxPlateReader.from_models_dir().name == "clp-det+clp-v2-rec+hyperlpr-segfree"
    alone = OnnxPlateReader.from_models_dir(second_opinion=False)
    assert alone.second is None and alone.name == "clp-det+clp-v2-rec"


def test_a_cut_out_plate_is_found_when_the_coarse_search_scales_it_up() -> None:
    from bench.plates import pad_crop

    reader = OnnxPlateReader.from_models_dir()
    small = pad_crop(cv2.resize(_plate("苏E7R5Y0"), (94, 24), interpolation=cv2.INTER_AREA))
    as_is = reader.detector.detect(small, threshold=reader.candidate_threshold)
    scaled = reader.detector.detect(small, threshold=reader.candidate_threshold, upscale=True)
    assert scaled and max(d.score for d in scaled) > max((d.score for d in as_is), default=0.0)
    h, w = small.shape[:2]
    assert all(isinstance(d, PlateDetection) and d.box[2] <= w and d.box[3] <= h for d in scaled)  # in the picture's own pixels
    assert [p["text"] for p in reader.read(small)] == ["苏E7R5Y0"]
