"""The one way tests wait: poll a condition, fail naming what never happened."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal


def wait_until(cond: Callable[[], Any], timeout: float = 20.0, what: str = "", interval: float = 0.02) -> Literal[True]:
    """Poll ``cond()`` until it is truthy; raise AssertionError naming ``what`` after ``timeout`` seconds.

    Returns True, so ``assert wait_until(...)`` reads as the check it is.
    """
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what or cond}")
        time.sleep(interval)
    return True
