"""Vehicle-lane fit figures: ``python -m bench.vehicle [--json] [--out FILE] [--no-daemon] [--accuracy]``.

Three figures, against the issue's targets (one core = pinned to CPU 0, one onnxruntime thread):

- ``per_frame_quiet_ms`` and ``per_frame_under_load_ms``: median compute per camera frame of the
  vehicle lane, on a replayed vehicle scene (10 fps, 640×480: empty lane, a car rolls up, stands
  at the window, drives off; drawn by ``bench.plate_render``, camera noise on every frame). Per
  frame: the person lane's work (thermal parse, face detection, QR decode + verify, face temperature,
  on the scene camera's frame with a code, as in ``python -m bench``) plus the plate thread's (the
  change gate, and the plate read when the gate lets the frame through). "Under load" runs the
  same with another process spinning on the same core (wall time per frame: the core is shared).
  The mean, p95, the median of read frames and the frames read / skipped are given beside the
  median, and the same scene read on every frame (no gate) for comparison;
- ``daemon_rss_mb``: the real ``station run`` in vehicle mode on one core (``bench.daemon``),
  max VmRSS after the first decision;
- with ``--accuracy``: exact plates on the evaluation set (``bench.plates``), per split and origin,
  read by the same reader configuration, each picture on its own (tracking is for a camera's
  stream: its effect shows in the scene's ``plate_read_right_on_read_frames_with_a_car``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

TARGET_PER_FRAME_MS = 60.0
TARGET_RSS_MB = 200.0
FPS = 10.0


def vehicle_scene(seed: int = 5, fps: float = FPS) -> list[tuple[float, np.ndarray, int]]:
    """Return (t, 640×480 BGR frame, plates in view) of a car rolling up, standing at the window and driving off.

    2 s empty lane, 3 s approach (the car grows), 5 s standing, 2 s leaving to the right, 1 s empty;
    Gaussian camera noise (σ 3 grey levels) on every frame, so no two frames are equal.
    """
    import cv2

    from bench.plate_render import background, draw_plate, draw_vehicle, place_plate, plate_spec

    rng = np.random.default_rng(seed)
    w, h = 640, 480
    road = background(w, h, rng)
    plate = draw_plate(plate_spec("浙A12345", "blue"))
    frames: list[tuple[float, np.ndarray, int]] = []

    def car(cx: float, width: float) -> np.ndarray:
        img = road.copy()
        car_rng = np.random.default_rng(seed + 1)  # the same car in every frame
        pcx, pcy = draw_vehicle(img, int(cx), int(h * 0.6 + width * 0.45), int(width), car_rng)
        place_plate(img, plate, (pcx, pcy), width * 0.3, 0.15, 0.05, 0.02)
        return img

    timeline: list[tuple[float, float | None, float]] = []  # (duration s, car centre x or None, width)
    timeline += [(2.0, None, 0.0)]
    timeline += [(3.0, -1.0, 0.0)]  # approach, filled below
    timeline += [(5.0, 320.0, 330.0)]
    timeline += [(2.0, -2.0, 0.0)]  # leaving
    timeline += [(1.0, None, 0.0)]
    t = 0.0
    for duration, cx, width in timeline:
        n = int(round(duration * fps))
        for i in range(n):
            f = i / max(1, n - 1)
            if cx is None:
                base, plates = road, 0
            elif cx == -1.0:  # approach: from far and small to the window
                base, plates = car(300 + 20 * f, 150 + 180 * f), 1
            elif cx == -2.0:  # leaving to the right, out of the picture
                x = 320 + 520 * f
                base, plates = car(x, 330), 1 if x + 50 < w else 0
            else:
                base, plates = car(cx, width), 1
            noisy = np.clip(base.astype(np.int16) + rng.normal(0, 3, base.shape).astype(np.int16), 0, 255).astype(np.uint8)
            frames.append((t, cv2.GaussianBlur(noisy, (3, 3), 0) if plates else noisy, plates))
            t += 1.0 / fps
    return frames


def _person_lane_work(threads: int) -> Callable[[], None]:
    """Return the person lane's per-frame work, as ``python -m bench`` times it (frame_compute's per_frame)."""
    from drivers.detect.ultraface import UltraFaceDetector
    from drivers.thermal.gy_protocol import FrameParser, encode_frame, image_to_module_order
    from sim.scene import Phase, SceneGeometry, ScenePerson, SceneState
    from sim.scene_camera import SceneRenderer
    from station.app import build_reader, calibration_for
    from station.codes.local_claims import LocalClaimsVerifier, encode_claims
    from station.config import StationConfig
    from station.domain.model import CodeColour, ThermalFrame
    from station.domain.thermal import measure_face
    from station.models import path_for

    geo = SceneGeometry()
    now = time.time()
    person = ScenePerson(0, 36.6, CodeColour.GREEN, encode_claims(CodeColour.GREEN, int(now), int(now) + 3600, "bench"))
    box = geo.face_box_at(0.55)
    with_code = SceneRenderer().render(SceneState(0.0, Phase.STANDING, person, 0.55, box, True))
    img = np.full((24, 32), 22.0, dtype=np.float32)
    img[4:18, 11:21] = 35.2
    raw = encode_frame(image_to_module_order(img), 3000)
    parser = FrameParser()
    cfg = StationConfig()
    cal = calibration_for(cfg)
    face320 = UltraFaceDetector(path_for("ultraface-rfb-320"), input_size=(320, 240), threads=threads)
    face320.warm_up()
    reader = build_reader(cfg.model_copy(update={"codes": cfg.codes.model_copy(update={"track": False})}))
    verifier = LocalClaimsVerifier()
    frame = ThermalFrame(img, 30.0, 0, 0.0)

    def per_frame() -> None:
        parser.feed(raw)
        faces = face320.detect(with_code)
        for code in reader.decode(with_code):
            verifier.verify(code.payload, now)
        if faces:
            measure_face(frame, faces[0].box, cal)

    return per_frame


def build_plate_reader(threads: int = 1, **options: Any) -> Any:
    """Return the plate reader the vehicle lane builds, with the station's defaults and ``options``."""
    from station.app import models_dir_for
    from station.config import StationConfig
    from station.lane.vision import build_plate_reader as build

    cfg = StationConfig()
    options.setdefault("low_memory", cfg.vehicle.plate_low_memory)
    options.setdefault("second_opinion", cfg.vehicle.plate_second_opinion)
    options.setdefault("track_s", cfg.vehicle.plate_track_s)
    reader, state = build(models_dir_for(cfg), threads=threads, max_side=cfg.vehicle.plate_max_side, **options)
    if reader is None:
        raise RuntimeError(f"plate reader: {state}")
    reader.warm_up()
    return reader


