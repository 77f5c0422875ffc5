"""A failure on one item never kills a pipeline stage; a loop that dies is restarted, then given up.

The pipeline runs with real parts where they are cheap (SQLite event store, gpiozero mock gate, the
ZBar reader on rendered QR codes, the HC1 judge with the demo issuer's trust list) and with adapters
that raise on chosen items behind the same ports (camera, face detector, thermal source, verifier,
gate): the point is the containment path, whatever the real adapters do today.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from drivers.codes.pyzbar_reader import PyzbarReader
from sim.issuer import demo_issuer, write_demo_trust_list
from sim.scene_camera import qr_matrix, render_qr
from station.app import build_gate, build_verifiers, lane_for
from station.cli.stationctl import _stages_line
from station.config import StationConfig
from station.domain.model import (
    Box,
    CodeColour,
    FaceDetection,
    GateCommand,
    GateResult,
    ThermalFrame,
    VisibleFrame,
)
from station.domain.screening import ScreeningLane
from station.lane.pipeline import Pipeline, PipelineSettings, StationIdentity
from station.ops.clock import SystemClock
from station.store.events import SqliteEventStore
from tests.support.faulty_verifiers import RaisingOnPayload
from tests.support.waiting import wait_until

HOSTILE = b"HOSTILE:raise-in-verifier"
FACE = FaceDetection(Box(250.0, 120.0, 390.0, 300.0), 0.95)


# -- adapters that fail on chosen items, behind the station's ports ----------------------------------


def phone_frame(payload: bytes | None, person: bool) -> np.ndarray:
    """A grey 640×480 frame, a QR code for ``payload`` on it, pixel (0, 0) saying whether a person is there."""
    img = np.full((480, 640, 3), 200, dtype=np.uint8)
    if payload is not None:
        qr = render_qr(qr_matrix(payload), (20, 20, 20), 4, 4)
        img[100 : 100 + qr.shape[0], 380 : 380 + qr.shape[1]] = qr
    img[0, 0] = (255, 0, 0) if person else (0, 0, 0)
    return img


class ScriptedCamera:
    """Frames from a repeating script at ``fps``; reads whose number is in ``raise_on`` raise."""

    name = "scripted-camera"

    def __init__(self, script: list[np.ndarray], fps: float = 40.0, raise_on: Callable[[int], bool] = lambda n: False) -> None:
        self.script, self.period, self.raise_on = script, 1.0 / fps, raise_on
        self.reads = 0
        self._stop = threading.Event()

    def start(self) -> None: ...

    def stop(self) -> None:
        self._stop.set()

    def read(self, timeout: float) -> VisibleFrame | None:
        if self._stop.wait(self.period):
            return None
        n = self.reads
        self.reads += 1
        if self.raise_on(n):
            raise OSError(f"camera read {n} failed")
        return VisibleFrame(image=self.script[n % len(self.script)], seq=n, t=time.monotonic())

    def stats(self) -> dict[str, Any]:
        return {"state": "running", "reads": self.reads}


class MarkedFaceDetector:
    """Finds the one face when the frame's marker pixel says a person is there; raises on every ``raise_every``-th call."""

    name = "marked-face"

    def __init__(self, raise_every: int = 0) -> None:
        self.raise_every, self.calls = raise_every, 0

    def warm_up(self) -> float:
        return 0.0

    def detect(self, image: np.ndarray) -> list[FaceDetection]:
        self.calls += 1
        if self.raise_every and self.calls % self.raise_every == 0:
            raise ValueError("detector output has an unexpected shape")
        return [FACE] if image[0, 0, 0] == 255 else []


class ScriptedThermal:
    """Room-temperature frames at 16 Hz; every ``raise_every``-th read raises, every ``bad_every``-th frame is malformed."""

    name = "scripted-thermal"

    def __init__(self, raise_every: int = 0, bad_every: int = 0) -> None:
        self.raise_every, self.bad_every, self.reads = raise_every, bad_every, 0
        self._stop = threading.Event()

    def start(self) -> None: ...

    def stop(self) -> None:
        self._stop.set()

    def read_frame(self, timeout: float) -> ThermalFrame | None:
        if self._stop.wait(1 / 16):
            return None
        self.reads += 1
        if self.raise_every and self.reads % self.raise_every == 0:
            raise RuntimeError("thermal driver tripped over its buffer")
        if self.bad_every and self.reads % self.bad_every == 0:
            # A frame of the wrong shape: measuring a face in it raises inside the lane.
            return ThermalFrame(np.zeros(7, dtype=np.float32), 30.0, self.reads, time.monotonic())
        return ThermalFrame(np.full((24, 32), 22.0, dtype=np.float32), 30.0, self.reads, time.monotonic())

    def stats(self) -> dict[str, Any]:
        return {"state": "connected", "reads": self.reads}


