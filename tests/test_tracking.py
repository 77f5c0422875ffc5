"""The face tracker: replayed box sequences (pure), then the real detector on moving real photos."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from station.domain.model import Box
from station.domain.tracking import FaceTracker, TrackerSettings, capture_score

FACES_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "images" / "faces"


def box_at(cx: float, cy: float, h: float) -> Box:
    w = h * 0.78
    return Box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def walk_up(n: int = 30, fps: float = 10.0, t0: float = 0.0) -> list[tuple[float, Box]]:
    """A person walking up to the gate: the face grows from 60 to 220 px and drifts right and down."""
    out = []
    for i in range(n):
        f = i / (n - 1)
        h = 60 + 160 * f
        out.append((t0 + i / fps, box_at(300 + 40 * f + (3 if i % 2 else -3), 200 + 40 * f, h)))
    return out


def test_one_walking_person_keeps_one_id_through_drop_outs() -> None:
    tr = FaceTracker()
    ids = set()
    for i, (t, b) in enumerate(walk_up()):
        if i in (7, 8, 19):  # the detector misses the face in three frames
            assert tr.update([], None, t) == []
            continue
        (track,) = tr.update([b], [0.9], t)
        ids.add(track.id)
    assert ids == {1}
    assert tr.tracks[1].hits == 27


def test_two_people_one_behind_the_other_keep_two_ids() -> None:
    """The screened person stands at the gate; the next one walks up behind and partly overlaps."""
    tr = FaceTracker()
    front = box_at(320, 240, 220)
    seen: dict[str, set[int]] = {"front": set(), "behind": set()}
    for i in range(40):
        t = i * 0.1
        behind = box_at(360 - i, 190 + i * 0.5, 70 + i * 1.2)  # smaller, overlapping the front face
        boxes = [front, behind] if i % 2 else [behind, front]  # detector order is not stable
        tracks = tr.update(boxes, [0.9, 0.8], t)
        by_box = {id(b): trk.id for b, trk in zip(boxes, tracks, strict=True)}
        seen["front"].add(by_box[id(front)])
        seen["behind"].add(by_box[id(behind)])
    assert len(seen["front"]) == 1 and len(seen["behind"]) == 1
    assert seen["front"] != seen["behind"]


def test_person_behind_is_not_merged_when_the_front_one_leaves() -> None:
    tr = FaceTracker()
    front, behind = box_at(320, 240, 220), box_at(350, 200, 110)
    (a, b) = tr.update([front, behind], None, 0.0)
    (a2, b2) = tr.update([front, behind], None, 0.1)
    assert (a2.id, b2.id) == (a.id, b.id)
    # The front person walks off; only the one behind is detected (same place, still far).
    (only,) = tr.update([behind], None, 0.2)
    assert only.id == b.id
    # ... then they step up into the front person's place: a quick step, matched by nearness.
    (stepped,) = tr.update([box_at(340, 215, 135)], None, 0.3)
    assert stepped.id == b.id != a.id


def test_a_face_far_from_every_track_starts_a_new_track() -> None:
    tr = FaceTracker()
    (a,) = tr.update([box_at(100, 200, 150)], None, 0.0)
    (b,) = tr.update([box_at(500, 200, 150)], None, 0.1)
    assert a.id != b.id


def test_a_smaller_face_near_a_vanished_track_is_someone_else() -> None:
    """The front face is lost and a face half its size appears close by: the size gate says new person."""
    tr = FaceTracker()
    (a,) = tr.update([box_at(320, 240, 220)], None, 0.0)
    (b,) = tr.update([box_at(350, 200, 110)], None, 0.1)  # IoU 0.25, centre 0.23 heights away
    assert b.id != a.id
    (c,) = tr.update([box_at(330, 235, 200)], None, 0.2)  # the front person again, slightly moved
    assert c.id == a.id


def test_tracks_are_forgotten_after_their_memory_and_ids_never_reused() -> None:
    tr = FaceTracker(TrackerSettings(memory_s=0.5))
    (a,) = tr.update([box_at(320, 240, 200)], None, 0.0)
    (b,) = tr.update([box_at(320, 240, 200)], None, 0.45)  # within memory: same person
    assert b.id == a.id
    (c,) = tr.update([box_at(320, 240, 200)], None, 1.0)  # 0.55 s unseen: someone new
    assert c.id != a.id and c.id == 2
    assert set(tr.tracks) == {2}


def test_displacement_follows_the_walk() -> None:
    tr = FaceTracker()
    for t, b in walk_up():
        (track,) = tr.update([b], None, t)
    dx, dy = track.displacement()
    assert 30 < dx < 50 and 30 < dy < 50
    assert len(track.centres) == 30


# -- capture selection ----------------------------------------------------------------------------


def test_capture_score_prefers_larger_sharper_frontal() -> None:
    assert capture_score(200, 300) > capture_score(120, 300)
    assert capture_score(200, 300) > capture_score(200, 20)
    assert capture_score(200, 300, frontal=0.95) > capture_score(200, 300, frontal=0.6)
    # Sharpness saturates: a big in-focus face beats a small razor-sharp one.
    assert capture_score(220, 200) > capture_score(120, 2000)
    assert capture_score(0, 300) == 0.0 and capture_score(200, -1) == 0.0


def test_track_keeps_its_best_capture() -> None:
    tr = FaceTracker()
    best = None
    for i, (t, b) in enumerate(walk_up()):
        (track,) = tr.update([b], None, t)
        sharp = 20.0 if i >= 27 else 300.0  # the last frames are motion-blurred
        if track.offer_capture(capture_score(b.height, sharp), t, ref=i):
            best = i
    assert best == 26 and track.best_capture_ref == 26


@pytest.mark.skipif(not FACES_DIR.is_dir(), reason="shared test photos not found")
def test_laplacian_sharpness_on_a_real_face_crop_ranks_blur_lower() -> None:
    img = cv2.imread(str(FACES_DIR / "ultraface-5.jpg"))
    grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    sharp = float(cv2.Laplacian(grey, cv2.CV_64F).var())
    blurred = float(cv2.Laplacian(cv2.GaussianBlur(grey, (9, 9), 3), cv2.CV_64F).var())
    assert capture_score(200, sharp) > capture_score(200, blurred)


# -- the real detector on moving real photos -------------------------------------------------------


def _moving_frames(file: str, n: int) -> list[np.ndarray]:
    """A real photo sliding across and zooming into a 640×480 frame: a replayed walk."""
    img = cv2.imread(str(FACES_DIR / file))
    frames = []
    for i in range(n):
        s = 0.55 + 0.25 * i / (n - 1)
        small = cv2.resize(img, None, fx=s * 640 / img.shape[1], fy=s * 640 / img.shape[1], interpolation=cv2.INTER_AREA)
        frame = np.zeros((480, 640, 3), dtype=np.uint8)
        x0, y0 = 6 * i, 3 * i
        h, w = min(small.shape[0], 480 - y0), min(small.shape[1], 640 - x0)
        frame[y0 : y0 + h, x0 : x0 + w] = small[:h, :w]
        frames.append(frame)
    return frames


@pytest.fixture(scope="module")
def detector():  # type: ignore[no-untyped-def]
    from drivers.detect.ultraface import UltraFaceDetector
    from station.models import path_for

    return UltraFaceDetector(path_for("ultraface-rfb-320"))


@pytest.mark.skipif(not FACES_DIR.is_dir(), reason="shared test photos not found")
@pytest.mark.parametrize(("file", "people"), [("ultraface-5.jpg", 1), ("ultraface-13.jpg", 2)])
def test_real_detections_of_a_moving_photo_keep_one_id_per_person(detector, file: str, people: int) -> None:  # type: ignore[no-untyped-def]
    tr = FaceTracker()
    ids_per_frame = []
    for i, frame in enumerate(_moving_frames(file, 15)):
        faces = detector.detect(frame)
        tracks = tr.update([f.box for f in faces], [f.score for f in faces], i / 10.0)
        ids_per_frame.append({t.id for t in tracks})
    assert all(len(ids) == people for ids in ids_per_frame), ids_per_frame
    assert set().union(*ids_per_frame) == set(range(1, people + 1))


def test_a_smaller_face_in_the_box_of_the_person_who_walked_on_is_a_new_track() -> None:
    """The next person steps into the picture where the screened one stood: overlap alone must not merge them."""
    tr = FaceTracker()
    front = box_at(320, 240, 220)
    for i in range(10):
        (a,) = tr.update([front], [0.9], i * 0.1)
    tr.update([], None, 1.0)  # the screened person walked on, out of the picture
    behind = box_at(320, 240, 130)  # the next one, farther away, inside the old box
    assert front.iou(behind) >= TrackerSettings().iou_min  # overlap alone would have continued the old track
    (b,) = tr.update([behind], [0.9], 1.1)
    assert b.id != a.id
    # Growing is what walking towards the camera does: the same person may grow fast between frames.
    (c,) = tr.update([box_at(322, 242, 160)], [0.9], 1.2)
    assert c.id == b.id
