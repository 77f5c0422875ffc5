"""How good the centre's next-day flow forecast is on held-out days (station/centre/reports.py), on seeded synthetic history.

``python -m bench.forecast --json``: for each seed, 6 weeks of hourly screenings with a known
pattern (a morning and an evening peak, weekends at 60 %, a weekly growth, Poisson noise); the last
7 days are held out and each is forecast from the days before it only. Reported per model: MAE
(people per hour, every hour) and MAPE (%, hours with at least 5 people), medians over the seeds:

* ``weekday_hour_mean_trend`` — the centre's model (4 weeks, trend clipped 0.5-2);
* ``seasonal_naive`` — the same hour a week earlier (the baseline to beat);
* ``oracle`` — the true expected count of each hour (the noise floor no forecast can beat).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
from typing import Any

import numpy as np

from sim.flow_history import synthetic_history
from station.centre.reports import errors, forecast_day, seasonal_naive


def _oracle(day: dt.date, first: dt.date, base: float, growth: float) -> list[float]:
    hours = np.arange(24)
    shape = np.exp(-((hours - 8.0) ** 2) / 4.0) + 0.8 * np.exp(-((hours - 17.5) ** 2) / 5.0) + 0.05 * ((hours >= 6) & (hours <= 21))
    i = (day - first).days
    level = base * (0.6 if day.weekday() >= 5 else 1.0) * (1.0 + growth) ** (i / 7.0)
    return [float(x) for x in level * shape]


def run(seeds: int = 20, growth: float = 0.05, base: float = 40.0) -> dict[str, Any]:
    """Return the medians over ``seeds`` runs of each model's held-out MAE and MAPE."""
    first = dt.date(2026, 10, 5)
    per: dict[str, dict[str, list[float]]] = {
        m: {"mae": [], "mape_pct": []} for m in ("weekday_hour_mean_trend", "seasonal_naive", "oracle")
    }
    for seed in range(seeds):
        history = synthetic_history(first, 42, seed=seed, base=base, growth_per_week=growth)
        held = sorted(history)[-7:]
        actual = [history[d] for d in held]
        before = [{k: v for k, v in history.items() if k < d} for d in held]
        predicted = {
            "weekday_hour_mean_trend": [forecast_day(b, d, 4) for b, d in zip(before, held, strict=True)],
            "seasonal_naive": [seasonal_naive(b, d) for b, d in zip(before, held, strict=True)],
            "oracle": [_oracle(d, first, base, growth) for d in held],
        }
        for model, days in predicted.items():
            e = errors(actual, days)
            for k in ("mae", "mape_pct"):
                if e[k] is not None:
                    per[model][k].append(float(e[k]))  # type: ignore[arg-type]
    out: dict[str, Any] = {
        "seeds": seeds,
        "history_days": 42,
        "held_out_days": 7,
        "peak_per_hour": round(base * 1.0, 1),
        "growth_per_week": growth,
    }
    for model, vals in per.items():
        out[model] = {k: round(statistics.median(v), 3) for k, v in vals.items()}
    out["mae_ratio_to_naive"] = round(out["weekday_hour_mean_trend"]["mae"] / out["seasonal_naive"]["mae"], 3)
    out["mae_ratio_to_oracle"] = round(out["weekday_hour_mean_trend"]["mae"] / out["oracle"]["mae"], 3)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the evaluation and print it (JSON with ``--json``)."""
    ap = argparse.ArgumentParser(prog="python -m bench.forecast", description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--growth", type=float, default=0.05, help="Flow growth per week (0.05 = +5 %%)")
    args = ap.parse_args(argv)
    result = run(args.seeds, args.growth)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        for model in ("weekday_hour_mean_trend", "seasonal_naive", "oracle"):
            print(f"{model:<24} MAE {result[model]['mae']:6.3f}  MAPE {result[model]['mape_pct']:6.2f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
