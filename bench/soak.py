"""Fault soak: ``python -m bench.soak [--minutes 10 | --hours H] [--seed 1] [--json] [--out FILE]``.

Runs the real daemon (``station run --config …``, a subprocess, models loaded) on the demo scene for
``--minutes`` against a real mosquitto, while injecting faults on a seeded schedule, and then checks
that no event was lost. Not part of the test suite (it takes minutes by design).

This module is the box around the daemon — what systemd, the devices and the network are on a real
station:

- **systemd**: starts ``station run`` with ``NOTIFY_SOCKET`` and ``WATCHDOG_USEC`` (WatchdogSec=4),
  restarts it whenever it exits (Restart=always, RestartSec=1), and when WATCHDOG=1 pings stop for
  WatchdogSec sends SIGABRT and then SIGKILL, as systemd does. More than 5 starts in 10 s is a crash
  loop (StartLimitBurst=5).
- **devices**: the demo scene (``sim.scene``) drives a GY-MCU90640 emulator on a pty (the daemon's
  ``thermal.port`` is a symlink, re-pointed after a replug, as udev's by-id link is) and a camera served
  as MJPEG over HTTP (the daemon's ``camera.device`` is the URL; OpenCV/FFmpeg opens it as it opens an IP
  camera). The scene learns the daemon's decisions from its structured log, so people walk on.
- **network**: the daemon reaches mosquitto through a TCP proxy this module controls (a partition
  black-holes it); a "centre" subscriber with a persistent session connects to the broker directly.

Faults (one at a time, kinds shuffled per round so each occurs): serial garbage, thermal unplug/
replug, camera stall, broker SIGKILL + restart, network partition, disk full (the daemon's
RLIMIT_FSIZE dropped to 1 byte with ``prlimit``; CPython ignores SIGXFSZ so writes fail with EFBIG,
as on a full disk), daemon SIGKILL, and a hung process (SIGSTOP: pings stop, the watchdog must fire).

Checks: every decision the daemon announced is in SQLite; every stored screening event reached the
centre (de-duplicated by ``msg_id``); duplicates counted; restarts by cause; RSS samples of the
running daemon. A decision whose write failed (disk full) is held in memory and written later; if the
process is killed meanwhile it is counted as ``unrecorded_lost_with_killed_process`` — the gate never
acted on such a decision (the pipeline only commands the gate after a durable write).

Long soak (``--hours``, issue 18): walk-ups follow a compressed market day (``WALKUP_PROFILE``: a
morning peak, a quiet afternoon, an evening rise, repeated every ``--day-min``), faults come 2–6 min
apart (none that ends the daemon in the first ``--steady-min``, 70 by default, so one incarnation holds a
whole compressed day and a slow leak has time to show), and every ``--sample-s`` the daemon's RSS,
FDs, threads, CPU and write counters and the data dir's sizes and outbox depth are appended to a
JSON-lines file (``bench.soak_series``), which also fits the slopes per hour, the bytes written per
screening and the plot. A slope clearly above zero fails the soak like a lost event does.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.server
import json
import os
import random
import re
import resource
import select
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench import soak_series

ROOT = Path(__file__).resolve().parents[1]
WATCHDOG_SEC = 4.0
RESTART_SEC = 1.0
START_TIMEOUT_S = 90.0
START_LIMIT = (5, 10.0)  # StartLimitBurst, StartLimitIntervalSec
FAULT_KINDS = (
    "serial_garbage",
    "thermal_unplug",
    "camera_stall",
    "broker_kill",
    "network_partition",
    "disk_full",
    "daemon_sigkill",
    "hung_pipeline",
)
# Faults that end the daemon (the supervisor starts a new one). Held back for the first ``steady_min`` of
# a long soak: a slow leak needs one incarnation long enough to show, the whole compressed day in it.
DAEMON_ENDING_FAULTS = frozenset({"daemon_sigkill", "hung_pipeline"})
STEADY_MIN_LONG = 70.0  # one compressed market day (60 min) and the warm-up, with --hours


# A market day compressed: (start, end) as fractions of the day, name, mean extra empty-lane seconds
# between people on top of the minimum gap (exponential: arrivals are a Poisson stream; 0 = back to back,
# a queue). At the bench's fast walking pace back to back is ~20 screenings a minute, 40 s ~1.4 a minute.
WALKUP_PROFILE: tuple[tuple[float, float, str, float], ...] = (
    (0.00, 0.25, "morning peak", 0.0),
    (0.25, 0.40, "late morning", 8.0),
    (0.40, 0.85, "quiet afternoon", 40.0),
    (0.85, 1.00, "evening", 4.0),
)


def next_fault(round_kinds: list[str], rng: random.Random, *, steady: bool) -> str:
    """Take the next fault kind from this round (a new shuffled round when empty); while ``steady``, none that ends the daemon."""
    if not round_kinds:
        round_kinds.extend(FAULT_KINDS)
        rng.shuffle(round_kinds)
    allowed = [k for k in round_kinds if not (steady and k in DAEMON_ENDING_FAULTS)]
    if not allowed:  # only daemon-ending faults left in this round: they wait, a new round's others go first
        allowed = [k for k in FAULT_KINDS if k not in DAEMON_ENDING_FAULTS]
        rng.shuffle(allowed)
        round_kinds[:0] = allowed
    kind = allowed[-1]
    round_kinds.remove(kind)
    return kind


class PacedDirector:
    """The scene's director with the empty-lane gap drawn from the walk-up profile before each next person."""

    def __init__(self, director: Any, day_s: float, t0: float, seed: int) -> None:
        self.director = director
        self.day_s = day_s
        self.t0 = t0
        self.min_gap_s = float(director.timing.gap_s)
        self.rng = random.Random(seed)
        self._set_gap()

    def phase(self, now: float | None = None) -> str:
        """Return the profile phase at ``now`` (monotonic)."""
        return self._phase(now)[2]

    def _phase(self, now: float | None = None) -> tuple[float, float, str, float]:
        frac = (((time.monotonic() if now is None else now) - self.t0) % self.day_s) / self.day_s
        return next((p for p in WALKUP_PROFILE if p[0] <= frac < p[1]), WALKUP_PROFILE[-1])

    def _set_gap(self) -> None:
        mean = self._phase()[3]
        self.director.timing.gap_s = self.min_gap_s + (self.rng.expovariate(1.0 / mean) if mean > 0 else 0.0)

    def on_decision(self, decision: str) -> None:
        """Draw the gap before the next person, then tell the director."""
        self._set_gap()
        self.director.on_decision(decision)


