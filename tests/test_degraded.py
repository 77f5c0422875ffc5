"""A degraded module is named, with its reason, in systemd's READY status, the log and `stationctl status`.

The daemon runs as systemd runs it (`station run`, NOTIFY_SOCKET) on real devices of the kinds it
supports (the GY-MCU90640 emulator's pty, a video file as camera, mock GPIO) with one module broken:
an empty models directory, so the face detector has no model. The healthy modules must not be named.
"""

from __future__ import annotations

import signal
import socket
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from sim.gy_mcu90640_emulator import GyMcu90640Emulator
from station.cli.stationctl import main as stationctl
from tests.support.daemon import daemon_status, recv_until, start_notified_daemon, write_config
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow


def test_a_missing_face_model_is_named_in_ready_log_and_status(tmp_path: Path, emulator: GyMcu90640Emulator, video: Path) -> None:
    empty_models = tmp_path / "models"
    empty_models.mkdir()
    cfg = write_config(tmp_path, emulator.port, video)
    cfg.write_text(cfg.read_text() + f'\n[detector]\nmodels_dir = "{empty_models}"\n')
    proc, sock = start_notified_daemon(tmp_path, cfg)
    try:
        msgs = recv_until(sock, b"READY=1", timeout=60)
        ready = next(m for m in msgs if b"READY=1" in m).decode()
        status = next(line for line in ready.splitlines() if line.startswith("STATUS=") and "screening" in line)
        assert "DEGRADED detector: model ultraface-rfb-320: no manifest" in status and "the lane stays closed" in status, status
        assert status.count("DEGRADED") == 1, status  # thermal, camera, code reader, control socket are healthy

        # `stationctl status` over the control socket: the module and its reason, nothing else degraded.
        result: dict = {}

        def answered() -> bool:
            result.update(daemon_status(cfg).get("daemon", {}))
            return str(result.get("source", "")).startswith("control socket")

        wait_until(answered, 30, "the daemon's control socket")
        assert [d["module"] for d in result["degraded"]] == ["detector"], result["degraded"]
        assert str(empty_models) in result["degraded"][0]["reason"] and "no manifest" in result["degraded"][0]["reason"]
        text = CliRunner().invoke(stationctl, ["--config", str(cfg), "status"], catch_exceptions=False).output
        assert "detector: degraded: model ultraface-rfb-320: no manifest" in text, text
        assert "thermal: degraded" not in text and "control: degraded" not in text, text

        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        degraded_lines = [line for line in err.splitlines() if "station running degraded" in line]
        assert len(degraded_lines) == 1, err
        assert "degraded.module=detector" in degraded_lines[0] and "no manifest" in degraded_lines[0], degraded_lines
        assert "running without its thermal module" not in err  # the old catch-all line blamed the healthy module
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sock.close()


def test_a_missing_code_library_and_a_busy_display_port_are_each_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo station (real emulator pty, scene camera) with the pyzbar library unloadable and its display port taken."""
    import threading

    from sim.demo import DemoRun
    from station.config import StationConfig

    # As on a box without libzbar: importing pyzbar fails, so building the configured reader does.
    monkeypatch.setitem(sys.modules, "pyzbar", None)
    monkeypatch.setitem(sys.modules, "pyzbar.pyzbar", None)
    monkeypatch.delitem(sys.modules, "drivers.codes.pyzbar_reader", raising=False)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        cfg = StationConfig()
        cfg.codes.reader = "pyzbar"
        cfg.http.enabled, cfg.http.port = True, busy.getsockname()[1]
        cfg.voice.enabled = False  # a sound card or not is this machine's, not the test's (tests/test_speaker_station.py)
        run = DemoRun(cfg, people=1, data_dir=tmp_path / "data", fast=True)
        stop = threading.Event()
        worker = threading.Thread(target=run.run, kwargs={"stop": stop, "max_s": 60, "keep_running": True}, daemon=True)
        worker.start()
        try:
            wait_until(lambda: run.app is not None and run.app.ready_t is not None, 60, "the demo station to be ready")
            assert run.app is not None
            degraded = {d["module"]: d["reason"] for d in run.app.runtime_status()["degraded"]}
            assert set(degraded) == {"code_reader", "http"}, degraded  # thermal, camera, detector, control are healthy
            assert degraded["code_reader"].startswith("pyzbar cannot be loaded") and "no_code" in degraded["code_reader"]
            assert f":{busy.getsockname()[1]}" in degraded["http"], degraded
            assert run.app.pipeline is not None and run.app.pipeline.reader.name == "unavailable:pyzbar"
        finally:
            stop.set()
            worker.join(60)
    assert not worker.is_alive()
