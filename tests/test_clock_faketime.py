"""The real demo started with the wall clock at 1970 (``faketime``): every record says clock_synced=false, nothing misfires.

The demo process (emulated thermal module on a pty, the real pipeline, SQLite store, gate on mock
pins) runs under libfaketime with its wall clock at 1970-01-10 and its monotonic clock real, as a
Pi without RTC boots before NTP. Decisions must match the scene's ground truth (no spurious timeout,
no code judged by the wrong date where the policy says not to), every gate command is carried out
(none refused as expired), every event is stamped 1970 with ``clock_synced`` false, and no clock
correction is written (the clock never became synchronised). Under the default policy the signed
codes are a staff check (``code_unverifiable:clock_unsynced``); under ``trust_wall_clock`` (the
demo's issuer signs by the same faked clock) they decide as usual.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from station.store.events import SqliteEventStore

ROOT = Path(__file__).resolve().parents[1]
SHIM = ROOT / "tests" / "support" / "faketime_shim"
START = "@1970-01-10 00:00:00"  # late enough that the demo's expired code (issued 3 days earlier) is after the epoch
WALL_1970_END = 31_536_000.0

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("faketime") is None, reason="the faketime binary is not installed (Debian package faketime)"),
]


@pytest.mark.parametrize(
    ("policy", "code_reason"),
    [("trust_wall_clock", "ok"), ("manual_check", "code_unverifiable:clock_unsynced")],
)
def test_the_demo_at_1970_stamps_unsynced_events_and_never_misfires(tmp_path, policy, code_reason):
    config = tmp_path / "station.toml"
    config.write_text(f'[policy]\nunsynced_clock_validity = "{policy}"\n', encoding="utf-8")
    data = tmp_path / "data"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SHIM), str(ROOT)]), FAKETIME_DONT_FAKE_MONOTONIC="1")
    cmd = ["faketime", "-f", START, sys.executable, "-m", "station.cli.station_main", "demo", "--fast", "--json"]
    proc = subprocess.run(
        [*cmd, "--people", "7", "--data-dir", str(data), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    decisions = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert len(decisions) == 7
    # The demo's own ground truth follows the policy (sim/demo.py expected_decision): every one agrees.
    assert [(d["person"], d["decision"]) for d in decisions] == [(d["person"], d["expected"]) for d in decisions]
    green = decisions[0]
    assert green["reason"] == code_reason and green["decision"] == ("pass" if policy == "trust_wall_clock" else "manual_check")
    for d in decisions:
        assert d["gate"]["executed"] is True and d["gate"]["reason"] == "ok", d  # no command refused as expired
        if d["reason"] != "no_code":  # the one timeout in the scene is the person who shows no code
            assert d["latency_ms"]["total"] < 4000, d
    with SqliteEventStore(data / "events.sqlite3", station_id="x", site="x", read_only=True) as store:
        events = store.tail(20)
        assert len(events) == 7
        for ev in events:
            assert ev["clock_synced"] is False and 0 < ev["ts"] < WALL_1970_END, ev
            assert ev["policy"]["unsynced_clock_validity"] == policy
        assert store.clock_corrections() == []  # never synchronised: nothing is known to correct by
        pending = store.outbox_rows_after(0)
        assert pending and all(json.loads(r.payload)["clock_synced"] is False for r in pending if "/events/screening" in r.topic)
