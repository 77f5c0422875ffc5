"""Daily and weekly reports per station (rolled up along the district tree), and a per-checkpoint forecast of next-day hourly flow.

**Reports** count from the database, each event once (a screening and its alarm copy are one
decision, a redelivery is one row): per station ``screened``, one counter per decision, ``fevers``
(decided ``deny_fever``), ``alarms``, ``outsider_vehicles`` (``events/visit`` of kind
``outsider_vehicle``; stations without visits: their ``events/vehicle`` outsiders), ``flagged_visits``,
``registrations`` (``events/registration``), ``missing_events`` (seq gaps closed in the period) and,
when the fleet view stores status changes (``station_status_log``), ``offline_over_10min`` (offline
spells longer than 10 minutes that began in the period). ``station.centre.tree.rollup`` sums them up
the district tree; unknown stations land under "unassigned".

**Forecast** (:func:`forecast_day`): the expected screenings per hour of a day at one checkpoint,
from the same weekday's hours in the last ``weeks`` weeks (their mean), scaled by the recent trend
(the last 7 days against the mean of the weeks before them, clipped to 0.5-2). :func:`backtest`
says how good it is on held-out days (MAE and MAPE over the hours with traffic), next to the
seasonal-naive forecast (the same hour a week earlier) it should beat.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

from station.centre.db import dated_events, day_bounds

OFFLINE_MIN_S = 600.0
COUNTERS = (
    "screened",
    "pass",
    "deny_fever",
    "deny_code",
    "retry",
    "manual_check",
    "fevers",
    "alarms",
    "outsider_vehicles",
    "flagged_visits",
    "registrations",
    "missing_events",
    "offline_over_10min",
)

# A record counts in the period of its true time: its clock-corrected time where it has one (db.dated_events).
PER_STATION_SQL = f"""
WITH decisions AS (
  SELECT DISTINCT ON (site, station, event_id) site, station, decision, alarm
  FROM {dated_events("site, station, event_id, decision, alarm, kind", "kind IN ('screening', 'alarm') AND event_id IS NOT NULL")} d
  ORDER BY site, station, event_id, kind DESC)
SELECT site, station, coalesce(decision, 'unknown'), count(*), count(*) FILTER (WHERE alarm) FROM decisions GROUP BY 1, 2, 3
"""
OTHER_SQL = f"""
SELECT site, station,
  count(DISTINCT event_id) FILTER (WHERE kind = 'visit' AND detail = 'outsider_vehicle'),
  count(DISTINCT event_id) FILTER (WHERE kind = 'vehicle' AND detail = 'outsider_vehicle'),
  count(DISTINCT event_id) FILTER (WHERE kind = 'visit'),
  count(DISTINCT event_id) FILTER (WHERE kind = 'visit' AND alarm),
  count(DISTINCT event_id) FILTER (WHERE kind = 'registration')
FROM {dated_events("site, station, kind, detail, event_id, alarm", "kind IN ('visit', 'vehicle', 'registration')")} d
GROUP BY 1, 2
"""
MISSING_SQL = "SELECT site, station, sum(missing) FROM station_gaps WHERE next_ts >= %(start)s AND next_ts < %(end)s GROUP BY 1, 2"
OFFLINE_SQL = """
SELECT site, station, count(*) FROM (
  SELECT site, station, state, at, lead(at) OVER (PARTITION BY site, station ORDER BY at) AS until
  FROM station_status_log) s
