"""Vision accuracy and speed: ``python -m bench.vision [--one-core] [--quick]`` or ``vision()`` from ``bench``.

Accuracy on the labelled test photos of the shared materials (``../shared/data/images``; used here
and in tests only, never shipped):

- faces: the labels give the number of faces per photo (no boxes), so a photo's true positives are
  ``min(found, labelled)``; recall = Σ TP / Σ labelled, precision = Σ TP / Σ found. A detector that
  finds the right number of boxes in the wrong places would score well: the face tests check box
  sanity separately, and this is stated wherever the figures are quoted;
- plates: exact text (``?`` in a label is a character a person cannot read either: it matches any
  one character) and per-character accuracy = 1 − Σ edit distance / Σ label length.

Speed, medians per 640×480 frame: face detection (UltraFace 320 / 640, Haar), plate reading
(detect + rectify + read), the whole per-frame vision work, and RSS with every model loaded.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
from pathlib import Path
from typing import Any

import numpy as np

from bench.stats import median_ms

SHARED_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "images"


# -- pure metrics ------------------------------------------------------------------------------------


def char_distance(read: str, truth: str) -> int:
    """Levenshtein distance where ``?`` in ``truth`` matches any one character."""
    prev = list(range(len(truth) + 1))
    for i, a in enumerate(read, 1):
        cur = [i] + [0] * len(truth)
        for j, b in enumerate(truth, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (0 if b == "?" or a == b else 1))
        prev = cur
    return prev[-1]


def text_matches(read: str, truth: str) -> bool:
    return char_distance(read, truth) == 0 and len(read) == len(truth)


def plate_scores(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """(read, truth) pairs → exact-text and per-character accuracy."""
    # Only the readable characters count: a "?" is neither right nor wrong.
    total = sum(len(t) - t.count("?") for _, t in pairs)
    errors = sum(min(char_distance(r, t), len(t) - t.count("?")) for r, t in pairs)
    exact = sum(1 for r, t in pairs if text_matches(r, t))
    return {
        "plates": len(pairs),
        "exact": exact,
        "exact_accuracy": round(exact / len(pairs), 3) if pairs else None,
        "chars": total,
        "char_errors": errors,
        "char_accuracy": round(1.0 - errors / total, 3) if total else None,
    }


def face_scores(counts: list[tuple[int, int]]) -> dict[str, Any]:
    """(found, labelled) per photo → recall and precision (count-matched; see the module doc)."""
    tp = sum(min(f, n) for f, n in counts)
    found = sum(f for f, _ in counts)
    labelled = sum(n for _, n in counts)
    return {
        "labelled": labelled,
        "found": found,
        "recall": round(tp / labelled, 3) if labelled else None,
        "precision": round(tp / found, 3) if found else None,
    }


# -- labelled sets -----------------------------------------------------------------------------------


def _labels(kind: str) -> list[dict[str, str]]:
    with (SHARED_IMAGES / kind / "labels.csv").open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def matched(found: list[Any], reference: list[Any], iou_min: float = 0.3) -> int:
    """Boxes of ``found`` matched one-to-one (greedy, IoU ≥ iou_min) to boxes of ``reference``."""
    used: set[int] = set()
    n = 0
    for b in found:
        best = max(((b.iou(r), i) for i, r in enumerate(reference) if i not in used), default=(0.0, -1))
        if best[0] >= iou_min:
            used.add(best[1])
            n += 1
    return n


def face_accuracy(detectors: dict[str, Any], reference: Any = None) -> dict[str, Any]:
    """Return count-based recall/precision per detector on the labelled photos.

    With ``reference`` (a detector whose counts match every label) also box-matched figures against
    its boxes, which catch a miss hidden by a false positive on the same photo.
    """
    import cv2

    rows = _labels("faces")
    images = {row["file"]: cv2.imread(str(SHARED_IMAGES / "faces" / row["file"]), cv2.IMREAD_COLOR) for row in rows}
    ref_boxes = {f: [d.box for d in reference.detect(img)] for f, img in images.items()} if reference is not None else {}
    out: dict[str, Any] = {}
    for name, det in detectors.items():
        counts = []
        per_image = {}
        tp = found = refs = 0
        for row in rows:
            boxes = [d.box for d in det.detect(images[row["file"]])]
            counts.append((len(boxes), int(row["faces"])))
            per_image[row["file"]] = f"{len(boxes)}/{row['faces']}"
            if reference is not None:
                tp += matched(boxes, ref_boxes[row["file"]])
                found += len(boxes)
                refs += len(ref_boxes[row["file"]])
        out[name] = {**face_scores(counts), "per_image": per_image}
        if reference is not None:
            out[name]["box_matched_to_reference"] = {
                "recall": round(tp / refs, 3) if refs else None,
                "precision": round(tp / found, 3) if found else None,
            }
    return out


def plate_accuracy(reader: Any) -> dict[str, Any]:
    """Read every labelled plate photo; the best-scored plate of each photo is its reading."""
    import cv2

    pairs = []
    per_image = {}
    for row in _labels("plates"):
        img = cv2.imread(str(SHARED_IMAGES / "plates" / row["file"]), cv2.IMREAD_COLOR)
        plates = reader.read(img)
        text = plates[0]["text"] if plates else ""
        pairs.append((text, row["plates"]))
        per_image[row["file"]] = {"label": row["plates"], "read": text, "ok": text_matches(text, row["plates"])}
    return {**plate_scores(pairs), "per_image": per_image}


# -- speed -------------------------------------------------------------------------------------------


def _rss_mb() -> float:
    """Return the current resident set size (not the peak), MB, from /proc."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 1e6, 1)