class FlakyGate:
    """The real (mock-pin) gate, except that every ``raise_every``-th command raises."""

    def __init__(self, inner: Any, raise_every: int) -> None:
        self.inner, self.raise_every, self.calls, self.safe_states = inner, raise_every, 0, 0
        self.name = inner.name

    def execute(self, command: GateCommand, now: float) -> GateResult:
        self.calls += 1
        if self.calls % self.raise_every == 0:
            raise RuntimeError("relay driver fault")
        result: GateResult = self.inner.execute(command, now)
        return result

    def safe_state(self) -> None:
        self.safe_states += 1
        self.inner.safe_state()

    def close(self) -> None:
        self.inner.close()

    def history(self) -> list[tuple[float, str, Any]]:
        return list(self.inner.history())


class BrokenTickLane(ScreeningLane):
    """The real lane whose timeout step, called by the loop itself, raises its first ``failures`` times."""

    failures = 0
    _in_item = False

    def on_faces(self, obs):  # type: ignore[no-untyped-def]
        self._in_item = True
        try:
            return super().on_faces(obs)
        finally:
            self._in_item = False

    def tick(self, now: float):  # type: ignore[no-untyped-def]
        if self.failures > 0 and not self._in_item:  # a bug outside any item: the loop's own step
            self.failures -= 1
            raise KeyError("state machine bug")
        return super().tick(now)


# -- the pipeline under test -----------------------------------------------------------------------


def make_pipeline(
    tmp_path: Path,
    *,
    camera: Any,
    detector: Any = None,
    thermal: Any = None,
    gate_raise_every: int = 0,
    lane: ScreeningLane | None = None,
    settings: PipelineSettings | None = None,
    on_progress: Callable[[], None] | None = None,
    reader: Any = None,
) -> tuple[Pipeline, SqliteEventStore]:
    cfg = StationConfig()
    cfg.gate.pin_factory = "mock"
    cfg.screening.temperature_timeout_s = 0.4  # no calibrated thermal here: each person ends in retry, quickly
    cfg.screening.leave_after_s = 0.2
    cfg.codes.trust_list_file = str(write_demo_trust_list(tmp_path))
    cfg.codes.verifiers = ["hc1"]
    store = SqliteEventStore(tmp_path / "events.sqlite3", station_id="st-1", site="site-a")
    clock = SystemClock()
    gate: Any = build_gate(cfg, clock)
    if gate_raise_every:
        gate = FlakyGate(gate, gate_raise_every)
    pipeline = Pipeline(
        identity=StationIdentity("site-a", "st-1", "lane-1"),
        lane=lane or lane_for(cfg),
        thermal=thermal or ScriptedThermal(),
        camera=camera,
        detector=detector or MarkedFaceDetector(),
        reader=reader or PyzbarReader(),
        verifiers=[RaisingOnPayload(HOSTILE), *build_verifiers(cfg, tmp_path)],
        store=store,
        gate=gate,
        clock=clock,
        settings=settings or PipelineSettings(),
        on_progress=on_progress,
    )
    return pipeline, store


@pytest.fixture
def pipelines():
    started: list[tuple[Pipeline, SqliteEventStore]] = []
    yield started
    for p, store in started:
        p.stop()
        p.gate.close()
        store.close()


def item_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("pipeline stage item failed")]


