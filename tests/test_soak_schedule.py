"""The long soak's fault schedule: every kind each round, none that ends the daemon in the steady window."""

from __future__ import annotations

import random
from collections import Counter

from bench.soak import DAEMON_ENDING_FAULTS, FAULT_KINDS, next_fault


def test_each_round_injects_every_kind_once() -> None:
    rng, pending = random.Random(5), list[str]()
    drawn = [next_fault(pending, rng, steady=False) for _ in range(3 * len(FAULT_KINDS))]
    for r in range(3):
        assert sorted(drawn[r * len(FAULT_KINDS) : (r + 1) * len(FAULT_KINDS)]) == sorted(FAULT_KINDS)


def test_the_steady_window_holds_back_daemon_ending_faults_and_they_come_after_it() -> None:
    rng, pending = random.Random(9), list[str]()
    steady = [next_fault(pending, rng, steady=True) for _ in range(20)]
    assert not DAEMON_ENDING_FAULTS & set(steady)
    assert set(steady) == set(FAULT_KINDS) - DAEMON_ENDING_FAULTS  # the others keep coming
    after = Counter(next_fault(pending, rng, steady=False) for _ in range(len(FAULT_KINDS)))
    assert all(after[k] >= 1 for k in DAEMON_ENDING_FAULTS)  # held back, not dropped
