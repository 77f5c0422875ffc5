"""One real ``station demo --fast --json`` run, shared by the tests that read what a demo leaves behind.

The demo is the emulated thermal module on a pty, the real decoders and a real SQLite store; it takes
seconds, so the fixture is session-scoped and registered for every module by ``tests/conftest.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class DemoRunResult:
    """What one demo run printed and left: its data directory, decisions (stdout), summary (stderr)."""

    data_dir: Path
    decisions: list[dict[str, Any]]
    summary: dict[str, Any]
    returncode: int
    stderr: str


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRunResult:
    """Run ``station demo --fast --json --people 8`` once per session and return what it produced."""
    data_dir = tmp_path_factory.mktemp("demo-data")
    proc = subprocess.run(
        [sys.executable, "-m", "station.cli.station_main", "demo", "--fast", "--json", "--people", "8", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    decisions = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    summary: dict[str, Any] = {}
    for line in proc.stderr.splitlines():
        if line.startswith('{"summary"'):
            summary = json.loads(line)["summary"]
    return DemoRunResult(data_dir, decisions, summary, proc.returncode, proc.stderr)
