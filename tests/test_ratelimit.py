"""The bounds on hostile input: a sliding-window limiter and a once-per-kind failure log."""

from __future__ import annotations

import logging

import pytest

from station.ops.ratelimit import FailureLog, RateLimiter


class ManualClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_limiter_allows_a_burst_per_window_then_refuses_and_counts() -> None:
    clock = ManualClock()
    limiter = RateLimiter(3, 60.0, monotonic=clock)
    assert [limiter.allow("a") for _ in range(5)] == [True, True, True, False, False]
    assert limiter.allow("b"), "another key has its own window"
    assert limiter.refused["a"] == 2 and limiter.refused_total() == 2
    clock.t += 59.9
    assert not limiter.allow("a")
    clock.t += 0.2  # the first three hits slide out of the window
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]


def test_limiter_key_table_is_bounded_under_a_flood_of_new_keys() -> None:
    clock = ManualClock()
    limiter = RateLimiter(1, 10.0, monotonic=clock, max_keys=8)
    allowed = sum(limiter.allow(f"sender-{i}") for i in range(1000))
    assert len(limiter._hits) <= 9  # eight keys and the shared overflow bucket
    assert allowed == 9, "past the table's size new keys share one bucket instead of growing memory"
    clock.t += 10.0
    assert limiter.allow("sender-new"), "idle keys are forgotten once their window has passed"


def test_limiter_rejects_nonsense_bounds() -> None:
    with pytest.raises(ValueError):
        RateLimiter(0, 1.0)
    with pytest.raises(ValueError):
        RateLimiter(1, 0.0)


def test_failure_log_counts_every_failure_and_logs_each_kind_once_per_interval(caplog) -> None:  # type: ignore[no-untyped-def]
    clock = ManualClock()
    failures = FailureLog(logging.getLogger("test.stage"), "code stage item", interval_s=60.0, monotonic=clock)
    with caplog.at_level(logging.ERROR, logger="test.stage"):
        logged = [failures.report("TypeError", TypeError("unhashable")) for _ in range(50)]
        logged.append(failures.report("ValueError", ValueError("bad")))
        clock.t += 60.0
        logged.append(failures.report("TypeError", TypeError("again")))
    assert logged.count(True) == 3
    assert failures.snapshot() == {"TypeError": 51, "ValueError": 1}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert "kind=TypeError total=1 folded_since_last_line=0" in lines[0]
    assert "kind=TypeError total=51 folded_since_last_line=49" in lines[2], lines[2]
