"""stationctl against a running daemon: the control socket, live status, refusals, doctor, purge.

The daemon runs as ``station run`` in a subprocess on real devices of the kinds it supports (the
GY-MCU90640 emulator's pty, a video file as camera, mock GPIO), exactly as tests/test_daemon.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from station.cli.stationctl import main as stationctl
from station.ops.control import ControlError, request
from tests.support.daemon import ROOT, wait_for_path, write_config

pytestmark = pytest.mark.slow


def test_control_socket_live_status_refusals_and_shutdown(tmp_path: Path, emulator, video: Path) -> None:
    cfg = write_config(tmp_path, emulator.port, video)
    sock_path = tmp_path / "data" / "control.sock"
    env = dict(os.environ)
    for var in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "RUNTIME_DIRECTORY"):
        env.pop(var, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "station.cli.station_main", "run", "--config", str(cfg)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run = CliRunner().invoke
    try:
        wait_for_path(sock_path)
        # Group may connect, others may not.
        assert stat.S_IMODE(sock_path.stat().st_mode) == 0o660

        ping = request(sock_path, "ping")
        assert ping["pid"] == proc.pid and ping["data_dir"] == str(tmp_path / "data")
        counters = request(sock_path, "counters")
        assert {"pipeline", "gate", "outbox", "today", "retention"} <= counters.keys()
        assert counters["gate"]["closed"] is False
        with pytest.raises(ControlError, match="unknown cmd"):
            request(sock_path, "open-the-gate")
        # A malformed line gets an error line back, and the connection stays usable.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(sock_path))
            f = s.makefile("rwb")
            f.write(b'not json\n{"cmd": "ping"}\n')
            f.flush()
            assert json.loads(f.readline())["ok"] is False
            assert json.loads(f.readline())["result"]["pid"] == proc.pid

        r = run(stationctl, ["--config", str(cfg), "status", "--json"], catch_exceptions=False)
        status = json.loads(r.stdout)
        assert r.exit_code == 0, r.output
        assert status["daemon"]["source"].startswith("control socket")
        assert status["daemon"]["state"] == "running" and status["daemon"]["pid"] == proc.pid

        # The gate belongs to the daemon: outputs are not driven behind its back …
        r = run(stationctl, ["--config", str(cfg), "test", "relay"])
        assert r.exit_code == 3 and "refused" in r.output
        # … unless forced (mock pins here, so it is harmless).
        r = run(stationctl, ["--config", str(cfg), "test", "lights", "--force", "--json"])
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout.splitlines()[-1])["ok"] is True

        r = run(stationctl, ["--config", str(cfg), "doctor", "--json"])
        report = json.loads(r.stdout)
        checks = {c["name"]: c for c in report["checks"]}
        assert checks["daemon"]["level"] == "ok"
        assert "held by the running daemon" in checks["thermal port"]["detail"]
        assert report["exit_code"] == r.exit_code

        r = run(stationctl, ["--config", str(cfg), "data", "purge", "--json"])
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["via"].startswith("daemon")

        r = run(stationctl, ["--config", str(cfg), "outbox", "retry", "--json"])
        retry = json.loads(r.stdout)
        assert retry["daemon"] == str(sock_path) and retry["woken"] is False  # no broker configured
        assert "mqtt.url" in retry["reason"]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-3000:]
    assert not sock_path.exists(), "the daemon removes its socket on a clean stop"
    r = run(stationctl, ["--config", str(cfg), "status", "--json"])
    status = json.loads(r.stdout)
    assert r.exit_code == 1
    assert status["daemon"]["state"] == "stopped" and status["daemon"]["source"].startswith("status file")
