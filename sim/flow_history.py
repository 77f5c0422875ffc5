"""Seeded people-flow history for the centre's forecast: a known pattern to back-test the model against."""

from __future__ import annotations

import datetime as dt


def synthetic_history(
    first_day: dt.date, days: int, *, seed: int = 7, base: float = 40.0, growth_per_week: float = 0.05
) -> dict[dt.date, list[int]]:
    """Return seeded hourly counts with a known pattern: a two-peak day, quieter weekends, a weekly growth, Poisson noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    hours = np.arange(24)
    shape = np.exp(-((hours - 8.0) ** 2) / 4.0) + 0.8 * np.exp(-((hours - 17.5) ** 2) / 5.0) + 0.05 * ((hours >= 6) & (hours <= 21))
    out = {}
    for i in range(days):
        day = first_day + dt.timedelta(days=i)
        level = base * (0.6 if day.weekday() >= 5 else 1.0) * (1.0 + growth_per_week) ** (i / 7.0)
        out[day] = [int(x) for x in rng.poisson(level * shape)]
    return out
