"""Shared test fixtures. Tests use real parts: pty serial ports, SQLite files, a Mosquitto broker.

The fixtures themselves live in ``tests/support/``; importing them here makes them available to every
test module without one test module importing another.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.daemon import emulator, video
from tests.support.demo import demo_run

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

__all__ = ["demo_run", "emulator", "shared_dir", "video"]


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """Return ../shared beside the project: test photos and reference models (never used by the product)."""
    if not (SHARED / "README.md").exists():
        pytest.fail(f"{SHARED} is missing: tests need the shared materials beside the project root")
    return SHARED


@pytest.hookimpl(tryfirst=True)  # before the mark plugin deselects by -m
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every browser test slow as well, so ``-m "not slow"`` (the fast loop) leaves Chromium out."""
    for item in items:
        if item.get_closest_marker("browser") is not None and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)
