"""A running demo station whose data directory is on a medium the test makes fail for real.

The station is the demo composition (real pipeline, pty thermal link, real SQLite, real MQTT to a
real mosquitto, the operator display on a loopback port), run on a thread of the test process;
its data directory is a file system the test mounted itself (root only): a small tmpfs it fills
(ENOSPC) or an ext4 image on a loop device it makes the kernel turn read-only (EROFS). Helpers
here mount, fault and read what the station says (MQTT ``state/storage``, the display's
``/api/status``, the runtime status) while the lane goes on deciding.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from station.config import StationConfig
from tests.support.broker import Broker, free_port, mosquitto_available
from tests.support.sync_rig import Collector
from tests.support.waiting import wait_until

REFUSED = "fault: event not recorded"


def can_mount() -> str | None:
    """Return why file systems cannot be mounted here (not root, no mount tools, no mosquitto), or None."""
    if os.geteuid() != 0:
        return "needs root to mount a file system of its own"
    if not shutil.which("mount") or not shutil.which("umount"):
        return "mount(8) not installed"
    if not mosquitto_available():
        return "mosquitto not installed"
    return None


def run(*cmd: str) -> str:
    """Run one system command, failing the test with its output when it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{' '.join(cmd)}: {proc.stderr.strip()}"
    return proc.stdout


@contextlib.contextmanager
def mounted(*args: str, target: Path) -> Iterator[Path]:
    """Mount (``mount <args> <target>``) for the block, then unmount lazily (handles may still be open)."""
    target.mkdir(parents=True, exist_ok=True)
    run("mount", *args, str(target))
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True, timeout=60)


def fill(directory: Path, name: str = "filler") -> int:
    """Write zeros to ``directory/name`` until the file system refuses with ENOSPC; return the bytes written."""
    written = 0
    with open(directory / name, "wb", buffering=0) as f:
        for chunk in (1 << 20, 4096, 512):
            block = b"\0" * chunk
            while True:
                try:
                    written += f.write(block) or 0
                except OSError as exc:
                    assert exc.errno == 28, exc  # ENOSPC and nothing else: the test is about a full medium
                    break
    return written


class FaultedStation:
    """The demo station on ``data_dir`` with a broker, the display and a record of every decision."""

    def __init__(self, tmp_path: Path, data_dir: Path, people: int = 4) -> None:
        from sim.demo import DemoRun

        self.broker = Broker(tmp_path / "broker")
        self.broker.start()
        self.states = Collector(self.broker.port, "storage-watch", "checkpoint/v1/+/+/state/storage", persistent=False)
        cfg = StationConfig()
        cfg.mqtt.url = self.broker.url
        cfg.http.enabled, cfg.http.port = True, free_port()
        self.run = DemoRun(cfg, people=people, data_dir=data_dir, fast=True)
        self.refused: list[dict[str, Any]] = []
        self.decided: list[dict[str, Any]] = []
        self.run.on_decided = self._on_decided
        self.result: Any = None
        self.thread = threading.Thread(target=self._run, name="faulted-station", daemon=True)

    def _run(self) -> None:
        self.result = self.run.run(max_s=150)

    def _on_decided(self, person: Any, d: Any) -> None:
        row = {"event_id": d.event.event_id, "decision": d.event.decision.value, "executed": d.gate.executed, "reason": d.gate.reason}
        self.decided.append(row)
        if d.gate.reason.startswith(REFUSED):
            self.refused.append(row)

    def start(self) -> None:
        """Start the station and wait until it is ready (models loaded, devices open)."""
        self.thread.start()
        wait_until(lambda: self.run.app is not None and self.run.app.ready_t is not None, timeout=90, what="station ready")

    @property
    def app(self) -> Any:
        """Return the running StationApp."""
        assert self.run.app is not None
        return self.run.app

    def relay_ever_on(self) -> bool:
        """Return whether the gate's relay was ever energised in this run."""
        return any(name == "relay" and value for _, name, value in self.app.pipeline.gate.history())

    def mqtt_storage(self) -> dict[str, Any] | None:
        """Return the newest ``state/storage`` message, or None before the first."""
        bodies = [json.loads(p) for _, p, _ in self.states.raw()]
        return bodies[-1] if bodies else None

    def display_storage(self) -> dict[str, Any] | None:
        """Return ``devices.storage`` from the operator display's ``/api/status``."""
        with urllib.request.urlopen(f"{self.app.http.url.rstrip('/')}/api/status", timeout=5) as r:
            return json.loads(r.read())["devices"]["storage"]  # type: ignore[no-any-return]

    def degraded_modules(self) -> set[str]:
        """Return the modules the runtime status names as degraded."""
        return {d["module"] for d in self.app.runtime_status()["degraded"]}

    def finish(self) -> Any:
        """Wait for the queue to be decided and the station stopped; return the demo's result."""
        self.thread.join(180)
        assert not self.thread.is_alive(), "the demo did not finish"
        return self.result

    def close(self) -> None:
        """Stop the subscriber and the broker."""
        self.states.close()
        self.broker.stop()
