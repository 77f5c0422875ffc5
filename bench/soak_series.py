"""Long-soak series: per-minute samples of the daemon, slopes with 95 % intervals, a plot.

``python -m bench.soak_series FILE.jsonl [--out SUMMARY.json] [--plot FILE.png]`` re-summarises (and
re-plots) a soak's sample file, also one cut short: the soak appends one JSON line per sample while it
runs (``{"type": "meta"|"sample"|"fault", ...}``).

The statistics: ordinary least squares, a 95 % two-sided Student-t interval on each coefficient
(residual degrees of freedom = samples − coefficients). Series a daemon restart resets (RSS, open
file descriptors, threads) are fitted with one intercept per incarnation (pooled within-incarnation
slope: each incarnation keeps its own level, they share one slope per hour), on samples at least
``warm_s`` into an incarnation. Storage that grows with data by design (the events database, the
replay store, the data dir) is fitted as ``size = a + b·stored_events + c·hours``: ``b`` is the bytes
each stored event costs, ``c`` the growth per hour that no stored event explains — the leak term.
CPU and writes are fitted the same way on per-interval rates: ``rate = a + b·screenings_per_s +
c·hours``. A slope is *clearly above zero* when the interval's lower bound is above 0 AND the slope
is above the series' practical threshold (``THRESHOLDS``): both a real trend and one that matters.
Samples are autocorrelated (RSS follows the walk-up phase for minutes at a time), so the intervals use
Newey-West standard errors (Bartlett weights, lag ``floor(4·(n/100)^(2/9))``, pairs within one
incarnation only; never narrower than the plain OLS interval), which was 1.5–2× too narrow on the
recorded runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sqlite3
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Two-sided 95 % Student-t quantiles (t_{0.975, df}) for small df; above 30 the Cornish-Fisher expansion.
_T975: tuple[float, ...] = (
    *(12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131),
    *(2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042),
)
_Z975 = 1.959963984540054

# Per series: the slope per hour above which a trend matters (with the CI lower bound above 0, the soak fails).
THRESHOLDS: dict[str, float] = {
    "rss_mb": 1.0,  # MB per hour within an incarnation: 24 MB a day would take a Pi's headroom in weeks
    "fds": 1.0,  # open file descriptors per hour
    "threads": 0.5,  # threads per hour
    "events_db_mb_unexplained": 1.0,  # events DB + its WAL: growth per hour not explained by stored events
    "codes_mb_unexplained": 1.0,  # replay store (codes/) growth per hour not explained by stored events
    "data_dir_mb_unexplained": 2.0,  # whole data dir growth per hour not explained by stored events
    "outbox_pending": 5.0,  # outbox rows waiting for the broker, per hour
    "cpu_load_drift": 0.02,  # CPU seconds per second (cores) per hour at a fixed screening rate
}
WARM_S = 120.0  # models loaded, caches filled: incarnation samples before this are not in the RSS/FD/thread fits


def t975(df: int) -> float:
    """Return the 0.975 quantile of Student's t with ``df`` degrees of freedom (table, then Cornish-Fisher)."""
    if df < 1:
        return math.inf
    if df <= len(_T975):
        return _T975[df - 1]
    z, v = _Z975, float(df)
    return (
        z
        + (z**3 + z) / (4 * v)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3)
        + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * v**4)
    )


@dataclass(frozen=True, slots=True)
class Coef:
    """One fitted coefficient with its 95 % t-interval."""

    value: float
    lo: float
    hi: float
    se: float


def nw_lag(n: int) -> int:
    """Return the Newey-West rule-of-thumb lag ``floor(4·(n/100)^(2/9))`` for ``n`` samples."""
    return int(4.0 * (max(n, 0) / 100.0) ** (2.0 / 9.0))


