"""Small statistics shared by the benchmarks: medians of repeated timings and percentiles."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def median_ms(fn: Callable[[], Any], repeat: int, warm: int = 3, ndigits: int = 3) -> float:
    """Median wall time of ``fn`` in ms over ``repeat`` calls, after ``warm`` untimed ones."""
    for _ in range(warm):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return round(statistics.median(times), ndigits)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1), rounded to 0.1."""
    s = sorted(values)
    return round(s[min(len(s) - 1, int(round(q * (len(s) - 1))))], 1)
