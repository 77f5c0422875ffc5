"""Benchmarks: ``python -m bench [--quick] [--json] [--one-core]`` (see bench/README.md).

Prints one JSON object: per-stage compute medians on a 640×480 scene frame, the demo lane's
end-to-end decision latency and throughput through the real pipeline (pty thermal link at 460800
baud / 8 Hz), and the event store's durable write rate. Medians and ratios, not single timings:
the machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.stats import median_ms, percentile


def frame_compute(repeat: int, threads: int) -> dict[str, Any]:
    from drivers.camera.scene_camera import SceneRenderer
    from drivers.codes.local_claims import LocalClaimsVerifier, encode_claims
    from drivers.codes.pyzbar_reader import PyzbarReader
    from drivers.detect.haar import HaarFaceDetector
    from drivers.detect.ultraface import UltraFaceDetector
    from drivers.scene import Phase, SceneGeometry, ScenePerson, SceneState
    from drivers.thermal.gy_mcu90640 import FrameParser, encode_frame, image_to_module_order
    from station.app import calibration_for
    from station.config import StationConfig
    from station.domain.model import CodeColour, ThermalFrame
    from station.domain.thermal import measure_face
    from station.models import path_for

    geo = SceneGeometry()
    now = time.time()
    person = ScenePerson(0, 36.6, CodeColour.GREEN, encode_claims(CodeColour.GREEN, int(now), int(now) + 3600, "bench"))
    box = geo.face_box_at(0.55)
    with_code = SceneRenderer().render(SceneState(0.0, Phase.STANDING, person, 0.55, box, True))
    without_code = SceneRenderer().render(SceneState(0.0, Phase.STANDING, person, 0.55, box, False))

    img = np.full((24, 32), 22.0, dtype=np.float32)
    img[4:18, 11:21] = 35.2
    raw = encode_frame(image_to_module_order(img), 3000)
    parser = FrameParser()

    cfg = StationConfig()
    cal = calibration_for(cfg)
    face320 = UltraFaceDetector(path_for("ultraface-rfb-320"), input_size=(320, 240), threads=threads)
    face640 = UltraFaceDetector(path_for("ultraface-rfb-640"), input_size=(640, 480), threads=threads)
    reader = PyzbarReader()
    verifier = LocalClaimsVerifier()
    frame = ThermalFrame(img, 30.0, 0, 0.0)

    def parse() -> None:
        (item,) = parser.feed(raw)
        assert item is not None

    def per_frame() -> None:
        parser.feed(raw)
        faces = face320.detect(with_code)
        for code in reader.decode(with_code):
            verifier.verify(code.payload, now)
        if faces:
            measure_face(frame, faces[0].box, cal)

    out: dict[str, Any] = {
        "thermal_parse": median_ms(parse, repeat * 4),
        "qr_decode_pyzbar": median_ms(lambda: reader.decode(with_code), repeat),
        "qr_decode_pyzbar_no_code": median_ms(lambda: reader.decode(without_code), repeat),
        "face_detect_ultraface_320": median_ms(lambda: face320.detect(with_code), repeat),
        "face_detect_ultraface_640": median_ms(lambda: face640.detect(with_code), repeat),
        "temperature_measure": median_ms(lambda: measure_face(frame, box, cal), repeat * 4),
        "per_frame_person_lane": median_ms(per_frame, repeat),
    }
    try:
        haar = HaarFaceDetector()
        out["face_detect_haar"] = median_ms(lambda: haar.detect(with_code), max(5, repeat // 4))
    except Exception as exc:  # the fallback may be missing from this OpenCV build: report, don't fail
        out["face_detect_haar"] = f"unavailable: {exc}"
    out["ratio_face_haar_over_ultraface_320"] = (
        round(out["face_detect_haar"] / out["face_detect_ultraface_320"], 2) if isinstance(out["face_detect_haar"], float) else None
    )
    return out


def lane(people: int) -> dict[str, Any]:
    from station.config import StationConfig
    from station.demo import DemoRun, summary

    with tempfile.TemporaryDirectory() as d:
        run = DemoRun(StationConfig(), people=people, data_dir=Path(d), fast=True)
        result = run.run()
    s = summary(result)
    totals = [dec.event.latency_ms["total"] for _, dec in result.decided]
    # Decisions that waited out a timeout (no code shown) measure the timeout, not the pipeline.
    screened = [dec.event.latency_ms["total"] for _, dec in result.decided if not dec.event.reason.startswith(("no_code", "code_invalid"))]
    return {
        "people": people,
        "decisions": s["decisions"],
        "ground_truth_agreement": s["ground_truth_agreement"],
        "decision_latency_ms": {"p50": percentile(screened, 0.5), "p95": percentile(screened, 0.95), "max": max(screened), "n": len(screened)},
        "decision_latency_all_ms": {"p50": percentile(totals, 0.5), "p95": percentile(totals, 0.95)},
        "median_stage_ms": s["median_latency_ms"],
        "decisions_per_s": s["decisions_per_s"],
        "cold_start_s": s["start_s"],
        "thermal_link": s["thermal"],
    }


def store_writes(n: int) -> dict[str, Any]:
    from station.domain.model import Decision, ScreeningEvent
    from station.store import SqliteEventStore

    with tempfile.TemporaryDirectory() as d:
        store = SqliteEventStore(Path(d) / "bench.sqlite3", station_id="bench", site="bench")
        store.begin_session()
        t0 = time.perf_counter()
        for i in range(n):
            store.record(
                ScreeningEvent(
                    f"{i:032x}", "bench", "bench", "entry", Decision.PASS, "ok", False, time.time(), 36.6, {}, None, {}, {}, {}, {"total": 1.0}, {}
                )
            )
        dt = time.perf_counter() - t0
        store.close()
    return {"events": n, "event_write_per_s": round(n / dt, 1), "synchronous": "FULL"}


def _vision(repeat: int, threads: int) -> dict[str, Any]:
    """Face/plate speed, pipeline frame rate, RSS and labelled-set accuracy (bench/vision.py)."""
    from bench.vision import vision

    return vision(max(10, repeat), threads)


def _thermal(people: int, quick: bool) -> dict[str, Any]:
    """Simulated accuracy and link latency of the thermal path (bench/thermal_accuracy.py, thermal_latency.py)."""
    from bench.thermal_accuracy import run as accuracy
    from bench.thermal_latency import run as latency

    return {"accuracy": accuracy(200 if quick else 1000), "latency": latency(people)}


def _sync(n: int) -> dict[str, Any]:
    from bench.outbox import sync_bench  # catch-up after an outage and durable writes (bench/outbox.py)

    return sync_bench(n)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions and people (about a minute)")
    ap.add_argument("--json", action="store_true", help="only the JSON object on stdout")
    ap.add_argument("--one-core", action="store_true", help="Pi-class: pin to CPU 0 and one onnxruntime thread")
    args = ap.parse_args()
    threads = 1
    if args.one_core:
        os.sched_setaffinity(0, {0})  # inherited by every thread started from here on
    else:
        threads = min(4, os.cpu_count() or 1)
    repeat = 30 if args.quick else 100
    people = 8 if args.quick else 40
    result = {
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "pinned_one_core": args.one_core, "ort_threads": threads},
        "frame_compute_ms": frame_compute(repeat, threads),
        "lane": lane(people),
        "store": store_writes(200 if args.quick else 1000),
        "sync": _sync(2000 if args.quick else 10_000),
        "thermal": _thermal(people, args.quick),
        "vision": _vision(repeat // 2, threads),
    }
    text = json.dumps(result, indent=None if args.json else 2, ensure_ascii=False)
    print(text)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
