"""Shared test fixtures. Tests use real parts: pty serial ports, SQLite files, a Mosquitto broker."""

from __future__ import annotations

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