# -- the camera: the scene as an MJPEG stream ---------------------------------------------------------


class MjpegScene:
    """Renders the scene camera at its frame rate and serves it as ``multipart/x-mixed-replace``."""

    def __init__(self, camera: Any, quality: int = 90) -> None:
        import cv2

        self._cv2 = cv2
        self.camera = camera
        self.quality = quality
        self._cond = threading.Condition()
        self._jpeg: bytes | None = None
        self._n = 0
        self._stop = threading.Event()
        self.stalled_until = 0.0
        self.clients = 0
        scene = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                scene.clients += 1
                seen = scene._n
                try:
                    while not scene._stop.is_set():
                        with scene._cond:
                            scene._cond.wait_for(lambda: scene._n != seen or scene._stop.is_set(), timeout=1.0)  # noqa: B023 (called within this pass)
                            jpeg, seen = scene._jpeg, scene._n
                        if jpeg is None or time.monotonic() < scene.stalled_until:
                            continue  # a stalled camera: the connection stays open, nothing arrives
                        self.wfile.write(
                            b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                            + str(len(jpeg)).encode()
                            + b"\r\n\r\n"
                            + jpeg
                            + b"\r\n"
                        )
                except OSError:
                    pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/scene.mjpg"

    def start(self) -> None:
        self.camera.start()
        threading.Thread(target=self._produce, name="scene-camera", daemon=True).start()
        threading.Thread(target=self.server.serve_forever, name="scene-http", daemon=True).start()

    def stall(self, seconds: float) -> None:
        self.stalled_until = time.monotonic() + seconds

    def _produce(self) -> None:
        params = [int(self._cv2.IMWRITE_JPEG_QUALITY), self.quality]
        while not self._stop.is_set():
            frame = self.camera.read(timeout=0.5)
            if frame is None:
                continue
            ok, buf = self._cv2.imencode(".jpg", frame.image, params)
            if ok:
                with self._cond:
                    self._jpeg, self._n = buf.tobytes(), self._n + 1
                    self._cond.notify_all()

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self.server.shutdown()
        self.camera.stop()


# -- the network: a TCP proxy that can be partitioned --------------------------------------------------