def _plate_frame_640x480() -> np.ndarray:
    """Return a 640×480 frame with a real plate in it: the test photo of a yellow plate, letterboxed."""
    import cv2

    path = SHARED_IMAGES / "plates" / "zeusees-11.jpg"
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f"plate test photo missing or unreadable: {path}")
    frame = np.zeros((480, 640, 3), dtype=np.uint8)
    h, w = img.shape[:2]
    s = min(640 / w, 480 / h)
    small = cv2.resize(img, (int(w * s), int(h * s)), interpolation=cv2.INTER_AREA)
    frame[: small.shape[0], : small.shape[1]] = small
    return frame


def pipeline_rate(people: int = 4) -> dict[str, Any]:
    """Measure the frames per second the face thread processes, the whole pipeline on the demo devices.

    The camera is asked for 60 fps; the scene renderer and the thermal emulator share the machine.
    """
    import tempfile

    from sim.demo import DemoRun
    from station.config import StationConfig

    out: dict[str, Any] = {}
    for mode in ("off", "vehicle"):
        cfg = StationConfig.model_validate({"camera": {"fps": 60.0}, "vehicle": {"mode": mode}})
        with tempfile.TemporaryDirectory() as d:
            r = DemoRun(cfg, people=people, data_dir=Path(d), fast=True).run(max_s=60)
        st = r.pipeline_stats
        processed = st.get("frames", 0) - st.get("face_frames_dropped", 0)
        out["person_lane" if mode == "off" else "vehicle_lane"] = {
            "camera_fps": round(st.get("frames", 0) / r.elapsed_s, 1),
            "face_thread_fps": round(processed / r.elapsed_s, 1),
            "decisions": len(r.decided),
            "ground_truth_agreement": sum(p is not None and p.expected == dd.event.decision.value for p, dd in r.decided),
        }
    return out


