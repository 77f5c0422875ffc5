"""Plate reading on the evaluation set: ``python -m bench.plates [--json] [--out F] [--split tune|heldout|all]``.

The set is ``tests/data/plates/manifest.csv``: one row per labelled plate (file, text, type, box,
source, condition, split, readable, kind). Rendered frames live beside the manifest
(``tests/data/plates/rendered``); the real photos come from public plate projects whose licences
allow redistribution (``tests/data/plates/ATTRIBUTION.md``) and are read from
``$PLATE_EVAL_REAL_DIR`` or else ``../shared/data/images/plates-eval``: rows whose photo is absent
are counted as ``missing``, never as misreads.

Each image is read once through the product's reader (``OnnxPlateReader.read``). Reads are matched
to labelled plates one-to-one: a read belongs to the label whose box holds its centre (IoU as the
tie-break); a label without a box (a crop) takes the best-scored read. A labelled plate with no
read counts as read empty. A crop (``kind`` crop: a plate cut out of a photo by its project) is
padded with its edge colour to three times its size so the detector sees it as a plate in a frame.

Figures per group: exact plates (``?`` in a label matches any character) and per-character
accuracy = 1 − Σ edit distance / Σ label length, grouped by split × origin (real / rendered) and
then by plate type, frame size and condition; ``unsure`` counts reads that carry a ``?``. Plates
marked ``readable = no`` (a person cannot read them either) are left out of the accuracy and
counted apart. Misreads are listed for the tune split only unless ``--show-heldout``: the
held-out split is for reporting, never for tuning.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.vision import char_distance, plate_scores, text_matches

SET_DIR = Path(__file__).resolve().parents[1] / "tests" / "data" / "plates"
SHARED_REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "images" / "plates-eval"


def real_dir() -> Path:
    """Where the real photos of the set are: ``$PLATE_EVAL_REAL_DIR``, else the shared materials."""
    env = os.environ.get("PLATE_EVAL_REAL_DIR")
    return Path(env) if env else SHARED_REAL


def load_manifest(path: Path = SET_DIR / "manifest.csv") -> list[dict[str, Any]]:
    """Return the manifest rows with ``box`` as a float list (empty when the label has none)."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["box"] = [float(v) for v in row["box"].split()] if row["box"].strip() else []
    return rows


def image_path(file: str) -> Path:
    """Resolve a manifest ``file``: ``real/…`` from the real-photo folder, anything else under the set."""
    if file.startswith("real/"):
        return real_dir() / file.removeprefix("real/")
    return SET_DIR / file


def size_bucket(width: int, height: int) -> str:
    """Name the frame-size group of a picture by its longest side."""
    side = max(width, height)
    if side <= 700:
        return "<=640"
    if side <= 1300:
        return "<=1280"
    if side <= 2000:
        return "<=1920"
    return ">1920"


def pad_crop(img: np.ndarray) -> np.ndarray:
    """Put a cut-out plate in a frame three times its size, filled with its edge colour."""
    import cv2

    h, w = img.shape[:2]
    edge = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]]).mean(axis=0)
    return cv2.copyMakeBorder(img, h, h, w, w, cv2.BORDER_CONSTANT, value=[float(v) for v in edge])


def _centre_in(box: list[float], read_box: list[float]) -> bool:
    cx, cy = (read_box[0] + read_box[2]) / 2, (read_box[1] + read_box[3]) / 2
    return box[0] <= cx <= box[2] and box[1] <= cy <= box[3]


def _iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_reads(labels: list[dict[str, Any]], reads: list[dict[str, Any]]) -> tuple[list[dict[str, Any] | None], int]:
    """Match reads to labelled plates one-to-one; return each label's read (or None) and the unmatched reads' count."""
    used: set[int] = set()
    out: list[dict[str, Any] | None] = []
    for lab in labels:
        best, best_key = None, (-1.0, -1.0)
        for i, r in enumerate(reads):
            if i in used:
                continue
            if lab["box"]:
                if not _centre_in(lab["box"], r["box"]) and _iou(lab["box"], r["box"]) < 0.2:
                    continue
                key = (_iou(lab["box"], r["box"]), r["score"])
            else:
                key = (0.0, r["score"])
            if key > best_key:
                best, best_key = i, key
        if best is None:
            out.append(None)
        else:
            used.add(best)
            out.append(reads[best])
    return out, len(reads) - len(used)


def _scores(items: list[dict[str, Any]]) -> dict[str, Any]:
    pairs = [(it["read"], it["text"]) for it in items]
    s = plate_scores(pairs)
    s["found"] = sum(1 for it in items if it["found"])
    s["unsure"] = sum(1 for it in items if "?" in it["read"])
    return s


