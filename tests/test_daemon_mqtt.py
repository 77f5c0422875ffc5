"""`station run` with a broker: states, stats, commands and Home Assistant discovery from the real
daemon (emulated thermal module on a pty, a video file as camera, mock GPIO, real mosquitto), and
the Will when the daemon is SIGKILLed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sim.gy_mcu90640_emulator import GyMcu90640Emulator
from station.link.command_auth import new_signing_key, public_pem, sign_command
from tests.support.broker import Broker, mosquitto_available
from tests.support.daemon import write_config
from tests.support.sync_rig import Collector
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[1]
BASE = "checkpoint/v1/test-site/gate-3"
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not mosquitto_available(), reason="mosquitto not installed")]


def test_daemon_serves_commands_states_and_discovery_and_its_will_says_offline(
    tmp_path: Path,
    emulator: GyMcu90640Emulator,
    video: Path,
) -> None:
    broker = Broker(tmp_path / "broker")
    broker.start()
    cfg = write_config(tmp_path, emulator.port, video)
    centre_key = new_signing_key()
    keys_file = tmp_path / "centre-keys.pem"
    keys_file.write_text(public_pem(centre_key.public_key()))
    cfg.write_text(
        cfg.read_text() + f'\n[mqtt]\nurl = "{broker.url}"\nstats_interval_s = 0.5\nha_discovery = true\n'
        f'\n[centre]\ncommand_keys_file = "{keys_file}"\n'
    )
    centre = Collector(broker.port, "centre", f"{BASE}/#", persistent=False)
    home_assistant = Collector(broker.port, "home-assistant", "homeassistant/#", persistent=False)
    proc = subprocess.Popen(
        [sys.executable, "-m", "station.cli.station_main", "run", "--config", str(cfg)],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def states() -> set[str]:
            return {t.rsplit("/", 1)[-1] for t, _, _ in centre.raw() if "/state/" in t}

        wait_until(
            lambda: states() >= {"thermal", "camera", "detector", "gate", "screening", "outbox", "fleet"},
            60,
            "the daemon's component states",
        )
        fleet = [json.loads(p) for t, p, _ in centre.raw() if t == f"{BASE}/state/fleet"][-1]
        assert len(fleet["config_hash"]) == 16 and fleet["models"] and fleet["district_key_id"] is None and fleet["trust_list_version"] == 0
        status = [json.loads(p) for t, p, _ in centre.raw() if t == f"{BASE}/status"]
        assert status[-1]["state"] == "online"
        outbox = [json.loads(p) for t, p, _ in centre.raw() if t == f"{BASE}/state/outbox"][-1]
        assert outbox["mqtt"] == "connected" and outbox["schema"] == 1
        wait_until(lambda: any(t == f"{BASE}/stats" for t, _, _ in centre.raw()), 10, "periodic stats")
        wait_until(lambda: len(home_assistant.raw()) >= 5, 10, "Home Assistant discovery")

        centre.client.publish(f"{BASE}/cmd/ping", json.dumps({"id": "p-1"}).encode(), qos=1)
        signed = sign_command(
            centre_key,
            site="test-site",
            station="gate-3",
            command="set-threshold",
            args={"fever_threshold_c": 37.6},
            by="duty-officer",
            command_id="t-1",
        )
        centre.client.publish(f"{BASE}/cmd/set-threshold", json.dumps(signed).encode(), qos=1)
        centre.client.publish(f"{BASE}/cmd/open-gate", json.dumps({"id": "o-1", "deadline": time.time() + 10}).encode(), qos=1)
        wait_until(lambda: sum(1 for t, _, _ in centre.raw() if t.endswith("/result")) >= 3, 10, "command results")
        results = {json.loads(p)["id"]: json.loads(p) for t, p, _ in centre.raw() if t.endswith("/result")}
        assert results["p-1"]["ok"] and results["p-1"]["result"]["pong"] is True
        assert results["t-1"]["ok"], results["t-1"]
        assert not results["o-1"]["ok"] and results["o-1"]["reason"] == "unsigned", "the daemon refuses unsigned commands"
        assert "fever_threshold_c = 37.6" in cfg.read_text(), "persisted into the daemon's own config file"

        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        wait_until(
            lambda: json.loads([p for t, p, _ in centre.raw() if t == f"{BASE}/status"][-1])["state"] == "offline",
            30,
            "the Will after SIGKILL",
        )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        centre.close()
        home_assistant.close()
        broker.kill()