def ols(rows: Sequence[Sequence[float]], ys: Sequence[float], runs: Sequence[int] | None = None) -> tuple[list[Coef], int] | None:
    """Fit ``y = X·b`` by least squares; return each coefficient with its 95 % interval and the residual df.

    The intervals use Newey-West (HAC) standard errors, never below plain OLS ones: per-minute samples
    of one process are autocorrelated, and the plain OLS interval would be too narrow. Residual pairs up
    to ``nw_lag(n)`` samples apart count, only within one run (``runs``: a run id per row; default one).
    None when the design is singular or leaves no residual degree of freedom.
    """
    import numpy as np

    x = np.asarray(rows, dtype=float)
    y = np.asarray(ys, dtype=float)
    if x.ndim != 2 or len(y) != x.shape[0]:
        return None
    n, k = x.shape
    df = n - k
    if df < 1:
        return None
    xtx = x.T @ x
    if np.linalg.matrix_rank(xtx) < k:
        return None
    inv = np.linalg.inv(xtx)
    b = inv @ x.T @ y
    resid = y - x @ b
    run = np.zeros(n, dtype=int) if runs is None else np.asarray(runs, dtype=int)
    score = x * resid[:, None]
    meat = score.T @ score
    lag = nw_lag(n)
    for lo in range(1, lag + 1):
        same = run[lo:] == run[:-lo]
        cross = score[lo:][same].T @ score[:-lo][same]
        meat += (1.0 - lo / (lag + 1.0)) * (cross + cross.T)
    cov = inv @ meat @ inv * (n / df)
    s2 = float(resid @ resid) / df
    q = t975(df)
    out = []
    for i in range(k):
        # Never narrower than plain OLS: with few samples the HAC estimate itself is noisy and can come out small.
        se = math.sqrt(max(0.0, float(cov[i, i]), s2 * float(inv[i, i])))
        out.append(Coef(float(b[i]), float(b[i]) - q * se, float(b[i]) + q * se, se))
    return out, df


def slope_over_time(ts_h: Sequence[float], ys: Sequence[float]) -> Coef | None:
    """Return the OLS slope of ``ys`` against hours with its 95 % interval (intercept fitted)."""
    fit = ols([[1.0, t] for t in ts_h], ys)
    return fit[0][1] if fit else None


def within_slope(groups: Iterable[Sequence[tuple[float, float]]]) -> tuple[Coef, int, int] | None:
    """Return the pooled slope with one intercept per group (incarnation), the group count and the samples used.

    Groups with fewer than 2 points carry no slope information and are left out.
    """
    used = [list(g) for g in groups if len(g) >= 2]
    rows: list[list[float]] = []
    ys: list[float] = []
    runs: list[int] = []
    for gi, g in enumerate(used):
        for t, y in g:
            rows.append([t] + [1.0 if j == gi else 0.0 for j in range(len(used))])
            ys.append(y)
            runs.append(gi)
    if not used:
        return None
    fit = ols(rows, ys, runs)
    return (fit[0][0], len(used), len(ys)) if fit else None


def verdict(c: Coef | None, threshold: float) -> dict[str, Any]:
    """Return the slope, its interval, the threshold and whether it is clearly above zero."""
    if c is None:
        return {"slope_per_h": None, "ci95": None, "threshold_per_h": threshold, "clearly_above_zero": False}
    return {
        "slope_per_h": _r(c.value),
        "ci95": [_r(c.lo), _r(c.hi)],
        "threshold_per_h": threshold,
        "clearly_above_zero": c.lo > 0.0 and c.value > threshold,
    }


def _r(v: float | None, nd: int = 4) -> float | None:
    if v is None or not math.isfinite(v):
        return None
    return float(f"{v:.{nd}g}") if abs(v) >= 1 else round(v, 6)


# -- sampling the running daemon -----------------------------------------------------------------------


def _dir_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass  # deleted between listing and stat (a crop purged, a temp file renamed)
    return total