def evaluate(read: Callable[[np.ndarray], list[dict[str, Any]]], rows: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Read every image of the manifest with ``read``; return the per-plate results and timings."""
    import cv2

    rows = load_manifest() if rows is None else rows
    by_file: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_file[row["file"]].append(row)
    results: list[dict[str, Any]] = []
    missing: list[str] = []
    extra_reads = 0
    times: list[float] = []
    for file, labels in by_file.items():
        img = cv2.imread(str(image_path(file)), cv2.IMREAD_COLOR)
        if img is None:
            missing.append(file)
            continue
        h, w = img.shape[:2]
        if labels[0]["kind"] == "crop":
            img = pad_crop(img)
        t0 = time.perf_counter()
        reads = read(img)
        times.append((time.perf_counter() - t0) * 1000.0)
        got, extra = match_reads(labels, reads)
        extra_reads += extra
        for lab, r in zip(labels, got, strict=True):
            results.append(
                {
                    "file": file,
                    "text": lab["text"],
                    "type": lab["type"],
                    "origin": "rendered" if lab["source"] == "rendered" else "real",
                    "source": lab["source"],
                    "condition": lab["condition"],
                    "split": lab["split"],
                    "readable": lab["readable"] == "yes",
                    "kind": lab["kind"],
                    "size": "crop" if lab["kind"] == "crop" else size_bucket(w, h),
                    "frame": f"{w}x{h}",
                    "found": r is not None,
                    "read": r["text"] if r is not None else "",
                    "confidence": r["confidence"] if r is not None else 0.0,
                }
            )
    return {"results": results, "missing": missing, "extra_reads": extra_reads, "ms_per_image": times}


def summarise(ev: dict[str, Any], *, show_heldout: bool = False) -> dict[str, Any]:
    """Group the results: split × origin, then by type, size and condition; the misreads to look at."""
    readable = [r for r in ev["results"] if r["readable"]]
    groups: dict[str, Any] = {}
    for split in ("tune", "heldout"):
        for origin in ("real", "rendered"):
            items = [r for r in readable if r["split"] == split and r["origin"] == origin]
            if not items:
                continue
            g: dict[str, Any] = {"all": _scores(items)}
            for key in ("type", "size", "condition", "kind", "source"):
                vals = sorted({r[key] for r in items})
                g[f"by_{key}"] = {v: _scores([r for r in items if r[key] == v]) for v in vals}
            groups[f"{split}/{origin}"] = g
    both = {split: _scores([r for r in readable if r["split"] == split]) for split in ("tune", "heldout")}
    misreads = [
        {k: r[k] for k in ("file", "text", "read", "confidence", "type", "split")}
        for r in readable
        if not text_matches(r["read"], r["text"]) and (show_heldout or r["split"] == "tune")
    ]
    times = ev["ms_per_image"]
    return {
        "plates": len(ev["results"]),
        "readable": len(readable),
        "unreadable_left_out": len(ev["results"]) - len(readable),
        "missing_images": ev["missing"],
        "extra_reads": ev["extra_reads"],
        "median_ms_per_image": round(statistics.median(times), 1) if times else None,
        "splits": both,
        "groups": groups,
        "misreads": misreads,
        "char_errors_misreads": sum(char_distance(m["read"], m["text"]) for m in misreads),
    }


def table(summary: dict[str, Any]) -> str:
    """Return a Markdown table of exact / per-character accuracy per group (README form)."""
    lines = ["| split / origin | group | plates | exact | chars |", "|---|---|---:|---:|---:|"]
    for name, g in summary["groups"].items():
        a = g["all"]
        lines.append(f"| {name} | all | {a['plates']} | {a['exact_accuracy']:.0%} | {a['char_accuracy']:.1%} |")
        for key in ("by_type", "by_size"):
            for v, s in g[key].items():
                lines.append(f"| {name} | {v} | {s['plates']} | {s['exact_accuracy']:.0%} | {s['char_accuracy']:.1%} |")
    return "\n".join(lines)


def main() -> None:
    """Run the set through the reader and print (or write) the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON (default: a Markdown table)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--max-side", type=int, default=640, help="detector's longest side (the station's default)")
    parser.add_argument("--split", choices=("tune", "heldout", "all"), default="all")
    parser.add_argument("--show-heldout", action="store_true", help="list held-out misreads too (reporting only)")
    parser.add_argument("--no-second-opinion", action="store_true", help="read with the main recogniser alone (A/B)")
    args = parser.parse_args()
    from drivers.detect.plates import OnnxPlateReader

    reader = OnnxPlateReader.from_models_dir(max_side=args.max_side, second_opinion=not args.no_second_opinion)
    reader.warm_up()
    rows = [r for r in load_manifest() if args.split == "all" or r["split"] == args.split]
    summary = summarise(evaluate(reader.read, rows), show_heldout=args.show_heldout)
    summary["reader"] = {"name": reader.name, "max_side": args.max_side, "real_dir": str(real_dir())}
    text = json.dumps(summary, ensure_ascii=False, indent=1)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text if args.json else table(summary))


if __name__ == "__main__":
    main()
