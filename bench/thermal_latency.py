"""Thermal latency: ``python -m bench.thermal_latency [--people N] [--one-core] [--json]``.

1. last frame byte → updated face temperature: a parser holding a frame minus its last byte is fed
   that byte; the clock stops when the face's reading (``measure_face``) is out. Median of many.
2. person enters the zone → decision, through the real pipeline (demo lane, ``--fast`` queue), with
   the GY-MCU90640 emulator pacing the link at 460800 baud / 8 Hz and at 115200 baud / 4 Hz.
   People whose decision waits out the code timeout by design (no code, invalid code) measure the
   timeout, not the path, and are reported apart.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.stats import percentile

LINKS = ((460800, 8), (115200, 4))


def last_byte_to_temperature(repeat: int = 2000) -> dict[str, Any]:
    from drivers.thermal.gy_protocol import DecodedFrame, FrameParser, encode_frame, image_to_module_order
    from sim.scene import SceneGeometry
    from sim.thermal_render import ThermalSceneRenderer
    from station.app import calibration_for
    from station.config import StationConfig
    from station.domain.model import ThermalFrame
    from station.domain.thermal import MeasureState, measure_face

    geo = SceneGeometry()
    box = geo.face_box_at(0.55)
    img, die = ThermalSceneRenderer(None, seed=1, geometry=geo).render_people([(36.8, box)])
    raw = encode_frame(image_to_module_order(img), int(round(die * 100)))
    cal = calibration_for(StationConfig())
    parser = FrameParser()
    times = []
    state = ""
    for i in range(repeat + 20):
        parser.feed(raw[:-1])
        t0 = time.perf_counter()
        (item,) = parser.feed(raw[-1:])
        assert isinstance(item, DecodedFrame)  # a whole frame, never an emissivity reply (tens of ns in the timed span)
        m = measure_face(ThermalFrame(item.pixels_c, item.die_c, i, t0), box, cal)
        dt = (time.perf_counter() - t0) * 1000.0
        state = m.state
        if i >= 20:
            times.append(dt)
    assert state == MeasureState.MEASURED
    return {
        "median_ms": round(statistics.median(times), 4),
        "p99_ms": round(float(np.percentile(times, 99)), 4),
        "n": repeat,
        "target_ms": 10.0,
    }


def decision_latency(people: int, baud: int, hz: float) -> dict[str, Any]:
    from sim.demo import DemoRun, summary
    from station.config import StationConfig

    with tempfile.TemporaryDirectory() as d:
        run = DemoRun(StationConfig(), people=people, data_dir=Path(d), fast=True, thermal_link=(baud, hz))
        result = run.run()
    s = summary(result)
    screened = [dec.event.latency_ms["total"] for _, dec in result.decided if not dec.event.reason.startswith(("no_code", "code_invalid"))]
    temp = [dec.event.latency_ms["temperature"] for _, dec in result.decided if "temperature" in dec.event.latency_ms]
    return {
        "link": f"{baud} baud / {hz:g} Hz",
        "people": people,
        "ground_truth_agreement": s["ground_truth_agreement"],
        "decision_ms": {"p50": percentile(screened, 0.5), "p95": percentile(screened, 0.95), "max": max(screened), "n": len(screened)},
        "temperature_ms": {"p50": percentile(temp, 0.5), "p95": percentile(temp, 0.95)},
        "p95_under_1s": percentile(screened, 0.95) <= 1000.0,
        "thermal_link": s["thermal"],
    }


def run(people: int = 40) -> dict[str, Any]:
    out: dict[str, Any] = {"last_byte_to_face_temperature": last_byte_to_temperature()}
    for baud, hz in LINKS:
        out[f"enter_to_decision_{baud}_{hz}hz"] = decision_latency(people, baud, hz)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.thermal_latency", description=__doc__.splitlines()[0])
    ap.add_argument("--people", type=int, default=40)
    ap.add_argument("--one-core", action="store_true", help="pin to CPU 0 (Pi-class)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.one_core:
        os.sched_setaffinity(0, {0})
    print(json.dumps(run(args.people), indent=None if args.json else 2))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
