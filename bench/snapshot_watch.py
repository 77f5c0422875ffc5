"""What watching a checkpoint costs: ``python -m bench.snapshot_watch [--json] [--one-core] [--repeat N]``.

The station side: one snapshot as the station makes it (station/link/snapshots.py: the face
detector run on the frame, faces blurred, 2-D codes blanked, downscaled, JPEG) on a demo scene
frame of a person holding a phone, timed with one onnxruntime thread; from it the CPU share and
the bytes per second of one station idle (``snapshots.interval_s``, 5 s) and watched
(``watch_interval_s``, 1 s). With ``--one-core`` the process is pinned to CPU 0 (Pi-class).

The centre side: the memory one replica's :class:`SnapshotStore` takes for 2 000 stations' pictures
of that size (tracemalloc, the store's own objects), and the time to take one message (parse and
store, the MQTT thread's work). Medians over ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import tracemalloc
from typing import Any


def station_side(repeat: int) -> dict[str, Any]:
    """Time one snapshot render (detector + blur + code blanking + JPEG) and report its size."""
    from sim.scene import Phase, SceneGeometry, ScenePerson, SceneState
    from sim.scene_camera import SceneRenderer
    from station.codes.local_claims import encode_claims
    from station.domain.model import CodeColour
    from station.lane.vision import build_face_detector
    from station.link.snapshots import SNAPSHOT_SCORE_THRESHOLD, SnapshotSettings, render_snapshot
    from station.models import default_models_dir

    geo = SceneGeometry()
    now = time.time()
    person = ScenePerson(0, 36.6, CodeColour.GREEN, encode_claims(CodeColour.GREEN, int(now), int(now) + 3600, "bench"))
    frame = SceneRenderer().render(SceneState(0.0, Phase.STANDING, person, 0.55, geo.face_box_at(0.55), True))
    detector = build_face_detector("ultraface-rfb-320", default_models_dir(), score_threshold=SNAPSHOT_SCORE_THRESHOLD, threads=1)
    detector.warm_up()
    settings = SnapshotSettings()
    for _ in range(3):
        render_snapshot(frame, detector, settings)
    times: list[float] = []
    sizes: list[int] = []
    meta: dict[str, Any] = {}
    for _ in range(repeat):
        t0 = time.perf_counter()
        jpeg, meta = render_snapshot(frame, detector, settings)
        times.append((time.perf_counter() - t0) * 1000.0)
        sizes.append(len(jpeg))
    import cv2
    import numpy as np

    from station.app import build_reader
    from station.config import StationConfig

    reader = build_reader(StationConfig())
    readable_before = len(reader.decode(frame))
    decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None
    shown = cv2.resize(decoded, (frame.shape[1], frame.shape[0]))
    readable_after = len(reader.decode(shown))
    render_ms = statistics.median(times)
    jpeg_bytes = int(statistics.median(sizes))
    payload_bytes = int(jpeg_bytes * 4 / 3) + 260  # base64 plus the JSON envelope (station/link/snapshots.py)
    idle_s, watched_s = settings.interval_s, settings.watch_interval_s
    return {
        "frame": f"{frame.shape[1]}x{frame.shape[0]} demo scene, a person holding a phone with a health code",
        "blur": meta.get("blur"),
        "faces_blurred": meta.get("faces_blurred"),
        "codes_blanked": meta.get("codes_blanked"),
        "codes_readable_in_frame": readable_before,
        "codes_readable_in_snapshot": readable_after,
        "render_ms_median": round(render_ms, 1),
        "render_ms_p90": round(sorted(times)[int(0.9 * (len(times) - 1))], 1),
        "jpeg_bytes_median": jpeg_bytes,
        "payload_bytes": payload_bytes,
        "idle": {
            "interval_s": idle_s,
            "cpu_pct_of_one_core": round(100 * render_ms / 1000 / idle_s, 2),
            "bytes_per_s": round(payload_bytes / idle_s),
        },
        "watched": {
            "interval_s": watched_s,
            "cpu_pct_of_one_core": round(100 * render_ms / 1000 / watched_s, 2),
            "bytes_per_s": round(payload_bytes / watched_s),
        },
        "_jpeg": jpeg,
    }


def centre_side(jpeg: bytes, stations: int = 2000, repeat: int = 2000) -> dict[str, Any]:
    """Memory of a replica's store holding ``stations`` pictures of ``jpeg``'s size, and the cost of taking one message."""
    from station.centre.live import SnapshotStore, parse_snapshot
    from station.link.snapshots import snapshot_payload

    meta = {"blur": "faces", "faces_blurred": 1, "width": 320, "height": 240}
    messages = [snapshot_payload(jpeg, meta, {"station_id": f"st-{i}", "site": "bench"}, time.time()) for i in range(stations)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    store = SnapshotStore()
    for i, raw in enumerate(messages):
        store.offer("bench", f"st-{i}", parse_snapshot("bench", f"st-{i}", raw, time.time()))
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert store.stats()["stations"] == stations
    times = []
    for i in range(repeat):
        raw = messages[i % stations]
        t0 = time.perf_counter()
        store.offer("bench", f"st-{i % stations}", parse_snapshot("bench", f"st-{i % stations}", raw, time.time()))
        times.append((time.perf_counter() - t0) * 1e6)
    return {
        "stations": stations,
        "picture_bytes": len(jpeg),
        "store_bytes_traced": held,
        "store_mib": round(held / 2**20, 1),
        "overhead_per_picture_bytes": round(held / stations - len(jpeg)),
        "take_one_message_us_median": round(statistics.median(times), 1),
    }


def main() -> None:
    """Run both sides and print the figures (JSON with ``--json``)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--one-core", action="store_true", help="pin to CPU 0 (Pi-class figures)")
    ap.add_argument("--repeat", type=int, default=40)
    args = ap.parse_args()
    if args.one_core:
        os.sched_setaffinity(0, {0})
    station = station_side(args.repeat)
    jpeg = station.pop("_jpeg")
    out = {
        "bench": "snapshot_watch",
        "host": platform.node(),
        "machine": platform.machine(),
        "one_core": args.one_core,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "station": station,
        "centre": centre_side(jpeg),
    }
    if args.json:
        print(json.dumps(out, indent=1))  # noqa: T201
    else:
        s, c = out["station"], out["centre"]
        print(  # noqa: T201
            f"snapshot render {s['render_ms_median']} ms (p90 {s['render_ms_p90']}), {s['jpeg_bytes_median']} B JPEG; "
            f"idle {s['idle']['cpu_pct_of_one_core']} % of a core, {s['idle']['bytes_per_s']} B/s; "
            f"watched {s['watched']['cpu_pct_of_one_core']} %, {s['watched']['bytes_per_s']} B/s; "
            f"centre: {c['stations']} pictures {c['store_mib']} MiB, {c['take_one_message_us_median']} us a message",
            file=sys.stdout,
        )


if __name__ == "__main__":
    main()