WHERE state = 'offline' AND at >= %(start)s AND at < %(end)s AND coalesce(until, now()) - at > make_interval(secs => %(min_s)s)
GROUP BY 1, 2
"""


def _has_table(conn: psycopg.Connection[Any], name: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()
    return bool(row and row[0])


def per_station(conn: psycopg.Connection[Any], start: dt.datetime, end: dt.datetime) -> dict[tuple[str, str], dict[str, int]]:
    """Return every station's counters over ``[start, end)`` (stations with nothing in the period are absent)."""
    args: dict[str, Any] = {"start": start, "end": end, "min_s": OFFLINE_MIN_S}
    out: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: dict.fromkeys(COUNTERS, 0))
    for site, station, decision, n, alarms in conn.execute(PER_STATION_SQL, args).fetchall():
        row = out[(site, station)]
        row[decision] = row.get(decision, 0) + int(n)
        row["screened"] += int(n)
        row["alarms"] += int(alarms)
        if decision == "deny_fever":
            row["fevers"] += int(n)
    for site, station, outsider_visits, outsider_vehicles, visits, flagged, registrations in conn.execute(OTHER_SQL, args).fetchall():
        row = out[(site, station)]
        # A vehicle lane sends a visit per vehicle and also its plate event: count visits where there are any.
        row["outsider_vehicles"] = int(outsider_visits) if visits else int(outsider_vehicles)
        row["flagged_visits"] = int(flagged)
        row["registrations"] = int(registrations)
    for site, station, n in conn.execute(MISSING_SQL, args).fetchall():
        out[(site, station)]["missing_events"] = int(n)
    if _has_table(conn, "station_status_log"):
        for site, station, n in conn.execute(OFFLINE_SQL, args).fetchall():
            out[(site, station)]["offline_over_10min"] = int(n)
    return dict(out)


def period_report(conn: psycopg.Connection[Any], first_day: dt.date, days: int, tz: ZoneInfo, tree: Any = None) -> dict[str, Any]:
    """Return the report of ``days`` days from ``first_day`` (a week: 7): totals, per station, and the tree's roll-up when given."""
    start = day_bounds(first_day, tz)[0]
    end = day_bounds(first_day + dt.timedelta(days=days - 1), tz)[1]
    stations = per_station(conn, start, end)
    known = [(str(a), str(b)) for a, b in conn.execute("SELECT site, station FROM stations ORDER BY 1, 2").fetchall()]
    totals = dict.fromkeys(COUNTERS, 0)
    for row in stations.values():
        for k, n in row.items():
            totals[k] = totals.get(k, 0) + n
    body: dict[str, Any] = {
        "from": first_day.isoformat(),
        "to": (first_day + dt.timedelta(days=days - 1)).isoformat(),
        "days": days,
        "timezone": str(tz.key),
        "offline_tracked": _has_table(conn, "station_status_log"),
        "totals": totals,
        "stations": [
            {"site": s, "station": t, **stations.get((s, t), dict.fromkeys(COUNTERS, 0))} for s, t in sorted(set(known) | set(stations))
        ],
    }
    if tree is not None:
        from station.centre.tree import rollup

        body["tree"] = rollup(tree, stations, known)
    return body


def report_csv(body: Mapping[str, Any]) -> str:
    """Return one CSV row per station (and per tree node when rolled up): level, path or site/station, every counter."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["from", "to", "level", "where", *COUNTERS])
    span = [body["from"], body["to"]]

    def node(n: Mapping[str, Any]) -> None:
        w.writerow([*span, n.get("level"), n.get("path"), *(n.get("totals", {}).get(k, 0) for k in COUNTERS)])
        for child in n.get("children", []):
            node(child)

    if "tree" in body:
        node(body["tree"])
    else:
        w.writerow([*span, "district", "", *(body["totals"].get(k, 0) for k in COUNTERS)])
    for s in body["stations"]:
        w.writerow([*span, "station", f"{s['site']}/{s['station']}", *(s.get(k, 0) for k in COUNTERS)])
    return out.getvalue()


# ------------------------------------------------------------------------------------------ forecast

HOURLY_SQL = """
SELECT (date_trunc('hour', ts AT TIME ZONE %(tz)s)) AS hour, count(DISTINCT event_id)
FROM events
WHERE site = %(site)s AND station = %(station)s AND ts >= %(start)s AND ts < %(end)s AND kind IN ('screening', 'alarm')
  AND event_id IS NOT NULL