def vision(repeat: int = 50, threads: int = 1, accuracy: bool = True) -> dict[str, Any]:
    """Speed (and, if the labelled photos are there, accuracy) of the vision models."""
    import cv2

    from drivers.detect.haar import HaarFaceDetector
    from drivers.detect.plates import OnnxPlateReader
    from drivers.detect.ultraface import UltraFaceDetector
    from sim.scene import Phase, SceneGeometry, ScenePerson, SceneState
    from sim.scene_camera import SceneRenderer
    from station.domain.model import CodeColour
    from station.domain.tracking import FaceTracker, capture_score
    from station.models import path_for

    rss_start = _rss_mb()
    face320 = UltraFaceDetector(path_for("ultraface-rfb-320"), input_size=(320, 240), threads=threads)
    face640 = UltraFaceDetector(path_for("ultraface-rfb-640"), input_size=(640, 480), threads=threads)
    plates = OnnxPlateReader.from_models_dir(threads=threads)
    face320.warm_up()
    face640.warm_up()
    plates.warm_up()
    rss_models = _rss_mb()

    geo = SceneGeometry()
    person = ScenePerson(0, 36.6, CodeColour.GREEN, b"bench")
    box = geo.face_box_at(0.55)
    face_frame = SceneRenderer().render(SceneState(0.0, Phase.STANDING, person, 0.55, box, False))
    plate_frame = _plate_frame_640x480()
    tracker = FaceTracker()
    clock = [0.0]

    def per_frame() -> None:
        # What the face thread does per frame: detect, track, score the capture crop.
        clock[0] += 0.066
        faces = face320.detect(face_frame)
        for track in tracker.update([f.box for f in faces], [f.score for f in faces], clock[0]):
            b = track.box
            crop = face_frame[int(b.y1) : int(b.y2), int(b.x1) : int(b.x2)]
            capture_score(b.height, float(cv2.Laplacian(cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var()))

    out: dict[str, Any] = {
        "frame": "640x480",
        "ort_threads": threads,
        "face_detect_ultraface_320_ms": median_ms(lambda: face320.detect(face_frame), repeat, ndigits=2),
        "face_detect_ultraface_640_ms": median_ms(lambda: face640.detect(face_frame), repeat, ndigits=2),
        "plate_read_ms": median_ms(lambda: plates.read(plate_frame), repeat, ndigits=2),
        "plate_detect_only_ms": median_ms(lambda: plates.detector.detect(plate_frame), repeat, ndigits=2),
        "face_track_per_frame_ms": median_ms(per_frame, repeat, ndigits=2),
    }
    face_ms = out["face_track_per_frame_ms"]

    def per_frame_with_plate() -> None:
        per_frame()
        plates.read(plate_frame)

    both_ms = median_ms(per_frame_with_plate, max(10, repeat // 2), ndigits=2)
    out["pipeline_fps_person_lane"] = round(1000.0 / face_ms, 1)
    out["pipeline_fps_vehicle_lane"] = round(1000.0 / both_ms, 1)
    try:
        haar = HaarFaceDetector()
        out["face_detect_haar_ms"] = median_ms(lambda: haar.detect(face_frame), max(5, repeat // 5), ndigits=2)
    except Exception as exc:  # the fallback may be missing from this OpenCV build: report, don't fail
        haar = None
        out["face_detect_haar_ms"] = f"unavailable: {exc}"
    out["rss_mb"] = {
        "before_models": rss_start,
        "with_face_and_plate_models": rss_models,
        "after_runs": _rss_mb(),
        "peak": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6, 1),
    }
    out["pipeline_demo_60fps_camera"] = pipeline_rate()
    if accuracy and (SHARED_IMAGES / "faces" / "labels.csv").is_file():
        dets: dict[str, Any] = {"ultraface-rfb-320": face320, "ultraface-rfb-640": face640}
        if haar is not None:
            dets["haar"] = haar
        # UltraFace-640 finds exactly the labelled count on every photo: its boxes are the reference.
        out["faces"] = face_accuracy(dets, reference=face640)
        out["plates"] = plate_accuracy(plates)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.vision", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--one-core", action="store_true", help="pin to CPU 0, one onnxruntime thread")
    args = ap.parse_args()
    if args.one_core:
        os.sched_setaffinity(0, {0})
    print(json.dumps(vision(20 if args.quick else 50, 1 if args.one_core else min(4, os.cpu_count() or 1)), indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
