"""`station demo --mqtt` end to end against a real mosquitto, and `stationctl outbox` after an outage.

Every decision the demo prints with --json must reach a subscriber on checkpoint/v1/# (the payload
carries the event_id); with the broker down the demo still finishes, the events stay queued, and
`stationctl outbox flush` delivers them once the broker is up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.broker import Broker, free_port, mosquitto_available
from tests.support.sync_rig import Collector
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not mosquitto_available(), reason="mosquitto not installed")]

ROOT = Path(__file__).resolve().parents[1]
PEOPLE = 4  # pass, fever (with its alarm message), red code, yellow code: no 5 s code timeouts


def _env(tmp_path: Path) -> dict[str, str]:
    # No config file: the schema defaults (site demo-site, station lane-1).
    return dict(os.environ, PYTHONPATH=str(ROOT), CHECKPOINT_CONFIG=str(tmp_path / "absent.toml"))


def run_demo(tmp_path: Path, data_dir: Path, url: str) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]], float]:
    t0 = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "station.cli.station_main",
            "demo",
            "--fast",
            "--json",
            "--people",
            str(PEOPLE),
            "--data-dir",
            str(data_dir),
            "--mqtt",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
        env=_env(tmp_path),
    )
    decisions = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return proc, decisions, time.monotonic() - t0


def stationctl(tmp_path: Path, data_dir: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "station.cli.stationctl", "--data-dir", str(data_dir), "outbox", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=_env(tmp_path),
    )


def screening_event_ids(sub: Collector) -> list[str]:
    return [p["event"]["event_id"] for p in sub.unique().values() if p["_topic"].endswith("/events/screening")]


def test_demo_with_broker_delivers_every_printed_decision(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker")
    broker.start()
    sub = Collector(broker.port, "command-centre", "checkpoint/v1/#", persistent=False)
    try:
        assert sub.subscribed.wait(5)
        proc, decisions, _ = run_demo(tmp_path, tmp_path / "data", broker.url)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert len(decisions) == PEOPLE
        printed = [d["event_id"] for d in decisions]
        # The demo waited for its outbox to drain before it exited: everything is already there.
        assert screening_event_ids(sub) == printed
        alarms = [p for p in sub.unique().values() if p["_topic"].endswith("/events/alarm")]
        assert [p["event"]["event_id"] for p in alarms] == [d["event_id"] for d in decisions if d["alarm"]]
        for p in sub.unique().values():
            assert p["_topic"].startswith("checkpoint/v1/demo-site/lane-1/")
            assert {"msg_id", "station_id", "seq", "session", "ts", "clock_synced", "schema"} <= set(p)
        states = {t.rsplit("/", 1)[-1] for t, _, _ in sub.raw() if "/lane-1/state/" in t}
        assert states >= {"thermal", "camera", "detector", "gate", "outbox"}, states
        statuses = [json.loads(payload)["state"] for t, payload, _ in sub.raw() if t.endswith("/status")]
        assert statuses[:1] == ["online"] and statuses[-1] == "stopped"
        status = stationctl(tmp_path, tmp_path / "data", "status", "--json")
        assert status.returncode == 0 and json.loads(status.stdout)["pending"] == 0
    finally:
        sub.close()
        broker.kill()


def test_demo_with_broker_down_queues_then_outbox_flush_delivers(tmp_path: Path) -> None:
    port = free_port()
    url = f"mqtt://127.0.0.1:{port}"
    data_dir = tmp_path / "data"
    proc, decisions, elapsed = run_demo(tmp_path, data_dir, url)  # nothing listens on the port
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(decisions) == PEOPLE
    n_alarms = sum(1 for d in decisions if d["alarm"])
    summary = next(json.loads(ln)["summary"] for ln in proc.stderr.splitlines() if ln.startswith('{"summary"'))
    assert summary["outbox_pending"] == PEOPLE + n_alarms
    assert elapsed < 60, f"the demo's wait for an unreachable broker is bounded ({elapsed:.0f} s)"

    status = stationctl(tmp_path, data_dir, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["pending"] == PEOPLE + n_alarms
    assert json.loads(status.stdout)["alarms_pending"] == n_alarms
    export = stationctl(tmp_path, data_dir, "export", "-")
    assert export.returncode == 0, export.stderr
    exported = [json.loads(line) for line in export.stdout.splitlines()]
    assert [e["payload"]["event"]["event_id"] for e in exported if e["topic"].endswith("/screening")] == [d["event_id"] for d in decisions]
    again = json.loads(stationctl(tmp_path, data_dir, "status", "--json").stdout)
    assert again["pending"] == len(exported) == PEOPLE + n_alarms, "export removes nothing"

    failed = stationctl(tmp_path, data_dir, "flush", "--mqtt", url, "--timeout", "1")
    assert failed.returncode == 1, "broker still down: rows left, exit 1"

    broker = Broker(tmp_path / "broker", port=port)
    broker.start()
    sub = Collector(broker.port, "command-centre", "checkpoint/v1/#", persistent=False)
    try:
        assert sub.subscribed.wait(5)
        flush = stationctl(tmp_path, data_dir, "flush", "--mqtt", url, "--timeout", "30", "--json")
        assert flush.returncode == 0, flush.stdout + flush.stderr
        assert json.loads(flush.stdout)["sent"] == PEOPLE + n_alarms
        wait_until(lambda: len(sub.unique()) >= PEOPLE + n_alarms, 10, "the flushed messages")
        assert screening_event_ids(sub) == [d["event_id"] for d in decisions]
        # The flush tool never claims to be the station: it has its own status topic.
        assert not [t for t, _, _ in sub.raw() if t.endswith("/lane-1/status")]
        after = stationctl(tmp_path, data_dir, "status", "--json")
        assert json.loads(after.stdout)["pending"] == 0
    finally:
        sub.close()
        broker.kill()