class PartitionProxy:
    """Forwards 127.0.0.1:<port> to the broker; ``cut()`` black-holes traffic, ``heal()`` resets it."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        self.cut_now = False
        self._lock = threading.Lock()
        self._conns: list[tuple[socket.socket, socket.socket | None]] = []
        self._stop = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def cut(self) -> None:
        self.cut_now = True

    def heal(self) -> None:
        # Bytes were dropped mid-stream while cut: those sessions are unusable, as after a long
        # partition; close them so the client reconnects.
        with self._lock:
            conns, self._conns = self._conns, []
            self.cut_now = False
        for a, b in conns:
            for s in (a, b):
                if s is not None:
                    with contextlib.suppress(OSError):
                        s.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            up: socket.socket | None = None
            if not self.cut_now:
                try:
                    up = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=2)
                except OSError:
                    client.close()  # broker down: connection refused, as without the proxy
                    continue
            with self._lock:
                self._conns.append((client, up))
            threading.Thread(target=self._pump, args=(client, up), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket | None) -> None:
        socks = [s for s in (a, b) if s is not None]
        try:
            while not self._stop.is_set():
                r, _, _ = select.select(socks, [], [], 0.5)
                for s in r:
                    data = s.recv(65536)
                    if not data:
                        raise OSError("closed")
                    if self.cut_now or b is None:
                        continue  # the partition: bytes vanish, nobody is told
                    (b if s is a else a).sendall(data)
        except (OSError, ValueError):
            pass
        finally:
            for s in socks:
                with contextlib.suppress(OSError):
                    s.close()

    def stop(self) -> None:
        self._stop.set()
        self.sock.close()
        self.heal()


# -- the centre: a persistent-session subscriber -------------------------------------------------------


class Centre:
    def __init__(self, port: int, topic: str) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

        self.topic = topic
        self.lock = threading.Lock()
        self.msg_ids: Counter[str] = Counter()
        self.events: dict[str, str] = {}  # event_id → msg_id of its first copy (screening topic)
        self.event_msgs: dict[str, set[str]] = {}  # event_id → every msg_id it came under (> 1: a duplicate event)
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="soak-centre", protocol=MQTTProtocolVersion.MQTTv311, clean_session=False
        )
        self.client.reconnect_delay_set(0.1, 1)  # type: ignore[arg-type]  # paho's stub says int; it sleeps on a float fine
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(self.topic, qos=1) if rc == 0 else None
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_disconnect = lambda *a: self.subscribed.clear()
        self.client.on_message = self._on_message
        self.client.connect_async("127.0.0.1", port, 10)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            p = json.loads(msg.payload)
        except ValueError:
            return
        with self.lock:
            self.msg_ids[p.get("msg_id", "")] += 1
            ev = p.get("event") or {}
            if msg.topic.endswith("/events/screening") and ev.get("event_id"):
                self.events.setdefault(ev["event_id"], p.get("msg_id", ""))
                self.event_msgs.setdefault(ev["event_id"], set()).add(p.get("msg_id", ""))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# -- systemd: start, watch, restart --------------------------------------------------------------------

DECISION = re.compile(r"station\.lane\.pipeline decision event_id=(\w+) decision=(\w+)")
KEPT = re.compile(r"kept for retry event_id=(\w+) decision=(\w+)")
CRASHED = re.compile(r"pipeline thread crashed thread=(\w+)")
LATE = re.compile(r"event recorded after a failed write; the gate never acted on it event_id=(\w+)")


class Supervisor:
    def __init__(self, work: Path, config: Path, director: Any, *, rss_every_s: float = 10.0, cpus: set[int] | None = None) -> None:
        self.work = work
        self.rss_every_s = rss_every_s
        self.cpus = cpus  # CPUAffinity= (the bench's Pi-class figures pin the daemon to one core)
        self.config = config
        self.director = director
        self.notify_path = work / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.notify_path))
        self.proc: subprocess.Popen[bytes] | None = None
        self.lock = threading.Lock()
        self.ready = False
        self.spawned_t = 0.0
        self.last_ping = 0.0
        self.pings = 0
        self.expected_cause: str | None = None  # set by a fault that kills the daemon itself
        self.restarts: Counter[str] = Counter()
        self.starts: list[float] = []
        self.crash_loop = False
        self.cold_start_s: list[float] = []  # spawn → READY=1
        self.first_decision_s: list[float] = []  # spawn → first decision of that incarnation
        self.announced: dict[str, str] = {}
        self.kept: dict[str, int] = {}  # event_id → pid that held it
        self.late: set[str] = set()
        self.pid_exits: dict[int, str] = {}
        self.crashed: dict[int, str] = {}  # pid → the pipeline thread that died in it (from its log)
        self.current_fault: str | None = None
        self.rss: list[dict[str, Any]] = []
        self.log = (work / "daemon.log").open("a", encoding="utf-8", buffering=1)  # line-buffered: tail -f works
        self._stop = threading.Event()
        self._got_decision = False

    def start(self) -> None:
        threading.Thread(target=self._notify_loop, name="notify", daemon=True).start()
        self._spawn()
        threading.Thread(target=self._watch, name="supervise", daemon=True).start()

    def pid(self) -> int | None:
        p = self.proc
        return p.pid if p is not None and p.poll() is None else None

    def _spawn(self) -> None:
        now = time.monotonic()
        self.starts = [t for t in self.starts if now - t < START_LIMIT[1]] + [now]
        if len(self.starts) > START_LIMIT[0]:
            self.crash_loop = True
        env = dict(
            os.environ,
            NOTIFY_SOCKET=str(self.notify_path),
            WATCHDOG_USEC=str(int(WATCHDOG_SEC * 1e6)),
            PYTHONPATH=str(ROOT),
            PYTHONUNBUFFERED="1",
        )
        env.pop("WATCHDOG_PID", None)
        env.pop("JOURNAL_STREAM", None)
        cpus = self.cpus
        with self.lock:
            self.ready = False
            self._got_decision = False
            self.spawned_t = time.monotonic()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "station.cli.station_main", "run", "--config", str(self.config)],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
            )
        threading.Thread(target=self._read_log, args=(self.proc,), daemon=True).start()

    def _read_log(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace")
            self.log.write(f"[{proc.pid}] {line}")
            if m := DECISION.search(line):
                self.announced[m.group(1)] = m.group(2)
                self._decided(m.group(2))
            elif m := KEPT.search(line):
                self.kept[m.group(1)] = proc.pid
                self._decided(m.group(2))
            elif m := LATE.search(line):
                self.late.add(m.group(1))
            elif m := CRASHED.search(line):
                self.crashed.setdefault(proc.pid, m.group(1))
        self.log.flush()

    def _decided(self, decision: str) -> None:
        if not self._got_decision:
            self._got_decision = True
            self.first_decision_s.append(round(time.monotonic() - self.spawned_t, 2))
        self.director.on_decision(decision)

    def _notify_loop(self) -> None:
        self.sock.settimeout(0.5)
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.monotonic()
            with self.lock:
                if b"READY=1" in data and not self.ready:
                    self.ready = True
                    self.last_ping = now
                    self.cold_start_s.append(round(now - self.spawned_t, 2))
                if b"WATCHDOG=1" in data:
                    self.last_ping = now
                    self.pings += 1

    def _watch(self) -> None:
        next_rss = time.monotonic()
        while not self._stop.wait(0.1):
            proc = self.proc
            assert proc is not None
            now = time.monotonic()
            rc = proc.poll()
            if rc is not None:
                cause = self.expected_cause or (f"signal {signal.Signals(-rc).name}" if rc < 0 else f"exit {rc}")
                if cause == "watchdog":
                    # Why the pings stopped: a thread that died, or the process frozen by the fault.
                    if proc.pid in self.crashed:
                        cause = f"watchdog: {self.crashed[proc.pid]} thread crashed"
                    elif self.current_fault == "hung_pipeline":
                        cause = "watchdog: hung (SIGSTOP)"
                    else:
                        cause = "watchdog: no progress"
                self.expected_cause = None
                self.restarts[cause] += 1
                self.pid_exits[proc.pid] = cause
                time.sleep(RESTART_SEC)
                if not self._stop.is_set():
                    self._spawn()
                continue
            with self.lock:
                ready, last_ping, spawned = self.ready, self.last_ping, self.spawned_t
            if ready and now - last_ping > WATCHDOG_SEC:
                self._watchdog_kill(proc)
            elif not ready and now - spawned > START_TIMEOUT_S:
                self.expected_cause = "start_timeout"
                proc.kill()
            if now >= next_rss:
                next_rss = now + self.rss_every_s
                rss = _rss_mb(proc.pid)
                if rss is not None:
                    self.rss.append({"t": round(now, 1), "pid": proc.pid, "uptime_s": round(now - spawned, 1), "rss_mb": rss})

    def _watchdog_kill(self, proc: subprocess.Popen[bytes]) -> None:
        # systemd: WatchdogSignal=SIGABRT, then SIGKILL after TimeoutAbortSec.
        self.expected_cause = "watchdog"
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGABRT)
        try:
            proc.wait(3.0)
        except subprocess.TimeoutExpired:
            proc.kill()  # a SIGSTOPped process cannot act on SIGABRT; SIGKILL still ends it

    def stop(self) -> int | None:
        self._stop.set()
        time.sleep(0.2)
        proc = self.proc
        rc = None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
            try:
                rc = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
        self.sock.close()
        time.sleep(0.3)
        self.log.close()
        return rc


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        return None
    return None


def _slope_mb_per_min(samples: list[dict[str, Any]]) -> float | None:
    pts = [(s["uptime_s"], s["rss_mb"]) for s in samples]
    if len(pts) < 3:
        return None
    mx = statistics.fmean(x for x, _ in pts)
    my = statistics.fmean(y for _, y in pts)
    den = sum((x - mx) ** 2 for x, _ in pts)
    return round(60.0 * sum((x - mx) * (y - my) for x, y in pts) / den, 3) if den else None


# -- the run -------------------------------------------------------------------------------------------


def write_config(work: Path, thermal_link: Path, camera_url: str, mqtt_port: int | None, extra: str = "") -> Path:
    """Write the daemon's station.toml for the scene's devices (``mqtt_port`` None: no broker); return its path."""
    mqtt = (
        f"""
