"""The one Backoff: exact growth and cap, jitter inside its bounds, reset, bad settings refused."""

from __future__ import annotations

import itertools
import random

import pytest

from station.ops.backoff import Backoff


def take(backoff: Backoff, n: int) -> list[float]:
    return [backoff.next() for _ in range(n)]


def test_without_jitter_the_delays_double_up_to_the_cap() -> None:
    b = Backoff(0.5, 10.0)
    assert take(b, 8) == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    assert b.attempts == 8 and b.last == 10.0


def test_another_factor_and_a_first_delay_at_the_cap() -> None:
    assert take(Backoff(0.2, 2.0, factor=3.0), 4) == pytest.approx([0.2, 0.6, 1.8, 2.0])
    assert take(Backoff(5.0, 5.0), 3) == [5.0, 5.0, 5.0]


def test_reset_starts_again_at_the_first_delay() -> None:
    b = Backoff(0.1, 2.0)
    take(b, 5)
    b.reset()
    assert b.last is None and b.attempts == 0
    assert take(b, 3) == pytest.approx([0.1, 0.2, 0.4])


def test_full_jitter_stays_between_zero_and_the_exact_sequence() -> None:
    b = Backoff(1.0, 30.0, jitter="full", rng=random.Random(1))
    ceilings = [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0, 30.0]
    delays = take(b, len(ceilings))
    assert all(0.0 <= d <= c for d, c in zip(delays, ceilings, strict=True)), delays
    assert len({round(d, 6) for d in delays}) == len(delays), "every delay is drawn"


def test_equal_jitter_keeps_half_and_never_more_than_doubles() -> None:
    b = Backoff(1.0, 60.0, jitter="equal", rng=random.Random(2))
    delays = take(b, 30)
    assert 0.5 <= delays[0] <= 1.0
    assert all(0.5 <= d <= 60.0 for d in delays)
    assert all(a <= b_ <= 2 * a or a > 30.0 for a, b_ in itertools.pairwise(delays)), delays
    assert delays[-1] >= 30.0, f"reaches the cap: {delays}"


def test_equal_jitter_spreads_first_delays_and_a_seeded_source_repeats_them() -> None:
    firsts = {round(Backoff(1.0, 60.0, jitter="equal").next(), 6) for _ in range(20)}
    assert len(firsts) > 10, "the random part spreads a fleet's reconnects"
    one = take(Backoff(1.0, 60.0, jitter="equal", rng=random.Random(7)), 10)
    two = take(Backoff(1.0, 60.0, jitter="equal", rng=random.Random(7)), 10)
    assert one == two


def test_resume_continues_from_a_kept_delay() -> None:
    b = Backoff(1.0, 8.0)
    b.resume(2.0)
    assert take(b, 3) == [4.0, 8.0, 8.0]


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((2.0, 1.0), {}), ((-1.0, 1.0), {}), ((1.0, 2.0), {"factor": 0.5}), ((1.0, 2.0), {"jitter": "some"})],
)
def test_bad_settings_are_refused(args: tuple[float, float], kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Backoff(*args, **kwargs)  # type: ignore[arg-type]
