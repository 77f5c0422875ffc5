"""`station run` as systemd runs it: READY after start-up, watchdog pings, status, clean SIGTERM stop.

The daemon gets real devices of the kinds it supports: the GY-MCU90640 emulator's pty as its serial
port, a video file as its camera (OpenCV opens files and devices alike), mock GPIO pins.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from sim.gy_mcu90640_emulator import GyMcu90640Emulator
from station.cli.stationctl import main as stationctl
from tests.support.daemon import ROOT, daemon_status, empty_room, recv_until, start_notified_daemon, write_config
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow


def test_daemon_lifecycle_under_systemd_notify(tmp_path: Path, emulator: GyMcu90640Emulator, video: Path):
    cfg = write_config(tmp_path, emulator.port, video)
    proc, sock = start_notified_daemon(tmp_path, cfg, WATCHDOG_USEC="2000000")
    try:
        msgs = recv_until(sock, b"READY=1", timeout=60)
        ready = next(m for m in msgs if b"READY=1" in m).decode()
        assert "STATUS=screening site=test-site station=gate-3" in ready
        # The watchdog is pinged while the screening loop makes progress (period 2 s → ping ≤ 1 s).
        recv_until(sock, b"WATCHDOG=1", timeout=5)

        # stationctl sees a running daemon, its thermal link, and an empty but healthy store
        # (once the daemon's runtime status, written every few seconds, shows frames).
        wait_until(
            lambda: daemon_status(cfg).get("daemon", {}).get("thermal", {}).get("frames_ok", 0) > 0, 20, "frames in status", interval=0.2
        )
        r = CliRunner().invoke(stationctl, ["--config", str(cfg), "status", "--json"], catch_exceptions=False)
        status = json.loads(r.output)
        assert r.exit_code == 0, r.output
        assert status["daemon"]["state"] == "running"
        assert status["daemon"]["pid"] == proc.pid
        assert status["daemon"]["thermal"]["baud"] == 460800  # probed: 115200 first, then 460800
        assert status["daemon"]["thermal"]["frames_ok"] > 0
        assert status["daemon"]["lane_state"] == "idle"
        # The code judge reports which verifiers run and which trust list is in force (none provisioned here).
        assert status["daemon"]["codes"][0]["verifiers"] == ["hc1", "online"]
        assert status["daemon"]["codes"][0]["trust_list"]["source"] == "none"
        assert status["today"] == {}

        # SIGHUP (a reflexive `kill -HUP`) must not take the gate down.
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)  # a HUP that killed it would have done so by now: a wait for nothing to happen
        assert proc.poll() is None

        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err[-3000:]
        assert any(b"STOPPING=1" in m for m in _drain(sock))
        assert "signal received signal=SIGTERM" in err
        assert "SIGHUP ignored" in err
        r = CliRunner().invoke(stationctl, ["--config", str(cfg), "status", "--json"], catch_exceptions=False)
        assert json.loads(r.output)["daemon"]["state"] == "stopped" and r.exit_code == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sock.close()


def _drain(sock: socket.socket) -> list[bytes]:
    out = []
    sock.settimeout(0.2)
    while True:
        try:
            out.append(sock.recv(4096))
        except TimeoutError:
            return out


def test_daemon_without_its_thermal_module_runs_degraded_and_finds_it_later(tmp_path: Path, video: Path):
    # The module is not there at boot (the link is a symlink that does not exist yet): the station
    # must come up, say it is degraded, and pick the module up when it appears — not crash-loop.
    link = tmp_path / "thermal-link"
    cfg = write_config(tmp_path, str(link), video)
    cfg.write_text(cfg.read_text().replace("baud = 0", "baud = 460800"))
    proc, sock = start_notified_daemon(tmp_path, cfg)
    emu = GyMcu90640Emulator(empty_room, baud=460800, refresh_hz=8)
    try:
        msgs = recv_until(sock, b"READY=1", timeout=60)
        ready = next(m for m in msgs if b"READY=1" in m).decode()
        assert f"DEGRADED thermal: reconnecting on {link}" in ready and "manual_check" in ready, ready
        assert "DEGRADED detector" not in ready and "DEGRADED mqtt" not in ready, ready
        emu.start()
        link.symlink_to(emu.port)
        thermal: dict = {}

        def thermal_connected() -> bool:
            thermal.clear()
            thermal.update(daemon_status(cfg).get("daemon", {}).get("thermal", {}))
            return thermal.get("state") == "connected" and thermal.get("frames_ok", 0) > 0

        wait_until(thermal_connected, 20, "the daemon to find its thermal module", interval=0.5)
        assert thermal.get("state") == "connected" and thermal["frames_ok"] > 0, thermal
        assert thermal["open_failures"] >= 1
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        emu.stop()
        sock.close()


def test_daemon_refuses_a_bad_config_with_exit_2(tmp_path: Path):
    cfg = tmp_path / "station.toml"
    cfg.write_text("[screening]\nfever_threshold_c = 3.73\n")
    proc = subprocess.run(
        [sys.executable, "-m", "station.cli.station_main", "run", "--config", str(cfg)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "station.toml:2: screening.fever_threshold_c = 3.73: Input should be greater than or equal to 35" in proc.stderr