def replay(frames: list[tuple[float, np.ndarray, int]], person: Callable[[], None], reader: Any, gate: Any | None) -> dict[str, Any]:
    """Run the scene once: per frame the person lane's work, the gate, and a plate read when the gate lets it through."""
    per_frame: list[float] = []
    read_frames: list[float] = []
    cpu: list[float] = []  # this thread's CPU time per frame: what the frame costs, whatever else runs
    cpu_read: list[float] = []
    found_when_present = 0
    present = 0
    for t, image, plates_in_view in frames:
        t0, c0 = time.perf_counter(), time.thread_time()
        person()
        read = gate is None or gate.should_read(image, t)
        found = None
        if read:
            found = reader.read(image)
            if gate is not None:
                gate.read_done(len(found))
        dt, dc = (time.perf_counter() - t0) * 1000.0, (time.thread_time() - c0) * 1000.0
        per_frame.append(dt)
        cpu.append(dc)
        if read:
            read_frames.append(dt)
            cpu_read.append(dc)
        if plates_in_view and found is not None:
            present += 1
            found_when_present += any(p["text"] == "浙A12345" for p in found)
    per_frame.sort()
    return {
        "frames": len(per_frame),
        "median": round(statistics.median(per_frame), 1),
        "mean": round(statistics.fmean(per_frame), 1),
        "p95": round(per_frame[int(0.95 * (len(per_frame) - 1))], 1),
        "read_frames": len(read_frames),
        "skipped_frames": len(per_frame) - len(read_frames),
        "read_frame_median": round(statistics.median(read_frames), 1) if read_frames else None,
        "cpu_median": round(statistics.median(cpu), 1),
        "cpu_read_frame_median": round(statistics.median(cpu_read), 1) if cpu_read else None,
        "plate_read_right_on_read_frames_with_a_car": f"{found_when_present}/{present}",
    }


class SpinLoad:
    """Another process busy on the given CPU (a pure-Python spin loop), for the "under load" figures."""

    def __init__(self, cpu: int) -> None:
        self.cpu = cpu
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> SpinLoad:
        code = f"import os\nos.sched_setaffinity(0, {{{self.cpu}}})\nwhile True:\n    pass\n"
        self.proc = subprocess.Popen([sys.executable, "-c", code])
        time.sleep(0.5)  # let it start spinning
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)


