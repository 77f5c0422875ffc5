"""Where the vehicle-lane daemon's memory goes: ``python -m bench.vehicle_rss [--runs 3] [--seconds 20] [--json] [--out FILE]``.

Runs the real ``station run`` in vehicle mode on one core, as ``bench.vehicle`` does
(``bench.daemon.footprint``: the demo scene, one onnxruntime thread), and per run gives:

- ``rss_mb``: VmRSS after the first decision, sampled every second as ``bench.daemon`` does
  (median and max), and every 0.1 s (``fine``: the max a 1 s sampler can miss);
- ``at_end``: /proc/PID/smaps_rollup (Rss, Anonymous, file-backed) and the resident memory per
  mapping, grouped: the heap and anonymous mappings, each shared library, each model file;
- ``modules``: how many Python modules the daemon imported (its ``python -X importtime`` log,
  ``PYTHONPROFILEIMPORTTIME``), and the packages with the most.

``--vehicle-extra`` adds [vehicle] keys to the daemon's config (e.g. ``plate_low_memory = false``),
``--env K=V`` sets an environment variable for the daemon (e.g. ``MALLOC_ARENA_MAX=2``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

IMPORT_LINE = re.compile(r"import time:\s+(\d+)\s+\|\s+(\d+)\s+\|\s+(\S.*)$")


def _status_kb(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[key] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return out


def smaps_rollup(pid: int) -> dict[str, float]:
    """Return the rollup's sizes in MB (Rss, Pss, Anonymous, Private_Dirty, …)."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB":
            out[key] = round(int(parts[0]) / 1024.0, 1)
    return out


def smaps_groups(pid: int) -> dict[str, float]:
    """Return resident MB per mapping group: each file by name, ``[heap]``, ``[anon]`` and the other special mappings."""
    groups: Counter[str] = Counter()
    name = "[anon]"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(None, 5)
        if head and re.fullmatch(r"[0-9a-f]+-[0-9a-f]+", head[0]):
            path = head[5].strip() if len(head) > 5 else ""
            name = Path(path).name if path.startswith("/") else (path or "[anon]")
        elif line.startswith("Rss:"):
            groups[name] += int(line.split()[1])
    return {k: round(v / 1024.0, 1) for k, v in groups.most_common() if v >= 256}


def imported_modules(log_text: str) -> dict[str, Any]:
    """Count the modules in an importtime log; the top-level packages by module count and cumulative µs."""
    per_pkg: Counter[str] = Counter()
    cumulative: dict[str, int] = {}
    names: list[str] = []
    for line in log_text.splitlines():
        m = IMPORT_LINE.search(line)
        if not m:
            continue
        raw = m.group(3)
        mod = raw.strip()
        names.append(mod)
        top = mod.split(".")[0]
        per_pkg[top] += 1
        if raw == raw.lstrip():  # a top-level import: its cumulative time is the whole package's
            cumulative[top] = cumulative.get(top, 0) + int(m.group(2))
    return {
        "count": len(names),
        "packages_by_modules": dict(per_pkg.most_common(25)),
        "top_level_cumulative_ms": {k: round(v / 1000.0, 1) for k, v in sorted(cumulative.items(), key=lambda kv: -kv[1])[:25]},
        "names": sorted(names),
    }