@pytest.mark.slow
def test_failing_items_are_dropped_counted_and_logged_once_per_kind_while_every_stage_goes_on(tmp_path, pipelines, caplog):
    caplog.set_level(logging.ERROR, logger="station.lane.pipeline")
    good = demo_issuer().issue(CodeColour.GREEN, iat=int(time.time()) - 600, exp=int(time.time()) + 86400, holder="p").encode()
    # People come and go (a decision needs the face gone for leave_after_s before the next one), each
    # holding up either the hostile code or a genuine green one.
    script = (
        [phone_frame(HOSTILE, True)] * 12
        + [phone_frame(None, False)] * 12
        + [phone_frame(good, True)] * 12
        + [phone_frame(None, False)] * 12
    )
    camera = ScriptedCamera(script, raise_on=lambda n: n % 9 == 4)
    detector = MarkedFaceDetector(raise_every=5)
    thermal = ScriptedThermal(raise_every=4, bad_every=3)
    pipeline, store = make_pipeline(tmp_path, camera=camera, detector=detector, thermal=thermal, gate_raise_every=2)
    pipelines.append((pipeline, store))
    verifier = pipeline.verifiers[0]
    decided: list[Any] = []
    pipeline.add_listener(decided.append)
    pipeline.start()

    def errors(stage: str) -> dict[str, int]:
        return dict(pipeline.health()["stages"][stage]["errors"])

    wait_until(
        lambda: (
            sum(store.counts().values()) >= 4
            and len(decided) >= 2
            and pipeline.stats().get("codes_valid", 0) >= 1
            and errors("camera").get("OSError", 0) >= 3
            and errors("face").get("ValueError", 0) >= 3
            and errors("thermal").get("RuntimeError", 0) >= 3
            and errors("lane").get("ValueError", 0) + errors("lane").get("IndexError", 0) >= 2
            and errors("code").get("verify:TypeError", 0) >= 2
            and errors("executor").get("RuntimeError", 0) >= 2
        ),
        timeout=40,
        what="every stage to meet its failing items and keep going",
    )

    health = pipeline.health()
    assert pipeline.alive() and health["alive"] and health["restarts"] == 0 and health["given_up"] == []
    assert {s["state"] for s in health["stages"].values()} == {"running"}
    assert health["state"] == "degraded"
    # The hostile code became a verdict the lane can use (invalid, verifier_error); genuine codes were still judged valid.
    stats = pipeline.stats()
    assert stats["codes_verifier_error"] == errors("code")["verify:TypeError"] == verifier.raised
    assert stats["codes_invalid"] >= stats["codes_verifier_error"] and stats["codes_valid"] >= 1
    assert stats["stage_errors"] == health["errors"] and stats["stage_restarts"] == 0
    # Decisions whose gate command raised were still recorded; the gate was sent to its safe state for them.
    assert pipeline.gate.safe_states >= errors("executor")["RuntimeError"]
    assert sum(store.counts().values()) >= len(decided) + errors("executor")["RuntimeError"]
    # One log line per stage and kind (interval 60 s), however many failures were folded into it.
    lines = item_lines(caplog)
    kinds = {(stage, kind) for stage in health["stages"] for kind in errors(stage)}
    assert len(lines) == len(kinds), lines
    for stage, kind in kinds:
        assert sum(1 for line in lines if f"kind={kind} " in line and f"stage={stage}" in line) == 1, (stage, kind, lines)
    assert sum(health["stages"][s]["errors"][k] for s, k in kinds) > len(kinds)  # some were folded
    line = _stages_line(health)
    assert line.startswith("stages: degraded; restarts none") and "code verify:TypeError×" in line


@pytest.mark.slow  # about a second: kept out of the fast loop
def test_a_lane_loop_that_raises_is_restarted_in_process_and_keeps_deciding(tmp_path, pipelines, caplog):
    caplog.set_level(logging.ERROR, logger="station.lane.pipeline")
    cfg = StationConfig()
    cfg.screening.temperature_timeout_s = 0.4
    cfg.screening.leave_after_s = 0.2
    base = lane_for(cfg)
    lane = BrokenTickLane(base.settings, base.policy, base.calibration)
    lane.failures = 3
    progress = threading.Event()
    script = [phone_frame(None, True)] * 20 + [phone_frame(None, False)] * 12
    settings = PipelineSettings(restart_backoff_s=0.01, restart_limit=5)
    pipeline, store = make_pipeline(tmp_path, camera=ScriptedCamera(script), lane=lane, settings=settings, on_progress=progress.set)
    pipelines.append((pipeline, store))
    pipeline.start()
    wait_until(lambda: sum(store.counts().values()) >= 2, what="decisions after the lane's restarts")
    health = pipeline.health()
    assert health["stages"]["lane"]["restarts"] == 3 and health["stages"]["lane"]["last_crash"] == "KeyError"
    assert health["restarts"] == 3 and pipeline.stats()["stage_restarts"] == 3
    assert pipeline.alive() and health["given_up"] == [] and health["stages"]["lane"]["state"] == "running"
    assert progress.is_set()  # the restarted lane reports progress again: the watchdog keeps being fed
    assert sum("pipeline stage crashed, restarting stage=lane" in r.getMessage() for r in caplog.records) == 3
    assert "lane×3" in _stages_line(health)


