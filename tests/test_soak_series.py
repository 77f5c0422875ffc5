"""The long soak's statistics: t quantiles, OLS intervals, per-incarnation slopes, explained growth, card wear."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from bench import soak_series as ss


@pytest.mark.parametrize(("df", "expected"), [(1, 12.706), (10, 2.228), (30, 2.042), (31, 2.040), (40, 2.021), (60, 2.000), (120, 1.980)])
def test_t975_matches_published_quantiles(df: int, expected: float) -> None:
    assert ss.t975(df) == pytest.approx(expected, abs=0.002)


def test_t975_without_degrees_of_freedom_is_infinite() -> None:
    assert ss.t975(0) == float("inf")


def test_ols_recovers_an_exact_line_with_a_zero_width_interval() -> None:
    c = ss.slope_over_time([0.0, 1.0, 2.0, 3.0], [5.0, 7.0, 9.0, 11.0])
    assert c is not None
    assert c.value == pytest.approx(2.0)
    assert c.hi - c.lo == pytest.approx(0.0, abs=1e-9)


def test_ols_refuses_a_singular_design_and_no_residual_df() -> None:
    assert ss.ols([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]], [1.0, 2.0, 3.0]) is None  # constant x
    assert ss.ols([[1.0, 0.0], [1.0, 1.0]], [1.0, 2.0]) is None  # two points, two coefficients


def test_ols_interval_covers_the_true_slope_about_95_percent_of_the_time() -> None:
    rng = random.Random(7)
    hits = 0
    reps = 400
    for _ in range(reps):
        ts = [i / 10.0 for i in range(12)]
        ys = [3.0 + 0.5 * t + rng.gauss(0.0, 1.0) for t in ts]
        c = ss.slope_over_time(ts, ys)
        assert c is not None
        hits += c.lo <= 0.5 <= c.hi
    assert 0.91 <= hits / reps <= 0.99


def test_hac_interval_covers_a_flat_series_with_autocorrelated_noise() -> None:
    # AR(1) noise (phi 0.8) around a flat level: the plain OLS interval calls a trend far more often than 5 %.
    rng = random.Random(11)
    reps, n = 300, 100
    hac_hits = naive_hits = 0
    for _ in range(reps):
        e, ys = 0.0, []
        for _ in range(n):
            e = 0.8 * e + rng.gauss(0.0, 1.0)
            ys.append(180.0 + e)
        ts = [i / 60.0 for i in range(n)]
        c = ss.slope_over_time(ts, ys)
        assert c is not None
        hac_hits += c.lo <= 0.0 <= c.hi
        q = ss.t975(n - 2)
        mean_t = sum(ts) / n
        resid_fit = [y - (c.value * (t - mean_t) + sum(ys) / n) for t, y in zip(ts, ys, strict=True)]
        se = (sum(r * r for r in resid_fit) / (n - 2) / sum((t - mean_t) ** 2 for t in ts)) ** 0.5
        naive_hits += abs(c.value) <= q * se
    assert naive_hits / reps < 0.65  # the interval this replaced
    assert hac_hits / reps > 0.68  # Newey-West still under-covers at phi 0.8 with 100 samples, much less so
    assert hac_hits > naive_hits + 0.1 * reps


def test_nw_lag_follows_the_rule_of_thumb() -> None:
    assert [ss.nw_lag(n) for n in (0, 50, 100, 300)] == [0, 3, 4, 5]


def test_within_slope_ignores_level_jumps_between_incarnations() -> None:
    # Each restart comes back at a higher level, flat within: pooled OLS would call it a leak.
    groups = [[(g + i / 10.0, 100.0 + 20.0 * g + (0.1 if i % 2 else -0.1)) for i in range(8)] for g in range(4)]
    naive = ss.slope_over_time([t for g in groups for t, _ in g], [y for g in groups for _, y in g])
    fit = ss.within_slope(groups)
    assert naive is not None and naive.lo > 5.0
    assert fit is not None
    slope, n_groups, n = fit
    assert (n_groups, n) == (4, 32)
    assert slope.lo < 0.0 < slope.hi
    assert not ss.verdict(slope, ss.THRESHOLDS["rss_mb"])["clearly_above_zero"]


def test_within_slope_finds_a_leak_that_restarts_reset() -> None:
    rng = random.Random(3)
    groups = [[(g + i / 10.0, 180.0 + 5.0 * (i / 10.0) + rng.gauss(0, 0.2)) for i in range(10)] for g in range(3)]
    fit = ss.within_slope(groups + [[(9.0, 1.0)]])  # a one-sample incarnation carries no slope
    assert fit is not None
    slope, n_groups, _ = fit
    assert n_groups == 3
    assert slope.value == pytest.approx(5.0, abs=0.5)
    assert ss.verdict(slope, ss.THRESHOLDS["rss_mb"])["clearly_above_zero"]


def test_verdict_needs_both_the_interval_and_the_practical_threshold() -> None:
    assert not ss.verdict(ss.Coef(0.5, 0.2, 0.8, 0.1), 1.0)["clearly_above_zero"]  # real but small
    assert not ss.verdict(ss.Coef(3.0, -0.5, 6.5, 1.5), 1.0)["clearly_above_zero"]  # large but noise
    assert ss.verdict(ss.Coef(3.0, 1.5, 4.5, 0.7), 1.0)["clearly_above_zero"]
    assert ss.verdict(None, 1.0) == {"slope_per_h": None, "ci95": None, "threshold_per_h": 1.0, "clearly_above_zero": False}


def _samples(leak_bytes_per_h: float, rng: random.Random) -> list[dict[str, object]]:
    """Two hours of minute samples, peak/quiet walk-up rate, 5 000 bytes per stored event."""
    out: list[dict[str, object]] = []
    events = 0
    cpu = 0.0
    written = 0
    pid = 100
    up = 0.0
    for m in range(120):
        rate = 20 if (m // 15) % 2 == 0 else 2  # screenings a minute: peak, quiet, …
        events += rate
        cpu += 60 * 0.3 + rate * 0.5
        written += 60 * 1000 + rate * 80_000
        up += 60.0
        if m == 60:
            pid, up, cpu, written = 200, 60.0, 0.0, 0  # a restart: counters from zero
        t_s = 60.0 * (m + 1)
        db = 50_000 + 5_000 * events + leak_bytes_per_h * t_s / 3600.0 + rng.gauss(0, 2_000)
        out.append(
            {
                "type": "sample",
                "t_s": t_s,
                "pid": pid,
                "uptime_s": up,
                "decisions": events,
                "events": events,
                "db_bytes": db,
                "wal_bytes": 0,
                "cpu_s": cpu,
                "write_bytes": written,
                "rss_mb": 180.0 + rng.gauss(0, 0.3),
            }
        )
    return out


def test_storage_growth_from_stored_events_is_not_a_leak() -> None:
    per_event, per_hour, n = ss._explained(_samples(0.0, random.Random(1)), ("db_bytes",))
    assert n == 120
    assert per_event is not None and per_event.value == pytest.approx(5_000, rel=0.01)
    assert per_hour is not None and not ss.verdict(per_hour, ss.THRESHOLDS["events_db_mb_unexplained"])["clearly_above_zero"]


def test_storage_growth_without_events_is_a_leak() -> None:
    _, per_hour, _ = ss._explained(_samples(5e6, random.Random(1)), ("db_bytes",))
    assert per_hour is not None and per_hour.value == pytest.approx(5.0, abs=0.2)
    assert ss.verdict(per_hour, ss.THRESHOLDS["events_db_mb_unexplained"])["clearly_above_zero"]


def test_card_wear_splits_screenings_from_the_idle_floor_and_skips_restarts() -> None:
    ivs = ss.intervals(_samples(0.0, random.Random(2)), warm_s=120.0)
    assert all(iv["write_bytes"] >= 0 for iv in ivs)  # the interval across the restart is left out
    wear = ss.card_wear(ivs)
    assert wear["write_bytes_per_screening_marginal"] == pytest.approx(80_000, rel=1e-6)
    assert wear["write_bytes_per_s_idle"] == pytest.approx(1000, rel=1e-6)
    cpu = ss.cpu_summary(ivs)
    assert cpu["cpu_s_per_screening_overall"] is not None and cpu["cpu_s_per_screening_overall"] > 0.5  # idle CPU included


def test_summarise_names_the_failing_series(tmp_path: Path) -> None:
    samples = _samples(5e6, random.Random(4))
    result = ss.summarise(samples)
    assert "events_db_mb_unexplained" in result["slopes_clearly_above_zero"]
    assert "rss_mb" not in result["slopes_clearly_above_zero"]


def test_read_jsonl_keeps_a_run_cut_short(tmp_path: Path) -> None:
    f = tmp_path / "s.jsonl"
    lines = [
        json.dumps({"type": "meta", "seed": 1}),
        json.dumps({"type": "sample", "t_s": 60.0}),
        json.dumps({"type": "fault", "t_s": 61.0}),
    ]
    f.write_text("\n".join(lines) + '\n{"type": "sample", "t_s": 12')  # torn last line: the process was killed mid-write
    meta, samples, faults = ss.read_jsonl(f)
    assert meta == {"type": "meta", "seed": 1}
    assert samples == [{"type": "sample", "t_s": 60.0}]
    assert faults == [{"type": "fault", "t_s": 61.0}]


def test_wal_summary_counts_checkpoints() -> None:
    pts = [(4096, 1_000_000), (4096, 3_000_000), (900_000, 3_000_000), (900_000, 0)]
    wal = ss.wal_summary([{"db_bytes": d, "wal_bytes": w} for d, w in pts])
    assert wal["max_mb"] == 3.0
    assert wal["samples_showing_a_checkpoint"] == 2


def test_storage_fits_start_at_the_first_checkpoint() -> None:
    samples = [{"t_s": 60.0 * i, "db_bytes": 4096 if i < 5 else 4096 + 1000 * i, "wal_bytes": 0} for i in range(10)]
    steady = ss.steady_storage(samples)
    assert [s["t_s"] for s in steady] == [60.0 * i for i in range(5, 10)]
    assert ss.steady_storage(samples[:5]) == []
