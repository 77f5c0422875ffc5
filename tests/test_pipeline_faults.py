"""The lane under device faults, through the real pipeline (demo scene, pty thermal link)."""

from __future__ import annotations

import threading
import time

import pytest

from sim.demo import DemoRun
from station.config import StationConfig
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow


def start_demo(tmp_path, people: int) -> tuple[DemoRun, threading.Thread, dict]:
    run = DemoRun(StationConfig(), people=people, data_dir=tmp_path, fast=True)
    box: dict = {}
    t = threading.Thread(target=lambda: box.setdefault("result", run.run(max_s=60)), daemon=True)
    t.start()
    wait_until(lambda: run.app and run.app.ready_t, 30, "the station to start")
    assert run.app is not None and run.app.ready_t is not None, "station did not start"
    return run, t, box


def test_a_silent_thermal_sensor_turns_into_manual_check_never_pass(tmp_path):
    run, t, box = start_demo(tmp_path, people=3)
    stalled_at = time.monotonic()
    run.emulator.stall(60.0)  # the module hangs: no more frames
    t.join(90)
    assert not t.is_alive()
    decided = box["result"].decided
    after = [d for _, d in decided if d.event.stage_t["enter"] > stalled_at - 0.5]
    assert after, "nobody was screened after the stall"
    for d in after:
        assert d.event.decision.value == "manual_check", d.event
        assert d.event.reason == "sensor_fault"
        assert d.gate.action.value == "hold" and d.event.temperature_c is None
    assert box["result"].thermal_stats["stalls"] >= 1  # the driver noticed and tried to reopen


def test_corrupt_serial_bytes_are_counted_and_skipped(tmp_path):
    run, t, box = start_demo(tmp_path, people=3)
    for _ in range(5):
        run.emulator.flip_bit()
        run.emulator.garbage_burst(300)
        time.sleep(0.3)  # faults spread over the run, between frames: the pace is the test
    t.join(90)
    result = box["result"]
    assert [p.expected for p, _ in result.decided] == [d.event.decision.value for _, d in result.decided]
    assert result.thermal_stats["checksum_errors"] >= 1
    assert result.thermal_stats["resync_bytes"] >= 300