def test_a_stage_failing_on_every_item_is_restarted_then_given_up_and_the_pipeline_reports_not_alive(tmp_path, pipelines, caplog):
    caplog.set_level(logging.ERROR, logger="station.lane.pipeline")
    # The camera raises on every read: no single item is to blame, the stage itself is broken.
    camera = ScriptedCamera([phone_frame(None, False)], fps=200.0, raise_on=lambda n: True)
    settings = PipelineSettings(escalate_after=10, restart_limit=3, restart_window_s=600.0, restart_backoff_s=0.01, read_error_pause_s=0.0)
    pipeline, store = make_pipeline(tmp_path, camera=camera, settings=settings)
    pipelines.append((pipeline, store))
    pipeline.start()
    assert pipeline.alive()
    wait_until(lambda: not pipeline.alive(), what="the camera stage to be given up")
    health = pipeline.health()
    camera_health = health["stages"]["camera"]
    assert camera_health["state"] == "given_up" and camera_health["restarts"] == 3
    assert camera_health["last_crash"] == "StageFailing"
    assert health["given_up"] == ["camera"] and health["state"] == "failed" and not health["alive"]
    # 3 restarts of 10 failed reads each, then the 10 that gave it up.
    assert camera_health["errors"]["OSError"] == 40 and camera.reads == 40
    # The other stages are still running; only the given-up one is reported.
    assert all(h["state"] == "running" for name, h in health["stages"].items() if name != "camera")
    assert sum("pipeline stage given up stage=camera" in r.getMessage() for r in caplog.records) == 1
    assert "GIVEN UP: camera" in _stages_line(health)