[mqtt]
url = "mqtt://127.0.0.1:{mqtt_port}"
keepalive_s = 5
reconnect_min_s = 0.5
reconnect_max_s = 4.0
stats_interval_s = 10.0
"""
        if mqtt_port is not None
        else ""
    )
    from sim.issuer import write_demo_trust_list

    trust = write_demo_trust_list(work)  # the scene's codes come from the DEMO ONLY issuer, as in `station demo`
    cfg = work / "station.toml"
    cfg.write_text(f"""
[station]
site = "soak"
id = "gate-1"
data_dir = "{work / "data"}"

[thermal]
port = "{thermal_link}"
baud = 460800
refresh_hz = 8

[camera]
device = "{camera_url}"

[gate]
pin_factory = "mock"

[codes]
trust_list_file = "{trust}"
{mqtt}
[logging]
level = "INFO"
{extra}""")
    return cfg


def _point(link: Path, target: str) -> None:
    tmp = link.with_name(link.name + ".new")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(target)
    os.replace(tmp, link)  # atomic, like udev re-creating the by-id link


def _snapshot() -> dict[str, Any]:
    """Return the commit the daemon runs from and whether the tree had uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True, timeout=10
        )
        return {"root": str(ROOT), "commit": head or None, "uncommitted_files": len(dirty.stdout.splitlines())}
    except (OSError, subprocess.SubprocessError):
        return {"root": str(ROOT), "commit": None, "uncommitted_files": None}


