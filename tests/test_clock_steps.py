"""The wall clock steps by hours, or to 1970, while a person is being screened: nothing that times anything notices.

Decisions, stage timeouts, gate command deadlines, the watchdog and back-offs run on the monotonic
clock (``station.ports.Clock.monotonic``); the wall clock only stamps records and judges a code's
dates. The running pipeline (real lane, SQLite store, gpiozero mock gate, the pyzbar reader, the HC1
judge with the demo trust list) gets the station's clock (``ClockWatch``) over a clock whose wall
time the test steps every 50 ms during the screening; each decision is compared with the same
screening under a still clock. The source audit below keeps wall-time reads out of the timing code.
"""

from __future__ import annotations

import ast
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from drivers.codes.pyzbar_reader import PyzbarReader
from sim.issuer import demo_issuer, write_demo_trust_list
from sim.scene import SceneGeometry
from sim.scene_camera import qr_matrix, render_qr
from station.app import build_code_judge, build_gate, lane_for
from station.config import StationConfig
from station.domain.gate import gate_command_for
from station.domain.model import CodeColour, Decision, VisibleFrame
from station.lane.pipeline import Decided, Pipeline, PipelineSettings, StationIdentity
from station.ops.clock import ClockWatch
from station.ops.systemd import WatchdogGate
from station.store.events import SqliteEventStore
from tests.support.clocks import EPOCH_1970, SteppedClock
from tests.support.staff_lane import STAND_M, PersonDetector, PersonThermal
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[1]
CODE_TIMEOUT_S = 0.8


class PhoneCamera:
    """Frames at 20 fps showing ``payload`` as a QR code on a phone beside the face (or nothing)."""

    name = "phone-camera"

    def __init__(self, payload: bytes | None) -> None:
        self.image = np.full((480, 640, 3), 200, dtype=np.uint8)
        if payload is not None:
            qr = render_qr(qr_matrix(payload), (20, 20, 20), 4, 4)
            self.image[200 : 200 + qr.shape[0], 408 : 408 + qr.shape[1]] = qr
        self.seq = 0
        self._stop = threading.Event()

    def start(self) -> None:
        """Nothing to open."""

    def stop(self) -> None:
        """End reads."""
        self._stop.set()

    def read(self, timeout: float) -> VisibleFrame | None:
        """Return the next frame at the camera's pace, stamped on the host's monotonic clock."""
        if self._stop.wait(0.05):
            return None
        self.seq += 1
        return VisibleFrame(image=self.image, seq=self.seq, t=time.monotonic())

    def stats(self) -> dict[str, Any]:
        """Return the camera's state."""
        return {"state": "running", "reads": self.seq}


def screen_once(tmp_path: Path, payload: bytes | None, *, synced: bool, steps: list[float | None]) -> Decided:
    """Screen one person showing ``payload``; while they stand there, step the wall clock through ``steps``.

    A step is a delta in seconds, or None for "to 1970". Returns the one decision, after the gate acted.
    """
    cfg = StationConfig.model_validate(
        {"screening": {"code_timeout_s": CODE_TIMEOUT_S, "leave_after_s": 0.5}, "gate": {"pin_factory": "mock"}}
    )
    cfg.codes.trust_list_file = str(write_demo_trust_list(tmp_path))
    cfg.codes.verifiers = ["hc1"]
    stepped = SteppedClock(synced=synced)
    clock = ClockWatch(stepped, step_threshold_s=1.0)
    store = SqliteEventStore(tmp_path / "events.sqlite3", station_id="st-01", site="gate-a")
    store.begin_session()
    clock.attach(store)
    gate = build_gate(cfg, clock)
    judge = build_code_judge(cfg, tmp_path / "data", clock_synced=clock.synced)
    detector = PersonDetector(SceneGeometry().face_box_at(STAND_M))
    detector.present.clear()
    pipeline = Pipeline(
        identity=StationIdentity("gate-a", "st-01", "entry"),
        lane=lane_for(cfg),
        thermal=PersonThermal(detector, 36.6),
        camera=PhoneCamera(payload),
        detector=detector,
        reader=PyzbarReader(),
        verifiers=[judge],
        store=store,
        gate=gate,
        clock=clock,
        settings=PipelineSettings(),
    )
    decided: list[Decided] = []
    steps_before_decision: list[int] = []
    pipeline.add_listener(lambda d: (steps_before_decision.append(stepped.steps), decided.append(d)))
    pipeline.start()
    try:
        detector.present.set()  # the person steps up
        for step in steps:
            time.sleep(0.05)
            if decided:
                break
            if step is None:
                stepped.set_wall(EPOCH_1970)
            else:
                stepped.step(step)
        wait_until(lambda: decided, timeout=10.0, what="a decision")
        detector.present.clear()
        time.sleep(0.3)
        assert len(decided) == 1, [d.event.reason for d in decided]
        assert not steps or steps_before_decision[0] >= 8, "the wall clock stepped while the person was being screened"
        return decided[0]
    finally:
        pipeline.stop()
        gate.close()
        judge.close()
        store.close()


STEPS: list[float | None] = [3 * 3600.0, -6 * 3600.0, None, 86_400.0 * 20_000, -3 * 3600.0, 86_400.0, None, 7200.0] * 6


def assert_same(still: Decided, stepped: Decided) -> None:
    assert (stepped.event.decision, stepped.event.reason) == (still.event.decision, still.event.reason)
    assert stepped.gate.executed and stepped.gate.reason == "ok", stepped.gate  # never refused as expired
    # The screening took about as long by the monotonic clock (a timeout read from a wall clock stepped by
    # hours would fire at once or never); the margin is for a loaded machine, not for the clock.
    assert abs(stepped.event.latency_ms["total"] - still.event.latency_ms["total"]) < 2000.0