class StuckLane(ScreeningLane):
    """The real lane whose timeout step blocks (a hang, not an exception) once ``stick`` is set."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.stick, self.release, self.stuck = threading.Event(), threading.Event(), threading.Event()

    def tick(self, now: float):  # type: ignore[no-untyped-def]
        if self.stick.is_set():
            self.stuck.set()
            self.release.wait()
        return super().tick(now)


def test_a_stuck_lane_still_stops_the_watchdog_pings_although_no_thread_died(tmp_path, pipelines, caplog):
    import socket

    from station.ops.systemd import Notifier, WatchdogGate

    caplog.set_level(logging.ERROR, logger="station.ops.systemd")
    sock_path = tmp_path / "notify.sock"
    systemd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    systemd.bind(str(sock_path))
    systemd.settimeout(5.0)
    notifier = Notifier({"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "2000000"})
    # Pings at most every 0.1 s: a handful queue on the socket before they stop (sendto would block on a full queue).
    watchdog = WatchdogGate(notifier, stale_after=0.5, interval=0.1)
    base = lane_for(StationConfig())
    lane = StuckLane(base.settings, base.policy, base.calibration)
    pipeline, store = make_pipeline(tmp_path, camera=ScriptedCamera([phone_frame(None, False)]), lane=lane, on_progress=watchdog.progress)
    pipelines.append((pipeline, store))
    try:
        pipeline.start()
        wait_until(watchdog.maybe_ping, what="a first watchdog ping")
        assert systemd.recv(64) == b"WATCHDOG=1"
        lane.stick.set()
        wait_until(lane.stuck.is_set, what="the lane to hang")
        stuck_pings = watchdog.pings
        # Withheld once progress is older than stale_after: maybe_ping then refuses on every call.
        wait_until(
            lambda: not watchdog.maybe_ping() and any("withholding watchdog ping: no progress" in r.getMessage() for r in caplog.records),
            what="pings to be withheld",
        )
        pings = watchdog.pings
        assert all(not watchdog.maybe_ping() for _ in range(20)) and watchdog.pings == pings
        assert pings - stuck_pings <= 6  # at most stale_after / interval more after the hang began
        # Nothing raised, nothing was restarted: only the missing progress tells, and it is enough.
        assert pipeline.alive() and pipeline.health()["restarts"] == 0
    finally:
        lane.release.set()
        systemd.close()
        notifier.close()


class FlakyPlateReader:
    """A plate reader that raises on every 3rd frame, returns a malformed read (no box) on every 3rd+1, else nothing."""

    name = "flaky-plates"

    def __init__(self, always_raise: bool = False) -> None:
        self.calls, self.always_raise = 0, always_raise

    def warm_up(self) -> float:
        return 0.0

    def read(self, image: np.ndarray) -> list[dict[str, Any]]:
        self.calls += 1
        if self.always_raise or self.calls % 3 == 0:
            raise OSError("plate model session failed")
        if self.calls % 3 == 1:
            return [{"score": 0.9, "text": "皖K66666"}]  # no box: the vehicle lane trips over it
        return []


def feed_plates(loop: Any, stop: threading.Event) -> None:
    frame = VisibleFrame(image=phone_frame(None, False), seq=0, t=time.monotonic())
    while not stop.wait(0.005):
        loop.offer(frame)


class BrokenVehicleLane:
    """A vehicle lane that hands back an event the plate thread cannot use: a bug outside the per-frame guard."""

    def on_plates(self, reads: list[dict[str, Any]], t: float) -> list[Any]:
        return [object()]


def test_the_plate_thread_contains_bad_frames_for_good_and_restarts_then_gives_up_a_broken_loop(tmp_path):
    from station.domain.vehicles import VehicleLane
    from station.lane.vehicle_loop import PlateLoop
    from station.store.residents import ResidentFile

    stop = threading.Event()
    # Every frame fails (a crafted plate held up, say): contained for as long as it lasts, never escalated.
    hostile = PlateLoop(
        FlakyPlateReader(always_raise=True),
        VehicleLane(ResidentFile(tmp_path / "residents.txt")),
        max_rate_hz=500.0,
        settings=PipelineSettings(escalate_after=5),
    )
    flaky = PlateLoop(FlakyPlateReader(), VehicleLane(ResidentFile(tmp_path / "residents.txt")), max_rate_hz=200.0)
    broken = PlateLoop(
        FlakyPlateReader(),
        BrokenVehicleLane(),
        max_rate_hz=200.0,  # type: ignore[arg-type]
        settings=PipelineSettings(restart_limit=2, restart_backoff_s=0.01),
    )
    loops = (hostile, flaky, broken)
    feeders = [threading.Thread(target=feed_plates, args=(loop, stop), daemon=True) for loop in loops]
    try:
        for loop in loops:
            loop.start()
        for t in feeders:
            t.start()
        wait_until(
            lambda: flaky.health.errors.counts["OSError"] >= 5 and flaky.health.errors.counts["KeyError"] >= 5,
            what="the flaky plate reader's failures",
        )
        wait_until(lambda: not broken.alive(), what="the broken plate loop to be given up")
        wait_until(lambda: hostile.counts["read_errors"] >= 50, what="many failed frames in a row")
        assert hostile.alive() and hostile.health.restarts == 0 and hostile.stats()["health"]["state"] == "running"
        assert flaky.alive() and flaky.health.restarts == 0 and flaky.counts["reads"] >= 10
        assert flaky.counts["read_errors"] == flaky.health.errors.counts["OSError"]
        assert broken.health.restarts == 2 and broken.stats()["health"]["state"] == "given_up"
        assert broken.stats()["health"]["last_crash"] == "AttributeError"
    finally:
        stop.set()
        for loop in loops:
            loop.stop()


class ChokingReader:
    """A ``CodeReader`` that raises on every frame, as a decoder might on a crafted symbol held up for minutes."""

    name = "choking"

    def __init__(self) -> None:
        self.calls = 0

    def decode(self, image: np.ndarray) -> list[Any]:
        self.calls += 1
        raise MemoryError("decoder ran out of memory on a crafted symbol")


@pytest.mark.slow
def test_a_code_failing_on_every_frame_never_escalates_to_a_restart(tmp_path, pipelines):
    reader = ChokingReader()
    settings = PipelineSettings(escalate_after=5, restart_limit=1, restart_backoff_s=0.01)
    script = [phone_frame(HOSTILE, True)] * 30 + [phone_frame(None, False)] * 12
    pipeline, store = make_pipeline(tmp_path, camera=ScriptedCamera(script), reader=reader, settings=settings)
    pipelines.append((pipeline, store))
    pipeline.start()
    wait_until(
        lambda: pipeline.health()["stages"]["code"]["errors"].get("MemoryError", 0) >= 40 and sum(store.counts().values()) >= 2,
        what="many failed decodes in a row, and the lane still deciding",
    )
    code = pipeline.health()["stages"]["code"]
    assert code["state"] == "running" and code["restarts"] == 0 and pipeline.alive()
    assert code["errors"]["MemoryError"] == reader.calls or code["errors"]["MemoryError"] == reader.calls - 1
