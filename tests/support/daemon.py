"""Real devices for a ``station run`` daemon under test: the thermal emulator's pty, a lane video, a config.

The daemon gets devices of the kinds it supports: the GY-MCU90640 emulator's pseudo-terminal as its
serial port, a video file as its camera (OpenCV opens files and devices alike) and mock GPIO pins.
``emulator`` and ``video`` are pytest fixtures, registered for every test module by ``tests/conftest.py``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from sim.gy_mcu90640_emulator import GyMcu90640Emulator
from station.cli.stationctl import main as stationctl
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


def empty_room(_now: float) -> tuple[np.ndarray, float]:
    """Return a 22 °C room with nobody in it and a 30 °C module die: the emulator's scene."""
    return np.full((24, 32), 22.0, dtype=np.float32), 30.0


@pytest.fixture
def emulator() -> Iterator[GyMcu90640Emulator]:
    """Yield a started GY-MCU90640 emulator (8 Hz, 460800 baud) on a pty; stop it afterwards."""
    emu = GyMcu90640Emulator(empty_room, baud=460800, refresh_hz=8)
    emu.start()
    yield emu
    emu.stop()


@pytest.fixture
def video(tmp_path: Path) -> Path:
    """Return a 30-frame 640x480 MJPG file that serves as the daemon's camera."""
    path = tmp_path / "lane.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 15, (640, 480))
    frame = np.full((480, 640, 3), 120, dtype=np.uint8)
    for i in range(30):
        frame[:, :, 1] = 100 + i
        writer.write(frame)
    writer.release()
    return path


def write_config(tmp_path: Path, port: str, video: Path) -> Path:
    """Write ``station.toml`` for site test-site, station gate-3 on thermal ``port`` and camera ``video``; return its path."""
    cfg = tmp_path / "station.toml"
    cfg.write_text(
        f"""
[station]
site = "test-site"
id = "gate-3"
data_dir = "{tmp_path / "data"}"

[thermal]
port = "{port}"
baud = 0
refresh_hz = 8

[camera]
device = "{video}"

[gate]
pin_factory = "mock"

[voice]
enabled = false  # these daemons test other modules: whether this machine has a sound card is not theirs to say
"""
    )
    return cfg


def wait_for_path(path: Path, timeout: float = 60.0) -> None:
    """Wait until ``path`` exists (a control socket, a runtime file the daemon writes)."""
    wait_until(path.exists, timeout, f"{path} to appear", interval=0.1)


def daemon_status(cfg: Path) -> dict[str, Any]:
    """Return ``stationctl --config cfg status --json`` as a dict ({} while it prints no JSON)."""
    r = CliRunner().invoke(stationctl, ["--config", str(cfg), "status", "--json"], catch_exceptions=False)
    try:
        status = json.loads(r.output)
    except ValueError:
        return {}
    return status if isinstance(status, dict) else {}


def start_notified_daemon(tmp_path: Path, cfg: Path, **env_extra: str) -> tuple[subprocess.Popen[str], socket.socket]:
    """Start ``station run --config cfg`` as systemd would: its sd_notify datagrams arrive on the returned socket."""
    notify = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    env = dict(os.environ, NOTIFY_SOCKET=str(notify), **env_extra)
    env.pop("WATCHDOG_PID", None)
    if "WATCHDOG_USEC" not in env_extra:
        env.pop("WATCHDOG_USEC", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "station.cli.station_main", "run", "--config", str(cfg)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, sock


def recv_until(sock: socket.socket, want: bytes, timeout: float) -> list[bytes]:
    """Return the sd_notify datagrams received until one contains ``want``; fail after ``timeout`` seconds."""
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            got.append(sock.recv(4096))
        except TimeoutError:
            break
        if any(want in g for g in got):
            return got
    raise AssertionError(f"never received {want!r}; got {got!r}")