@pytest.mark.slow
def test_no_code_times_out_once_at_its_timeout_whatever_the_wall_clock_does(tmp_path):
    still = screen_once(tmp_path / "still", None, synced=True, steps=[])
    stepped = screen_once(tmp_path / "stepped", None, synced=True, steps=STEPS)
    assert (still.event.decision, still.event.reason) == (Decision.RETRY, "no_code")
    assert_same(still, stepped)
    assert CODE_TIMEOUT_S * 1000 <= stepped.event.latency_ms["total"] < CODE_TIMEOUT_S * 1000 + 2000


@pytest.mark.slow
def test_an_unsynced_clock_stepping_about_gives_the_same_staff_check_for_a_signed_code(tmp_path):
    now = time.time()
    code = demo_issuer().issue(CodeColour.GREEN, iat=int(now) - 600, exp=int(now) + 86400, holder="p-1").encode()
    still = screen_once(tmp_path / "still", code, synced=False, steps=[])
    stepped = screen_once(tmp_path / "stepped", code, synced=False, steps=STEPS)
    assert (still.event.decision, still.event.reason) == (Decision.MANUAL_CHECK, "code_unverifiable:clock_unsynced")
    assert_same(still, stepped)
    assert stepped.event.clock_synced is False


@pytest.mark.slow
def test_a_synchronised_clock_stepped_by_hours_still_passes_a_code_valid_at_every_one_of_those_hours(tmp_path):
    now = time.time()
    code = demo_issuer().issue(CodeColour.GREEN, iat=int(now) - 86400, exp=int(now) + 2 * 86400, holder="p-2").encode()
    hours: list[float | None] = [3 * 3600.0, -6 * 3600.0, 3 * 3600.0, -2 * 3600.0, 4 * 3600.0] * 8
    still = screen_once(tmp_path / "still", code, synced=True, steps=[])
    stepped = screen_once(tmp_path / "stepped", code, synced=True, steps=hours)
    assert (still.event.decision, stepped.gate.action.value) == (Decision.PASS, "open")
    assert_same(still, stepped)


def test_a_gate_command_lives_its_ttl_on_the_monotonic_clock_however_the_wall_clock_jumps():
    cfg = StationConfig.model_validate({"gate": {"pin_factory": "mock"}})
    stepped = SteppedClock()
    gate = build_gate(cfg, ClockWatch(stepped))
    try:
        for i, jump in enumerate([3 * 3600.0, -3 * 3600.0, -time.time() + EPOCH_1970, 86_400.0]):
            command = gate_command_for(f"e-{i}", Decision.RETRY, stepped.monotonic(), 0.5)
            stepped.step(jump)  # the wall clock jumps between the decision and the gate
            assert gate.execute(command, stepped.monotonic()).executed
            late = gate_command_for(f"l-{i}", Decision.RETRY, stepped.monotonic() - 0.6, 0.5)
            stepped.step(-jump)
            assert gate.execute(late, stepped.monotonic()).reason == "expired"
    finally:
        gate.close()


def test_the_watchdog_counts_on_its_own_monotonic_clock():
    """The watchdog gate is given a monotonic clock only: there is no wall time it could read."""
    import inspect

    params = inspect.signature(WatchdogGate).parameters
    assert "clock" in params and params["clock"].default is time.monotonic


# -- the audit: wall time stays out of the code that times things -------------------------------------

TIMING_CODE = [
    "station/lane/pipeline.py",
    "station/domain",
    "drivers/gate",
    "station/ops/systemd.py",
    "station/ops/backoff.py",
    "station/ops/ratelimit.py",
    "station/link/sync.py",
]
# Where the timing code may read the wall clock, and why: a record's stamp, and a code's dates.
ALLOWED_WALL = {
    ("station/lane/pipeline.py", "_judge"): "a code's dates are judged against the wall clock (policy.unsynced_clock_validity)",
    ("station/lane/pipeline.py", "_carry_out"): "the event's ts stamp",
}
WALL_CALLS = {("time", "time"), ("time", "time_ns"), ("datetime", "now"), ("datetime", "utcnow"), ("date", "today")}


def _wall_reads(path: Path) -> list[tuple[str, int, str]]:
    """Return (enclosing function, line, call) of every wall-clock read in one file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[str, int, str]] = []

    def visit(node: ast.AST, func: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
            if isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute):
                attr, owner = child.func.attr, child.func.value
                owner_name = owner.id if isinstance(owner, ast.Name) else owner.attr if isinstance(owner, ast.Attribute) else ""
                if (owner_name, attr) in WALL_CALLS or attr == "wall":
                    found.append((name, child.lineno, f"{owner_name}.{attr}"))
            visit(child, name)

    visit(tree, "<module>")
    return found


def test_the_timing_code_reads_the_wall_clock_only_to_stamp_records_and_judge_dates():
    offenders = []
    for entry in TIMING_CODE:
        target = ROOT / entry
        for path in sorted(target.rglob("*.py")) if target.is_dir() else [target]:
            rel = str(path.relative_to(ROOT))
            for func, line, call in _wall_reads(path):
                if (rel, func) not in ALLOWED_WALL:
                    offenders.append(f"{rel}:{line} {func}: {call}")
    assert offenders == []
    # And the audit does see a wall read where there is one.
    assert {f for f, _, _ in _wall_reads(ROOT / "station/lane/pipeline.py")} == {"_judge", "_carry_out"}