def per_frame_compute(repeat: int = 2, memory_settings: bool = True, **reader_options: Any) -> dict[str, Any]:
    """Per-frame compute on one core, quiet and under load, gated (the station's [vehicle] gate defaults) and read on every frame.

    ``memory_settings``: as the daemon in the low-memory mode (``station.app.apply_memory_settings``:
    large allocations mmapped); process-wide, so a run without it is a separate process
    (``--without-memory-settings``).
    """
    from station.config import StationConfig
    from station.lane.plate_gate import PlateGate

    v = StationConfig().vehicle
    low = memory_settings and reader_options.get("low_memory", v.plate_low_memory)
    if low:
        from station.ops.malloc import mmap_large_allocations

        mmap_large_allocations()

    cpus = os.sched_getaffinity(0)
    cpu = min(cpus)
    os.sched_setaffinity(0, {cpu})  # onnxruntime's threads, started from here on, inherit it
    try:
        frames = vehicle_scene()
        person = _person_lane_work(1)
        reader = build_plate_reader(1, **reader_options)
        out: dict[str, Any] = {"cpu": cpu, "ort_threads": 1, "scene": f"{len(frames)} frames 640x480 at {FPS:g} fps", "repeat": repeat}
        out["memory_settings"] = bool(low)

        def runs(gated: bool) -> dict[str, Any]:
            def gate() -> PlateGate | None:
                return PlateGate(v.plate_gate_diff, v.plate_gate_max_skip_s, v.plate_gate_max_skip_empty_s) if gated else None

            results = [replay(frames, person, reader, gate()) for _ in range(repeat)]
            best = min(results, key=lambda r: r["median"])  # the least disturbed run on a shared machine
            best["medians_of_runs"] = [r["median"] for r in results]
            return best

        out["quiet"] = {"gated": runs(True), "every_frame": runs(False)}
        with SpinLoad(cpu):
            out["under_load"] = {"gated": runs(True), "every_frame": runs(False)}
        out["load"] = f"one other process spinning on CPU {cpu} (the same core)"
        return out
    finally:
        os.sched_setaffinity(0, cpus)


def plate_accuracy(**reader_options: Any) -> dict[str, Any]:
    """Exact plates on the evaluation set with this reader configuration, each picture on its own (no tracking)."""
    from bench.plates import evaluate, real_dir, summarise

    reader = build_plate_reader(1, **{**reader_options, "track_s": 0.0})
    s = summarise(evaluate(reader.read))
    return {
        "real_dir": str(real_dir()),
        "missing_images": len(s["missing_images"]),
        "median_ms_per_image": s["median_ms_per_image"],
        "splits": s["splits"],
        "groups": {k: g["all"] for k, g in s["groups"].items()},
    }


def run(
    *,
    daemon: bool = True,
    accuracy: bool = False,
    daemon_seconds: float = 20.0,
    repeat: int = 2,
    low_memory: bool = True,
    memory_settings: bool = True,
    second_opinion: bool = True,
) -> dict[str, Any]:
    """Return the vehicle lane's figures and the targets they are held against."""
    out: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "note": "shared 2-core VM, other jobs running: medians, noisy"},
        "plate_low_memory": low_memory,
        "plate_second_opinion": second_opinion,
    }
    fc = per_frame_compute(repeat, memory_settings, low_memory=low_memory, second_opinion=second_opinion)
    out["per_frame_compute_ms"] = fc
    out["per_frame_quiet_ms"] = fc["quiet"]["gated"]["median"]
    out["per_frame_under_load_ms"] = fc["under_load"]["gated"]["median"]
    targets: dict[str, Any] = {
        "per_frame_under_load_ms": {"measured": out["per_frame_under_load_ms"], "target_max": TARGET_PER_FRAME_MS},
        "per_frame_quiet_ms": {"measured": out["per_frame_quiet_ms"], "target_max": TARGET_PER_FRAME_MS},
    }
    if daemon:
        from bench.daemon import footprint

        extra = ("" if low_memory else "plate_low_memory = false\n") + ("" if second_opinion else "plate_second_opinion = false\n")
        fp = footprint(daemon_seconds, one_core=True, vehicle=True, vehicle_extra=extra)
        out["daemon"] = fp
        out["daemon_rss_mb"] = fp["rss_mb"]["max"]
        targets["daemon_rss_mb"] = {"measured": out["daemon_rss_mb"], "target_max": TARGET_RSS_MB}
    if accuracy:
        out["plate_accuracy"] = plate_accuracy(low_memory=low_memory, second_opinion=second_opinion)
    for row in targets.values():
        row["met"] = row["measured"] is not None and row["measured"] <= row["target_max"]
    out["targets"] = targets
    return out


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.vehicle", description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="compact JSON on stdout")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    ap.add_argument("--no-daemon", action="store_true", help="skip the daemon's RSS (the per-frame figures only)")
    ap.add_argument("--accuracy", action="store_true", help="also read the plate evaluation set (bench.plates)")
    ap.add_argument("--daemon-seconds", type=float, default=20.0)
    ap.add_argument("--repeat", type=int, default=2, help="scene replays per figure (the least disturbed is kept)")
    ap.add_argument("--arena", action="store_true", help="plate models with onnxruntime's arena (vehicle.plate_low_memory = false)")
    ap.add_argument(
        "--without-memory-settings",
        action="store_true",
        help="per-frame figures without the daemon's low-memory malloc setting (the before of that change)",
    )
    ap.add_argument("--no-second-opinion", action="store_true", help="plates read by the main recogniser alone (the before of that change)")
    args = ap.parse_args()
    result = run(
        daemon=not args.no_daemon,
        accuracy=args.accuracy,
        daemon_seconds=args.daemon_seconds,
        repeat=args.repeat,
        low_memory=not args.arena,
        memory_settings=not args.without_memory_settings,
        second_opinion=not args.no_second_opinion,
    )
    text = json.dumps(result, ensure_ascii=False, indent=None if args.json else 2)
    if args.out:
        args.out.write_text(json.dumps(result, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(text)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
