"""The running daemon's footprint: ``python -m bench.daemon [--seconds 30] [--one-core] [--vehicle]``.

Starts the real ``station run`` (a subprocess, models loaded) on the demo scene — the same devices as
the soak (bench/soak.py): GY-MCU90640 emulator on a pty, the scene camera as an MJPEG stream, mock
GPIO, no broker — and measures:

- ``cold_start_s``: spawn → READY=1 on the notify socket (config, store, model warm-up, devices);
- ``first_decision_s``: spawn → the first decision in its log (a person is already walking up);
- ``rss_mb``: VmRSS of the daemon's pid from /proc, sampled every second while people walk up
  (median and max after the first decision).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def footprint(
    seconds: float = 30.0, *, one_core: bool = False, vehicle: bool = False, seed: int = 3, vehicle_extra: str = ""
) -> dict[str, Any]:
    """Run the daemon on the demo scene; return its cold start, first decision and RSS (``vehicle_extra``: more [vehicle] keys)."""
    from bench.soak import MjpegScene, Supervisor, _point, write_config
    from sim.demo import cast_people
    from sim.gy_mcu90640_emulator import GyMcu90640Emulator
    from sim.scene import SceneDirector, SceneGeometry, SceneTiming
    from sim.scene_camera import SceneCamera
    from sim.thermal_render import ThermalSceneRenderer
    from station.config import StationConfig

    base = StationConfig()
    director = SceneDirector(cast_people(200, base, time.time()), SceneTiming.fast(base.screening.leave_after_s), SceneGeometry())
    work = Path(tempfile.mkdtemp(prefix="bench-daemon-"))
    emulator = GyMcu90640Emulator(ThermalSceneRenderer(director, seed=seed), baud=460800, refresh_hz=8)
    camera = MjpegScene(SceneCamera(director, fps=10, seed=seed))
    extra = "\n[detector]\nthreads = 1\n" if one_core else ""
    if vehicle:
        extra += '\n[vehicle]\nmode = "vehicle"\n' + vehicle_extra
    emulator.start()
    camera.start()
    sup: Supervisor | None = None
    try:
        link = work / "thermal-link"
        _point(link, emulator.port)
        config = write_config(work, link, camera.url, None, extra)
        sup = Supervisor(work, config, director, rss_every_s=1.0, cpus={0} if one_core else None)
        sup.start()
        deadline = time.monotonic() + 120
        while not sup.first_decision_s and time.monotonic() < deadline:
            time.sleep(0.1)
        t_first = time.monotonic()
        time.sleep(seconds)
        pid = sup.pid()
        after = [s["rss_mb"] for s in sup.rss if s["t"] >= t_first and s["pid"] == pid]
        decisions = len(sup.announced)
        restarts = dict(sup.restarts)
    finally:
        if sup is not None:
            sup.stop()
        camera.stop()
        emulator.stop()
    shutil.rmtree(work, ignore_errors=True)
    return {
        "lane": "vehicle (face + QR + plate models)" if vehicle else "person (face + QR)",
        "pinned_one_core": one_core,
        "ort_threads": 1 if one_core else base.detector.threads,
        "cold_start_s": sup.cold_start_s[0] if sup and sup.cold_start_s else None,
        "first_decision_s": sup.first_decision_s[0] if sup and sup.first_decision_s else None,
        "rss_mb": {"median": statistics.median(after) if after else None, "max": max(after, default=None), "samples": len(after)},
        "decisions": decisions,
        "window_s": seconds,
        "restarts": restarts,
    }


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.daemon", description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--one-core", action="store_true", help="pin the daemon to CPU 0 with one onnxruntime thread")
    ap.add_argument("--vehicle", action="store_true", help="vehicle lane: the plate reader is loaded too")
    args = ap.parse_args()
    print(json.dumps(footprint(args.seconds, one_core=args.one_core, vehicle=args.vehicle), indent=2))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