def one_run(seconds: float, vehicle_extra: str, env: dict[str, str], seed: int = 3, dump: Path | None = None) -> dict[str, Any]:
    """Run the vehicle-lane daemon once; return its RSS series, end-of-run smaps and imported modules."""
    from bench.soak import MjpegScene, Supervisor, _point, write_config
    from sim.demo import cast_people
    from sim.gy_mcu90640_emulator import GyMcu90640Emulator
    from sim.scene import SceneDirector, SceneGeometry, SceneTiming
    from sim.scene_camera import SceneCamera
    from station.config import StationConfig

    base = StationConfig()
    director = SceneDirector(cast_people(200, base, time.time()), SceneTiming.fast(base.screening.leave_after_s), SceneGeometry())
    work = Path(tempfile.mkdtemp(prefix="bench-vehicle-rss-"))
    from sim.thermal_render import ThermalSceneRenderer

    emulator = GyMcu90640Emulator(ThermalSceneRenderer(director, seed=seed), baud=460800, refresh_hz=8)
    camera = MjpegScene(SceneCamera(director, fps=10, seed=seed))
    extra = '\n[detector]\nthreads = 1\n\n[vehicle]\nmode = "vehicle"\n' + vehicle_extra
    saved = {k: os.environ.get(k) for k in [*env, "PYTHONPROFILEIMPORTTIME"]}
    os.environ.update(env)  # the Supervisor passes os.environ to the daemon
    os.environ["PYTHONPROFILEIMPORTTIME"] = "1"
    emulator.start()
    camera.start()
    sup: Supervisor | None = None
    fine: list[tuple[float, dict[str, int]]] = []
    stop = threading.Event()
    out: dict[str, Any] = {}
    try:
        link = work / "thermal-link"
        _point(link, emulator.port)
        config = write_config(work, link, camera.url, None, extra)
        sup = Supervisor(work, config, director, rss_every_s=1.0, cpus={0})
        sup.start()

        def sample() -> None:
            while not stop.wait(0.1):
                pid = sup.pid() if sup is not None else None
                if pid is not None:
                    fine.append((time.monotonic(), _status_kb(pid)))

        threading.Thread(target=sample, daemon=True).start()
        deadline = time.monotonic() + 120
        while not sup.first_decision_s and time.monotonic() < deadline:
            time.sleep(0.1)
        t_first = time.monotonic()
        time.sleep(seconds)
        pid = sup.pid()
        assert pid is not None, "the daemon is not running"
        out["at_end"] = {"rollup_mb": smaps_rollup(pid), "groups_mb": smaps_groups(pid), "status_kb": _status_kb(pid)}
        out["threads"] = len(os.listdir(f"/proc/{pid}/task"))
        if dump is not None:
            dump.mkdir(parents=True, exist_ok=True)
            (dump / f"smaps-{pid}.txt").write_text(Path(f"/proc/{pid}/smaps").read_text())
            (dump / f"threads-{pid}.txt").write_text(
                "\n".join(Path(f"/proc/{pid}/task/{t}/comm").read_text().strip() for t in os.listdir(f"/proc/{pid}/task"))
            )
        stop.set()
        after = [s["rss_mb"] for s in sup.rss if s["t"] >= t_first and s["pid"] == pid]
        fine_after = [s["VmRSS"] / 1024.0 for t, s in fine if t >= t_first and "VmRSS" in s]
        anon_after = [s["RssAnon"] / 1024.0 for t, s in fine if t >= t_first and "RssAnon" in s]
        out["rss_mb"] = {
            "median": statistics.median(after) if after else None,
            "max": max(after, default=None),
            "samples": len(after),
            "fine": {
                "median": round(statistics.median(fine_after), 1) if fine_after else None,
                "max": round(max(fine_after, default=0.0), 1),
                "samples": len(fine_after),
            },
            "anon_fine": {
                "median": round(statistics.median(anon_after), 1) if anon_after else None,
                "max": round(max(anon_after, default=0.0), 1),
            },
        }
        out["decisions"] = len(sup.announced)
        out["restarts"] = dict(sup.restarts)
        out["first_decision_s"] = sup.first_decision_s[0] if sup.first_decision_s else None
    finally:
        stop.set()
        if sup is not None:
            sup.stop()
        camera.stop()
        emulator.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    log_text = (work / "daemon.log").read_text(encoding="utf-8", errors="replace")
    out["modules"] = imported_modules(log_text)
    if dump is not None:
        (dump / f"daemon-{len(list(dump.glob('daemon-*.log')))}.log").write_text(log_text, encoding="utf-8")
    out["plate_reads"] = log_text.count("plate")
    shutil.rmtree(work, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.vehicle_rss", description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--vehicle-extra", default="", help="more [vehicle] keys for the daemon's config (TOML lines)")
    ap.add_argument("--env", action="append", default=[], help="K=V for the daemon's environment")
    ap.add_argument("--label", default="")
    ap.add_argument("--json", action="store_true", help="compact JSON on stdout")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    ap.add_argument("--names", action="store_true", help="keep the imported modules' names in the output")
    ap.add_argument("--dump", type=Path, help="write each run's full smaps and thread names into this directory")
    args = ap.parse_args()
    env = dict(kv.split("=", 1) for kv in args.env)
    runs = [one_run(args.seconds, args.vehicle_extra.replace("\\n", "\n"), env, dump=args.dump) for _ in range(args.runs)]
    if not args.names:
        for r in runs:
            r["modules"].pop("names", None)
    result = {
        "label": args.label,
        "vehicle_extra": args.vehicle_extra,
        "env": env,
        "load_average": os.getloadavg(),
        "runs": runs,
        "rss_mb_median_of_runs": [r["rss_mb"]["median"] for r in runs],
        "rss_mb_max_of_runs": [r["rss_mb"]["max"] for r in runs],
        "rss_mb_fine_max_of_runs": [r["rss_mb"]["fine"]["max"] for r in runs],
    }
    text = json.dumps(result, ensure_ascii=False, indent=None if args.json else 1)
    if args.out:
        args.out.write_text(json.dumps(result, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(text)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