class SeriesWriter:
    """Appends one JSON object per line and flushes it, so a run cut short leaves a readable file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._f = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, rec: dict[str, Any]) -> None:
        with self._lock:
            self._f.write(json.dumps(rec, separators=(",", ":")) + "\n")
            self._f.flush()
            os.fsync(self._f.fileno())

    def close(self) -> None:
        with self._lock:
            self._f.close()


def run(
    minutes: float,
    seed: int,
    gap_s: tuple[float, float] = (12.0, 30.0),
    progress: bool = True,
    *,
    sample_s: float = 60.0,
    day_min: float = 60.0,
    series_path: Path | None = None,
    plot_path: Path | None = None,
    steady_min: float = 0.0,
) -> dict[str, Any]:
    from sim.demo import cast_people
    from sim.gy_mcu90640_emulator import GyMcu90640Emulator
    from sim.scene import SceneDirector, SceneGeometry, SceneTiming
    from sim.scene_camera import SceneCamera
    from sim.thermal_render import ThermalSceneRenderer
    from station.config import StationConfig
    from tests.support.broker import Broker

    rng = random.Random(seed)
    base = StationConfig()
    people = cast_people(max(200, int(minutes * 25)), base, time.time())  # back to back is ~20 a minute
    director = SceneDirector(people, SceneTiming.fast(base.screening.leave_after_s), SceneGeometry())
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    emulator = GyMcu90640Emulator(ThermalSceneRenderer(director, seed=seed), baud=460800, refresh_hz=8)
    camera = MjpegScene(SceneCamera(director, fps=10, seed=seed))
    broker = Broker(work / "broker")
    faults: Counter[str] = Counter()
    fault_log: list[dict[str, Any]] = []

    def say(line: str) -> None:
        if progress:
            print(line, file=sys.stderr, flush=True)

    emulator.start()
    link = work / "thermal-link"
    _point(link, emulator.port)
    camera.start()
    broker.start()
    proxy = PartitionProxy(broker.port)
    proxy.start()
    centre = Centre(broker.port, f"{base.mqtt.topic_prefix}/soak/gate-1/events/#")
    centre.subscribed.wait(10)
    config = write_config(work, link, camera.url, proxy.port)
    t0 = time.monotonic()
    paced = PacedDirector(director, day_min * 60.0, t0, seed + 1)
    sup = Supervisor(work, config, paced)
    series = SeriesWriter(series_path or work / "series.jsonl")
    snapshot = _snapshot()
    meta = {
        "type": "meta",
        "started_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "minutes": minutes,
        "seed": seed,
        "fault_gap_s": list(gap_s),
        "steady_min": steady_min,
        "daemon_ending_faults": sorted(DAEMON_ENDING_FAULTS),
        "sample_s": sample_s,
        "walkup_profile": {
            "day_min": day_min,
            "min_gap_s": round(paced.min_gap_s, 2),
            "phases": [{"from": a, "to": b, "name": n, "mean_extra_gap_s": g} for a, b, n, g in WALKUP_PROFILE],
        },
        "warm_s": soak_series.WARM_S,
        "thresholds_per_h": soak_series.THRESHOLDS,
        "snapshot": snapshot,
        "work_dir": str(work),
        "cpus": os.cpu_count(),
    }
    series.write(meta)
    sup.start()
    say(f"soak: work dir {work}; daemon config {config}; series {series.path}")
    data_dir = work / "data"
    sampling = threading.Event()

    def sample_loop() -> None:
        next_t = time.monotonic() + sample_s
        while not sampling.wait(max(0.0, next_t - time.monotonic())):
            next_t += sample_s
            pid = sup.pid()
            now = time.monotonic()
            rec: dict[str, Any] = {
                "type": "sample",
                "t_s": round(now - t0, 1),
                "utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "pid": pid,
                "uptime_s": round(now - sup.spawned_t, 1) if pid is not None else None,
                "decisions": len(sup.announced.keys() | sup.kept.keys()),
                "people": director._next_index,  # noqa: SLF001 (the scene's own count)
                "restarts": sum(sup.restarts.values()),
                "phase": paced.phase(now),
                "fault": sup.current_fault,
            }
            if pid is not None:
                rec |= soak_series.proc_sample(pid)
            rec |= soak_series.storage_sample(data_dir)
            series.write(rec)

    sampler = threading.Thread(target=sample_loop, name="sampler", daemon=True)
    sampler.start()

    def restore_broker() -> None:
        # The centre's session lives in broker memory (no persistence across SIGKILL): the station
        # is let back in only once the centre has re-subscribed, or the broker would drop the
        # events it accepts meanwhile for a subscriber it does not know yet.
        proxy.cut()
        broker.start()
        centre.subscribed.wait(15)
        proxy.heal()

    def inject(kind: str) -> dict[str, Any]:
        pid = sup.pid()
        info: dict[str, Any] = {"kind": kind, "t_s": round(time.monotonic() - t0, 1), "pid": pid}
        if kind == "serial_garbage":
            n = rng.randint(200, 3000)
            for _ in range(3):
                emulator.garbage_burst(n)
                time.sleep(0.3)
            info["bytes"] = 3 * n
        elif kind == "thermal_unplug":
            d = rng.uniform(2, 8)
            emulator.unplug()
            time.sleep(d)
            _point(link, emulator.replug())
            info["s"] = round(d, 1)
        elif kind == "camera_stall":
            d = rng.uniform(2, 10)
            camera.stall(d)
            time.sleep(d)
            info["s"] = round(d, 1)
        elif kind == "broker_kill":
            d = rng.uniform(3, 10)
            broker.kill()
            time.sleep(d)
            restore_broker()
            info["s"] = round(d, 1)
        elif kind == "network_partition":
            d = rng.uniform(5, 20)
            proxy.cut()
            time.sleep(d)
            proxy.heal()
            info["s"] = round(d, 1)
        elif kind == "disk_full":
            d = rng.uniform(5, 15)
            if pid is not None:
                soft, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
                resource.prlimit(pid, resource.RLIMIT_FSIZE, (1, hard))
                time.sleep(d)
                with contextlib.suppress(ProcessLookupError):
                    resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))
            info["s"] = round(d, 1)
        elif kind == "daemon_sigkill":
            if pid is not None:
                sup.expected_cause = "sigkill (fault)"
                os.kill(pid, signal.SIGKILL)
        elif kind == "hung_pipeline":
            if pid is not None:
                os.kill(pid, signal.SIGSTOP)  # the watchdog must notice and restart it
                deadline = time.monotonic() + 3 * WATCHDOG_SEC + 5
                while pid not in sup.pid_exits and time.monotonic() < deadline:  # until the restart is booked
                    time.sleep(0.2)
                info["watchdog_fired_after_s"] = round(time.monotonic() - t0 - info["t_s"], 1)
        return info

    end = t0 + minutes * 60.0
    round_kinds: list[str] = []
    while time.monotonic() < end:
        wait = rng.uniform(*gap_s)
        if time.monotonic() + wait >= end:
            time.sleep(max(0.0, end - time.monotonic()))
            break
        time.sleep(wait)
        kind = next_fault(round_kinds, rng, steady=time.monotonic() - t0 < steady_min * 60.0)
        sup.current_fault = kind
        info = inject(kind)
        sup.current_fault = None
        faults[kind] += 1
        fault_log.append(info)
        series.write({"type": "fault"} | info)
        say(f"soak: {info} decisions={len(sup.announced)} restarts={dict(sup.restarts)}")

    # Everything healthy again; let the outbox drain to the centre.
    soak_s = time.monotonic() - t0
    sampling.set()
    sampler.join(30)
    db_path = work / "data" / "events.sqlite3"
    deadline = time.monotonic() + 180
    stored: set[str] = set()
    while time.monotonic() < deadline:
        time.sleep(2.0)
        with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)) as db:
            stored = {r[0] for r in db.execute("SELECT event_id FROM events")}
            pending = db.execute("SELECT COUNT(*) FROM outbox WHERE acked_at IS NULL AND dropped_at IS NULL").fetchone()[0]
        with centre.lock:
            on_mqtt = set(centre.events)
        if pending == 0 and stored <= on_mqtt and sup.pid() is not None:
            break
    final_rc = sup.stop()
    time.sleep(1.0)
    with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)) as db:
        stored = {r[0] for r in db.execute("SELECT event_id FROM events")}
        pending = db.execute("SELECT COUNT(*) FROM outbox WHERE acked_at IS NULL AND dropped_at IS NULL").fetchone()[0]
        gate_opened_unrecorded = db.execute(
            "SELECT COUNT(*) FROM gate_actions g WHERE g.executed = 1 AND g.event_id NOT IN (SELECT event_id FROM events)"
        ).fetchone()[0]
    with centre.lock:
        on_mqtt = set(centre.events)
        total_msgs = sum(centre.msg_ids.values())
        unique_msgs = len(centre.msg_ids)
        duplicate_events = sum(1 for ids in centre.event_msgs.values() if len(ids) > 1)
    centre.close()
    proxy.stop()
    broker.kill()
    camera.stop()
    emulator.stop()

    announced = set(sup.announced)
    kept = set(sup.kept)
    decided = announced | kept
    never_written = kept - stored
    # Held in memory when their process was killed (SIGKILL, watchdog): the gate never acted on them.
    killed_holding = {e for e in never_written if sup.pid_exits.get(sup.kept[e]) is not None}
    lost = (announced - stored) | (never_written - killed_holding)
    missing_on_mqtt = stored - on_mqtt
    # Models are loaded a second or two after spawn; samples from warm processes only.
    warm = [s for s in sup.rss if s["uptime_s"] >= 30]
    rss_all = [s["rss_mb"] for s in warm]
    # Leak check on the incarnations that lived long enough to show a trend (warm-up excluded).
    by_pid: dict[int, list[dict[str, Any]]] = {}
    for s in sup.rss:
        if s["uptime_s"] >= 30:
            by_pid.setdefault(s["pid"], []).append(s)
    longest = max(by_pid.values(), key=len, default=[])
    series.close()
    _meta, samples, _faults = soak_series.read_jsonl(series.path)
    trends = soak_series.summarise(samples)
    if plot_path is not None:
        try:
            soak_series.plot(
                samples, fault_log, plot_path, title=f"soak seed {seed}, {soak_s / 3600.0:.2f} h, commit {str(snapshot['commit'])[:10]}"
            )
        except ImportError as e:  # matplotlib is the optional `bench` extra
            say(f"soak: no plot ({e}); pip install -e '.[bench]'")
            plot_path = None
    checks = {
        "lost": not lost,
        "missing_on_mqtt": not missing_on_mqtt,
        "crash_loop": not sup.crash_loop,
        "watchdog_restarts_hung": sup.restarts.get("watchdog: hung (SIGSTOP)", 0) >= 1,
        "gate_opened_without_record": gate_opened_unrecorded == 0,
        "duplicate_events": duplicate_events == 0,
        "slopes": not trends["slopes_clearly_above_zero"],
    }
    return {
        "soak_minutes": round(soak_s / 60.0, 2),
        "seed": seed,
        "watchdog_sec": WATCHDOG_SEC,
        "faults_injected": dict(faults),
        "faults_total": sum(faults.values()),
        "people_walked_up": director._next_index,  # noqa: SLF001 (the scene's own count)
        "decisions_announced": len(decided),
        "events_in_sqlite": len(stored),
        "events_on_mqtt_unique": len(on_mqtt & stored),
        "mqtt_messages": {"received": total_msgs, "unique_msg_id": unique_msgs, "duplicates": total_msgs - unique_msgs},
        "duplicate_events": duplicate_events,  # screening events the centre got under two or more msg_ids
        "lost": len(lost),
        "lost_event_ids": sorted(lost)[:20],
        "missing_on_mqtt": len(missing_on_mqtt),
        "outbox_pending_at_end": pending,
        "written_after_disk_full": len(sup.late),
        "held_unrecorded": len(kept),
        "unrecorded_lost_with_killed_process": len(killed_holding),
        "gate_opened_without_record": gate_opened_unrecorded,
        "restarts": dict(sup.restarts),
        "restarts_total": sum(sup.restarts.values()),
        "watchdog_restarts": sum(n for c, n in sup.restarts.items() if c.startswith("watchdog")),
        "watchdog_restarts_hung": sup.restarts.get("watchdog: hung (SIGSTOP)", 0),
        "pipeline_threads_crashed": dict(Counter(sup.crashed.values())),
        "crash_loop": sup.crash_loop,
        "final_stop_exit_code": final_rc,
        "cold_start_s": {
            "median": statistics.median(sup.cold_start_s) if sup.cold_start_s else None,
            "max": max(sup.cold_start_s, default=None),
            "n": len(sup.cold_start_s),
        },
        "spawn_to_first_decision_s": {
            "median": statistics.median(sup.first_decision_s) if sup.first_decision_s else None,
            "n": len(sup.first_decision_s),
        },
        "rss_mb": {
            "first": rss_all[0] if rss_all else None,
            "last": rss_all[-1] if rss_all else None,
            "max": max(rss_all, default=None),
            "samples": len(rss_all),
            "sampled_every_s": 10,
            "warm_after_s": 30,
            "longest_run_samples": len(longest),
            "longest_run_slope_mb_per_min": _slope_mb_per_min(longest),
            "longest_run_first_last": [longest[0]["rss_mb"], longest[-1]["rss_mb"]] if longest else None,
            # RSS against uptime over every warm sample of every incarnation: a leak shows as a slope.
            "pooled_slope_mb_per_min": _slope_mb_per_min(warm),
            "max_uptime_s": max((s["uptime_s"] for s in warm), default=None),
        },
        "faults": fault_log,
        "work_dir": str(work),
        "snapshot": snapshot,
        "walkup_profile": meta["walkup_profile"],
        "sample_s": sample_s,
        "series_file": str(series.path),
        "plot": str(plot_path) if plot_path else None,
        "samples": len(samples),
        **trends,
        "series": samples,
        "checks": checks,
        "failed_checks": sorted(k for k, v in checks.items() if not v),
        "ok": all(checks.values()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    length = ap.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, default=None, help="run length (default 10)")
    length.add_argument("--hours", type=float, default=None, help="run length in hours (the long soak)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--gap",
        type=float,
        nargs=2,
        default=None,
        metavar=("MIN", "MAX"),
        help="seconds between faults (default 12 30, with --hours 120 360)",
    )
    ap.add_argument(
        "--steady-min",
        type=float,
        default=None,
        help=f"minutes without daemon-ending faults at the start, one long incarnation (default 0, with --hours {STEADY_MIN_LONG:g})",
    )
    ap.add_argument("--sample-s", type=float, default=60.0, help="seconds between series samples (default 60)")
    ap.add_argument("--day-min", type=float, default=None, help="minutes of one compressed market day (default 60, or the run if shorter)")
    ap.add_argument("--json", action="store_true", help="only the summary JSON on stdout (progress on stderr)")
    ap.add_argument("--out", type=Path, default=None, help="also write the summary JSON here (series: .jsonl beside it, plot: .png)")
    ap.add_argument("--series", type=Path, default=None, help="the JSON-lines sample file (default: beside --out, else in the work dir)")
    ap.add_argument("--plot", type=Path, default=None, help="the PNG (default: beside --out)")
    args = ap.parse_args()
    minutes = args.hours * 60.0 if args.hours is not None else (args.minutes if args.minutes is not None else 10.0)
    gap = tuple(args.gap) if args.gap else ((120.0, 360.0) if args.hours is not None else (12.0, 30.0))
    series = args.series or (args.out.with_suffix(".jsonl") if args.out else None)
    plot = args.plot or (args.out.with_suffix(".png") if args.out else None)
    day_min = args.day_min if args.day_min is not None else min(60.0, minutes)
    steady_min = args.steady_min if args.steady_min is not None else (STEADY_MIN_LONG if args.hours is not None else 0.0)
    summary = run(
        minutes,
        args.seed,
        gap_s=(gap[0], gap[1]),
        sample_s=args.sample_s,
        day_min=day_min,
        series_path=series,
        plot_path=plot,
        steady_min=steady_min,
    )
    brief = {k: v for k, v in summary.items() if k != "series"}
    text = json.dumps(brief if args.json else summary, indent=None if args.json else 2, ensure_ascii=False)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    print(text)
    if not summary["ok"]:
        print(f"soak: FAILED {summary['failed_checks']}; slopes above zero: {summary['slopes_clearly_above_zero']}", file=sys.stderr)
    sys.exit(0 if summary["ok"] else 1)


if __name__ == "__main__":
    main()
