"""Shared test fixtures. Tests use real parts: pty serial ports, SQLite files, a Mosquitto broker."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared beside the project: test photos and reference models (never used by the product)."""
    if not (SHARED / "README.md").exists():
        pytest.fail(f"{SHARED} is missing: tests need the shared materials beside the project root")
    return SHARED


@dataclass
class DemoRunResult:
    data_dir: Path
    decisions: list[dict]
    summary: dict
    returncode: int
    stderr: str


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> DemoRunResult:
    """One real `station demo --fast --json` run (emulated module on a pty, real decoders, real SQLite)."""
    data_dir = tmp_path_factory.mktemp("demo-data")
    proc = subprocess.run(
        [sys.executable, "-m", "station.cli.station_main", "demo", "--fast", "--json", "--people", "8", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    decisions = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    summary: dict = {}
    for line in proc.stderr.splitlines():
        if line.startswith('{"summary"'):
            summary = json.loads(line)["summary"]
    return DemoRunResult(data_dir, decisions, summary, proc.returncode, proc.stderr)