def _file_bytes(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def proc_sample(pid: int) -> dict[str, Any]:
    """Read RSS, open FDs, threads, CPU seconds and I/O counters of ``pid`` from /proc (missing → absent)."""
    out: dict[str, Any] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                out["rss_mb"] = round(int(line.split()[1]) / 1024.0, 2)
            elif line.startswith("Threads:"):
                out["threads"] = int(line.split()[1])
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
        # /proc/PID/stat: fields after the ")" closing comm; utime and stime are fields 14 and 15.
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        tick = os.sysconf("SC_CLK_TCK")
        out["cpu_s"] = round((int(fields[11]) + int(fields[12])) / tick, 2)
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            key, _, val = line.partition(":")
            if key in ("write_bytes", "read_bytes", "wchar", "cancelled_write_bytes"):
                out[key] = int(val)
    except (OSError, ValueError, IndexError):
        pass  # the process ended mid-read (a fault): the sample keeps what it got
    return out


def storage_sample(data_dir: Path, db_name: str = "events.sqlite3") -> dict[str, Any]:
    """Read the data dir's sizes and the outbox depth / stored events (read-only SQLite)."""
    db = data_dir / db_name
    out: dict[str, Any] = {
        "db_bytes": _file_bytes(db),
        "wal_bytes": _file_bytes(db.with_name(db.name + "-wal")),
        "codes_bytes": _dir_bytes(data_dir / "codes"),
        "crops_bytes": _dir_bytes(data_dir / "crops"),
        "data_dir_bytes": _dir_bytes(data_dir),
    }
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            out["events"] = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
            out["outbox_pending"] = conn.execute("SELECT COUNT(*) FROM outbox WHERE acked_at IS NULL AND dropped_at IS NULL").fetchone()[0]
        conn.close()
    except sqlite3.Error:
        pass  # not created yet, or locked past the timeout: the next sample reads it
    return out


# -- summarising a series ------------------------------------------------------------------------------


def read_jsonl(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """Return the meta record, the samples and the faults of a soak's JSONL (a torn last line is skipped)."""
    meta: dict[str, Any] = {}
    samples: list[dict[str, Any]] = []
    faults: list[dict[str, Any]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if not isinstance(rec, dict):
            continue
        kind = rec.get("type")
        if kind == "meta":
            meta = rec
        elif kind == "sample":
            samples.append(rec)
        elif kind == "fault":
            faults.append(rec)
    return meta, samples, faults


def intervals(samples: Sequence[dict[str, Any]], warm_s: float = WARM_S) -> list[dict[str, Any]]:
    """Return per-interval deltas between consecutive samples of the same warm incarnation."""
    out = []
    for a, b in zip(samples, samples[1:], strict=False):
        if a.get("pid") is None or a.get("pid") != b.get("pid") or a.get("uptime_s", 0) < warm_s:
            continue
        if not all(k in a and k in b for k in ("cpu_s", "write_bytes", "decisions")):
            continue
        dt = b["t_s"] - a["t_s"]
        if dt <= 0:
            continue
        dd = b["decisions"] - a["decisions"]
        dcpu = b["cpu_s"] - a["cpu_s"]
        dw = b["write_bytes"] - a["write_bytes"]
        out.append(
            {
                "t_h": b["t_s"] / 3600.0,
                "dt_s": dt,
                "decisions": dd,
                "cpu_s": dcpu,
                "write_bytes": dw,
                "cpu_s_per_screening": dcpu / dd if dd > 0 else None,
                "write_bytes_per_screening": dw / dd if dd > 0 else None,
            }
        )
    return out


def _by_incarnation(samples: Sequence[dict[str, Any]], key: str, warm_s: float, scale: float = 1.0) -> list[list[tuple[float, float]]]:
    groups: dict[Any, list[tuple[float, float]]] = {}
    for s in samples:
        if s.get("pid") is None or key not in s or s.get("uptime_s", 0) < warm_s:
            continue
        groups.setdefault(s["pid"], []).append((s["t_s"] / 3600.0, s[key] * scale))
    return list(groups.values())


def steady_storage(samples: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return the samples from the events DB's first checkpoint on (its main file has grown).

    Until then every committed page is a new WAL frame (tens of KB per event), after it the WAL file
    keeps its size and only the main file grows: fitting both regimes with one line would bend the
    per-hour term. Empty when no checkpoint was seen.
    """
    first = next((s.get("db_bytes") for s in samples if "db_bytes" in s), None)
    start = next((i for i, s in enumerate(samples) if first is not None and s.get("db_bytes", first) > first), len(samples))
    return list(samples[start:])


def _explained(samples: Sequence[dict[str, Any]], keys: Sequence[str]) -> tuple[Coef | None, Coef | None, int]:
    """Fit ``size_mb = a + b·events + c·hours`` (size: the sum of ``keys``); return (b in bytes per event, c in MB/h, n)."""
    pts = [(s["t_s"] / 3600.0, s["events"], sum(s[k] for k in keys) / 1e6) for s in samples if all(k in s for k in keys) and "events" in s]
    fit = ols([[1.0, ev, t] for t, ev, _ in pts], [y for _, _, y in pts])
    if fit is None:
        return None, None, len(pts)
    b, c = fit[0][1], fit[0][2]
    return Coef(b.value * 1e6, b.lo * 1e6, b.hi * 1e6, b.se * 1e6), c, len(pts)


def summarise(samples: Sequence[dict[str, Any]], warm_s: float = WARM_S) -> dict[str, Any]:
    """Return the slopes (with verdicts), the card-wear figures and which series failed."""
    slopes: dict[str, Any] = {}
    for key in ("rss_mb", "fds", "threads"):
        groups = _by_incarnation(samples, key, warm_s)
        fit = within_slope(groups)
        v = verdict(fit[0] if fit else None, THRESHOLDS[key])
        v["method"] = "OLS, one intercept per incarnation, samples ≥ warm_s into it"
        v["incarnations"] = fit[1] if fit else 0
        v["samples"] = fit[2] if fit else 0
        longest = max(groups, key=len, default=[])
        lc = slope_over_time([t for t, _ in longest], [y for _, y in longest]) if len(longest) >= 3 else None
        v["longest_incarnation"] = {"samples": len(longest), "hours": _r(longest[-1][0] - longest[0][0]) if longest else None}
        v["longest_incarnation"] |= {"slope_per_h": _r(lc.value), "ci95": [_r(lc.lo), _r(lc.hi)]} if lc else {}
        slopes[key] = v
    out_p = [(s["t_s"] / 3600.0, float(s["outbox_pending"])) for s in samples if "outbox_pending" in s]
    slopes["outbox_pending"] = verdict(slope_over_time([t for t, _ in out_p], [y for _, y in out_p]), THRESHOLDS["outbox_pending"]) | {
        "method": "OLS over run time",
        "samples": len(out_p),
    }
    storage = (
        (("db_bytes", "wal_bytes"), "events_db_mb_unexplained"),
        (("codes_bytes",), "codes_mb_unexplained"),
        (("data_dir_bytes",), "data_dir_mb_unexplained"),
    )
    steady = steady_storage(samples)
    for keys, name in storage:
        per_event, per_hour, n = _explained(steady, keys)
        slopes[name] = verdict(per_hour, THRESHOLDS[name]) | {
            "method": f"OLS ({' + '.join(keys)})/1e6 = a + b·stored_events + c·hours from the first WAL checkpoint on; slope = c",
            "bytes_per_stored_event": _r(per_event.value) if per_event else None,
            "bytes_per_stored_event_ci95": [_r(per_event.lo), _r(per_event.hi)] if per_event else None,
            "samples": n,
        }
    ivs = intervals(samples, warm_s)
    cpu_fit = ols([[1.0, iv["decisions"] / iv["dt_s"], iv["t_h"]] for iv in ivs], [iv["cpu_s"] / iv["dt_s"] for iv in ivs])
    slopes["cpu_load_drift"] = verdict(cpu_fit[0][2] if cpu_fit else None, THRESHOLDS["cpu_load_drift"]) | {
        "method": "OLS cpu_s/s = a + b·screenings/s + c·hours over warm same-incarnation intervals; slope = c",
        "idle_cpu_cores": _r(cpu_fit[0][0].value) if cpu_fit else None,
        "cpu_s_per_screening_marginal": _r(cpu_fit[0][1].value) if cpu_fit else None,
        "samples": len(ivs),
    }
    failed = sorted(k for k, v in slopes.items() if v.get("clearly_above_zero"))
    return {
        "slopes": slopes,
        "slopes_clearly_above_zero": failed,
        "card_wear": card_wear(ivs),
        "cpu": cpu_summary(ivs),
        "wal": wal_summary(samples),
    }


def wal_summary(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Return the WAL's largest size and how often a checkpoint showed (the main file grew or the WAL shrank)."""
    pts = [(s["db_bytes"], s["wal_bytes"]) for s in samples if "db_bytes" in s and "wal_bytes" in s]
    seen = sum(1 for (d0, w0), (d1, w1) in zip(pts, pts[1:], strict=False) if d1 > d0 or w1 < w0)
    return {
        "max_mb": round(max((w for _, w in pts), default=0) / 1e6, 2),
        "last_mb": round(pts[-1][1] / 1e6, 2) if pts else None,
        "db_main_file_last_mb": round(pts[-1][0] / 1e6, 2) if pts else None,
        "samples_showing_a_checkpoint": seen,
        "note": "the WAL holds every committed page until a checkpoint copies them to the main file; it grows with data, not gated",
    }


def card_wear(ivs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Return bytes written per screening (steady state: warm, same-incarnation intervals) two ways."""
    dec = sum(iv["decisions"] for iv in ivs)
    wb = sum(iv["write_bytes"] for iv in ivs)
    secs = sum(iv["dt_s"] for iv in ivs)
    fit = ols([[iv["decisions"], iv["dt_s"]] for iv in ivs], [iv["write_bytes"] for iv in ivs])
    return {
        "source": "/proc/PID/io write_bytes of the daemon, deltas between samples of one warm incarnation",
        "intervals": len(ivs),
        "screenings": dec,
        "seconds": round(secs, 1),
        "write_bytes": wb,
        "write_bytes_per_screening_overall": round(wb / dec, 1) if dec else None,
        "write_bytes_per_s_overall": round(wb / secs, 1) if secs else None,
        # Split: write_bytes = m·screenings + i·seconds (no intercept): what one screening adds, and the idle floor.
        "write_bytes_per_screening_marginal": _r(fit[0][0].value) if fit else None,
        "write_bytes_per_screening_marginal_ci95": [_r(fit[0][0].lo), _r(fit[0][0].hi)] if fit else None,
        "write_bytes_per_s_idle": _r(fit[0][1].value) if fit else None,
        "write_bytes_per_s_idle_ci95": [_r(fit[0][1].lo), _r(fit[0][1].hi)] if fit else None,
    }


def cpu_summary(ivs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Return CPU seconds per screening over the warm intervals (total CPU ÷ screenings, idle included)."""
    dec = sum(iv["decisions"] for iv in ivs)
    cpu = sum(iv["cpu_s"] for iv in ivs)
    secs = sum(iv["dt_s"] for iv in ivs)
    per = sorted(iv["cpu_s_per_screening"] for iv in ivs if iv["cpu_s_per_screening"] is not None)
    return {
        "cpu_s_per_screening_overall": round(cpu / dec, 3) if dec else None,
        "cpu_s_per_screening_interval_median": round(per[len(per) // 2], 3) if per else None,
        "cpu_cores_mean": round(cpu / secs, 3) if secs else None,
    }


# -- the plot ------------------------------------------------------------------------------------------


def plot(samples: Sequence[dict[str, Any]], faults: Sequence[dict[str, Any]], path: Path, title: str = "soak") -> None:
    """Draw the series against run time (hours) with fault instants marked; write a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    ivs = intervals(samples)
    th = [s["t_s"] / 3600.0 for s in samples]
    # The screening rate needs no single incarnation: the decision count is the soak's, across restarts.
    rate = [
        (b["t_s"] / 3600.0, 60.0 * (b["decisions"] - a["decisions"]) / (b["t_s"] - a["t_s"]))
        for a, b in zip(samples, samples[1:], strict=False)
    ]
    panels: list[tuple[str, list[tuple[list[float], list[float | None], str]]]] = [
        ("RSS (MB)", [(th, [s.get("rss_mb") for s in samples], "rss")]),
        ("open FDs / threads", [(th, [s.get("fds") for s in samples], "fds"), (th, [s.get("threads") for s in samples], "threads")]),
        (
            "storage (MB)",
            [
                (th, [s.get("db_bytes", 0) / 1e6 for s in samples], "events DB"),
                (th, [s.get("wal_bytes", 0) / 1e6 for s in samples], "WAL"),
                (th, [s.get("codes_bytes", 0) / 1e6 for s in samples], "codes/ (replay)"),
                (th, [s.get("data_dir_bytes", 0) / 1e6 for s in samples], "data dir"),
            ],
        ),
        (
            "bytes / stored event",
            [
                (
                    th,
                    [(s["db_bytes"] + s["wal_bytes"]) / s["events"] if s.get("events") else None for s in samples],
                    "(events DB + WAL) ÷ events",
                ),
                (th, [s["data_dir_bytes"] / s["events"] if s.get("events") else None for s in samples], "data dir ÷ events"),
            ],
        ),
        ("outbox pending", [(th, [s.get("outbox_pending") for s in samples], "pending")]),
        ("screenings / min", [([t for t, _ in rate], [r for _, r in rate], "rate")]),
        ("CPU s / screening", [([iv["t_h"] for iv in ivs], [iv["cpu_s_per_screening"] for iv in ivs], "cpu")]),
        ("write KB / screening", [([iv["t_h"] for iv in ivs], [_kb(iv["write_bytes_per_screening"]) for iv in ivs], "written")]),
    ]
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 2.0 * len(panels)), sharex=True)
    kinds = sorted({f.get("kind", "?") for f in faults})
    colours = {k: plt.get_cmap("tab10")(i % 10) for i, k in enumerate(kinds)}
    for ax, (label, lines) in zip(axes, panels, strict=True):
        for xs, ys, name in lines:
            pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
            ax.plot([x for x, _ in pts], [y for _, y in pts], ".-", ms=3, lw=0.8, label=name)
        for f in faults:
            ax.axvline(f["t_s"] / 3600.0, color=colours[f.get("kind", "?")], lw=0.6, alpha=0.6)
        for a, b in zip(samples, samples[1:], strict=False):
            if a.get("pid") != b.get("pid"):  # a restart: the daemon's counters start again
                ax.axvline(b["t_s"] / 3600.0, color="black", lw=0.8, ls=":")
        ax.set_ylabel(label, fontsize=8)
        ax.tick_params(labelsize=7)
        if len(lines) > 1:
            ax.legend(fontsize=6, loc="upper left")
    handles = [Line2D([0], [0], color=c, lw=1) for c in colours.values()]
    if handles:
        axes[0].legend(handles, list(colours), fontsize=6, ncol=4, loc="lower right", title="faults", title_fontsize=6)
    axes[-1].set_xlabel("hours into the run (dotted black: a daemon restart; colour: a fault)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _kb(v: float | None) -> float | None:
    return None if v is None else v / 1024.0


def main(argv: list[str] | None = None) -> int:
    """Re-summarise (and re-plot) a soak's JSONL; exit 1 when a slope is clearly above zero."""
    ap = argparse.ArgumentParser(prog="python -m bench.soak_series", description=__doc__.splitlines()[0])
    ap.add_argument("jsonl", type=Path)
    ap.add_argument("--out", type=Path, default=None, help="write the summary JSON here")
    ap.add_argument("--plot", type=Path, default=None, help="write the PNG here")
    ap.add_argument("--warm-s", type=float, default=WARM_S)
    args = ap.parse_args(argv)
    meta, samples, faults = read_jsonl(args.jsonl)
    result = {"meta": meta, "samples": len(samples), "faults": len(faults)} | summarise(samples, args.warm_s)
    text = json.dumps(result, indent=2, ensure_ascii=False)
    if args.out:
        args.out.write_text(text + "\n")
    if args.plot:
        plot(samples, faults, args.plot, title=f"soak {args.jsonl.name}: {len(samples)} samples, {len(faults)} faults")
    print(text)
    return 1 if result["slopes_clearly_above_zero"] else 0


if __name__ == "__main__":
    sys.exit(main())