GROUP BY 1
"""


def hourly_counts(
    conn: psycopg.Connection[Any], site: str, station: str, first_day: dt.date, last_day: dt.date, tz: ZoneInfo
) -> dict[dt.date, list[int]]:
    """Return screenings per local hour (24 a day) for every day from ``first_day`` to ``last_day``."""
    start, end = day_bounds(first_day, tz)[0], day_bounds(last_day, tz)[1]
    days = {first_day + dt.timedelta(days=i): [0] * 24 for i in range((last_day - first_day).days + 1)}
    args = {"tz": str(tz.key), "site": site, "station": station, "start": start, "end": end}
    for hour, n in conn.execute(HOURLY_SQL, args).fetchall():
        if hour.date() in days:
            days[hour.date()][hour.hour] += int(n)  # a DST fall-back hour adds into the one it repeats
    return days


def forecast_day(history: Mapping[dt.date, Sequence[int]], day: dt.date, weeks: int = 4) -> list[float]:
    """Return expected screenings per hour of ``day``: the same weekday's hourly mean over ``weeks`` weeks, times the trend."""
    same = [history[d] for w in range(1, weeks + 1) if (d := day - dt.timedelta(weeks=w)) in history]
    if not same:
        return [0.0] * 24
    base = [sum(h[i] for h in same) / len(same) for i in range(24)]
    recent = [history[d] for i in range(1, 8) if (d := day - dt.timedelta(days=i)) in history]
    older = [history[d] for i in range(8, 7 * weeks + 1) if (d := day - dt.timedelta(days=i)) in history]
    trend = 1.0
    if len(recent) == 7 and len(older) >= 7:
        per_day_recent = sum(map(sum, recent)) / len(recent)
        per_day_older = sum(map(sum, older)) / len(older)
        if per_day_older > 0:
            trend = min(2.0, max(0.5, per_day_recent / per_day_older))
    return [round(b * trend, 2) for b in base]


def seasonal_naive(history: Mapping[dt.date, Sequence[int]], day: dt.date) -> list[float]:
    """Return the same hours a week earlier (the baseline a forecast must beat)."""
    week_ago = history.get(day - dt.timedelta(weeks=1))
    return [float(x) for x in week_ago] if week_ago is not None else [0.0] * 24


def errors(actual: Sequence[Sequence[int]], predicted: Sequence[Sequence[float]]) -> dict[str, float | None]:
    """Return MAE (people per hour, every hour) and MAPE (%, hours with at least 5 people) over paired days."""
    abs_err = [abs(a - p) for day_a, day_p in zip(actual, predicted, strict=True) for a, p in zip(day_a, day_p, strict=True)]
    pct = [abs(a - p) / a for day_a, day_p in zip(actual, predicted, strict=True) for a, p in zip(day_a, day_p, strict=True) if a >= 5]
    return {
        "mae": round(sum(abs_err) / len(abs_err), 3) if abs_err else None,
        "mape_pct": round(100 * sum(pct) / len(pct), 2) if pct else None,
        "hours": len(abs_err),
    }


def backtest(history: Mapping[dt.date, Sequence[int]], held_out: Sequence[dt.date], weeks: int = 4) -> dict[str, Any]:
    """Forecast each held-out day from the days before it only; return the model's and the seasonal-naive errors."""
    actual = [history[d] for d in held_out]
    before = [{k: v for k, v in history.items() if k < d} for d in held_out]
    model = [forecast_day(b, d, weeks) for b, d in zip(before, held_out, strict=True)]
    naive = [seasonal_naive(b, d) for b, d in zip(before, held_out, strict=True)]
    return {
        "days": [d.isoformat() for d in held_out],
        "weekday_hour_mean_trend": errors(actual, model),
        "seasonal_naive": errors(actual, naive),
    }


def forecast_report(
    conn: psycopg.Connection[Any], site: str, station: str, day: dt.date, tz: ZoneInfo, weeks: int = 4, held_out_days: int = 7
) -> dict[str, Any]:
    """Return the forecast of ``day`` at one station and its error on the last ``held_out_days`` days before it."""
    first = day - dt.timedelta(weeks=weeks, days=held_out_days)
    history = hourly_counts(conn, site, station, first, day - dt.timedelta(days=1), tz)
    held = [day - dt.timedelta(days=i) for i in range(held_out_days, 0, -1)]
    usable = [d for d in held if any(history.get(d - dt.timedelta(weeks=1), []))]
    hourly = forecast_day(history, day, weeks)
    return {
        "site": site,
        "station": station,
        "day": day.isoformat(),
        "timezone": str(tz.key),
        "model": f"weekday-hour mean over {weeks} weeks x trend (last 7 days / before, clipped 0.5-2)",
        "hourly": hourly,
        "total": round(sum(hourly), 1),
        "peak_hour": max(range(24), key=lambda h: hourly[h]) if any(hourly) else None,
        "history_days": sum(1 for v in history.values() if any(v)),
        "held_out": backtest(history, usable, weeks) if usable else None,
    }
