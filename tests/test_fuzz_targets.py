"""Every fuzz target of bench/fuzz_targets, a few hundred structured cases each: no exception escapes."""

from __future__ import annotations

import pytest

from bench.fuzz import run_target
from bench.fuzz_targets import all_targets

TARGETS = all_targets()
pytestmark = pytest.mark.slow  # Hypothesis runs against every fuzz target: seconds each


def test_there_are_fuzz_targets() -> None:
    assert len(TARGETS) >= 1


@pytest.mark.parametrize("target", TARGETS, ids=[t.name for t in TARGETS])
def test_target_never_raises(target) -> None:  # type: ignore[no-untyped-def]
    result = run_target(target, cases=300, run_seed=1)
    assert result["cases"] >= 100, result
    assert result["uncaught"] == 0, result["samples"]
    assert result["distinct_verdicts"] >= 2, "the strategy never reaches more than one verdict: " + str(result["verdicts"])
