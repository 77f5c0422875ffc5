"""Disk full: a decision whose event cannot be written never opens the gate and is not lost.

The station runs the demo lane (real pipeline, pty thermal link, real SQLite) in a child process
whose file-size limit (RLIMIT_FSIZE) is dropped to one byte once it is up: every SQLite write then
fails as on a full disk (CPython ignores SIGXFSZ, so writes fail with EFBIG instead of killing the
process). The child raises the limit again after the first refused decision, and reports what
happened as JSON. A child process, because the limit is per process and would hit pytest's own files.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

CHILD = r"""
import json, resource, sys, threading, time
from pathlib import Path
from station.config import StationConfig
from sim.demo import DemoRun

data = Path(sys.argv[1])
run = DemoRun(StationConfig(), people=3, data_dir=data, fast=True)
refused = []
space_back = threading.Event()
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)

def listener(person, d):
    if not d.gate.executed and d.gate.reason.startswith("fault: event not recorded"):
        refused.append({"event_id": d.event.event_id, "decision": d.event.decision.value, "action": d.gate.action.value,
                        "relay_on": any(name == "relay" and value for _, name, value in run.app.pipeline.gate.history()),
                        "pending": run.app.pipeline.stats()["unrecorded_pending"]})
        space_back.set()

run.on_decided = listener
box = {}
t = threading.Thread(target=lambda: box.setdefault("result", run.run(max_s=90)), daemon=True)
t.start()
deadline = time.monotonic() + 60
while time.monotonic() < deadline and not (run.app and run.app.pipeline and run.app.ready_t):
    time.sleep(0.02)
resource.setrlimit(resource.RLIMIT_FSIZE, (1, hard))  # the disk is full from here on
space_back.wait(60)
time.sleep(1.5)  # a few retries against the full disk: the time spent full is the test
pending_while_full = run.app.pipeline.stats()["unrecorded_pending"]
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space returns
deadline = time.monotonic() + 30
while time.monotonic() < deadline and run.app.pipeline.stats().get("recorded_late", 0) < len(refused):
    time.sleep(0.05)
stats = run.app.pipeline.stats()
t.join(120)
result = box["result"]
print(json.dumps({
    "refused": refused,
    "pending_while_full": pending_while_full,
    "recorded_late": stats.get("recorded_late", 0),
    "record_failed": stats.get("record_failed", 0),
    "decided": [{"event_id": d.event.event_id, "executed": d.gate.executed} for _, d in result.decided],
    "db": str(result.db_path),
}))
"""


def test_an_unwritten_event_is_kept_written_when_space_returns_and_never_opened_the_gate(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "data")], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["refused"], "no decision met the full disk"
    first = out["refused"][0]
    # The first person (green code, normal temperature) would have been let through: the gate did not open.
    assert first["decision"] == "pass" and first["action"] == "open"
    assert first["relay_on"] is False
    assert out["pending_while_full"] >= 1, "the unwritten event was dropped instead of kept"
    assert out["recorded_late"] == len(out["refused"])
    assert "kept for retry" in proc.stderr and "event recorded after a failed write" in proc.stderr

    db = sqlite3.connect(out["db"])
    stored = {row[0] for row in db.execute("SELECT event_id FROM events")}
    every = {d["event_id"] for d in out["decided"]}
    assert every <= stored, f"decisions missing from the store: {every - stored}"
    for r in out["refused"]:
        gate_rows = db.execute("SELECT executed, reason FROM gate_actions WHERE event_id = ?", (r["event_id"],)).fetchall()
        assert gate_rows and all(executed == 0 for executed, _ in gate_rows), gate_rows
        assert gate_rows[0][1].startswith("fault: event not recorded")
        # and its outbox message exists, so it still reaches the centre
        assert db.execute("SELECT COUNT(*) FROM outbox WHERE CAST(payload AS TEXT) LIKE ?", (f"%{r['event_id']}%",)).fetchone()[0] >= 1
