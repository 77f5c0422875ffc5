"""Big-screen query costs over a big day: python -m bench.centre_screen --json.

A throw-away PostgreSQL (tests/support/postgres.py, fsync on) gets ``--events`` screenings spread
over ``--stations`` stations on today and the same weekday last week (generated in SQL: the rows the
centre's writer would store, 2 % fevers each with its alarm copy, 1 % code denials), plus a
tree placing nine stations in ten. Then, each ``--runs`` times after a warm run:

* ``direct_day_query_ms`` — the roll-up computed straight from ``events`` for a whole day (what the
  first fill of a day costs; once per day);
* ``sync_after_an_hour_of_arrivals`` / ``sync_steady`` — :func:`screen.sync_hourly` after an hour's
  worth of new rows, and when nothing new arrived (a screen runs it every 5 s at most);
* ``read_day_rollup`` — reading a day from ``centre_hourly`` (what a screen's refresh costs);
* ``dashboard_python`` — summing it along the tree and building the page's JSON for the district;
* ``alarm_queue_ms`` — the alarm list of the last 48 h (partial index ``events_alarm_queue``);
* ``acknowledge_ms`` — one acknowledgement (event look-up, insert, audit, commit).

Prints medians and p95; the plans used are printed with ``--explain``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from typing import Any
from zoneinfo import ZoneInfo

from bench.stats import percentile

UTC = ZoneInfo("UTC")

SEED = """
INSERT INTO events (ts, msg_id, site, station, session, seq, kind, event_id, decision, reason, temperature_c, alarm, code_colour,
                    received_at)
SELECT %(start)s::timestamptz + (((g - 1) * 86399.0 / %(n)s) || ' s')::interval
         + (abs(hashint4(g)) %% 1000 || ' ms')::interval,
       %(tag)s || g, 'site-' || (g %% %(stations)s / 10), 'st-' || (g %% %(stations)s), 1, g, 'screening', %(tag)s || 'e' || g,
       CASE WHEN g %% 50 = 0 THEN 'deny_fever' WHEN g %% 100 = 1 THEN 'deny_code' ELSE 'pass' END,
       NULL, CASE WHEN g %% 50 = 0 THEN 38.3 ELSE 36.5 END, g %% 50 = 0,
       CASE WHEN g %% 100 = 1 THEN 'red' WHEN g %% 10 = 2 THEN 'yellow' ELSE 'green' END,
       now() - %(received_ago)s::interval
FROM generate_series(1, %(n)s) g
"""
ALARM_COPIES = """
INSERT INTO events (ts, msg_id, site, station, session, seq, kind, event_id, decision, temperature_c, alarm, code_colour, received_at)
SELECT ts, msg_id || 'a', site, station, session, seq, 'alarm', event_id, decision, temperature_c, alarm, code_colour, received_at
FROM events WHERE ts >= %(start)s AND ts < %(end)s AND kind = 'screening' AND decision = 'deny_fever' AND msg_id LIKE %(tag)s || '%%'
"""


def _tree(stations: int) -> str:
    lines = ['[district]\nname = "bench"\n']
    sites = stations // 10
    for town in range(10):
        lines.append(f'[towns.t{town}]\nname = "town {town}"\n')
        for grid in range(10):
            lines.append(f'[towns.t{town}.grids.g{grid}]\nname = "grid {grid}"\n')
    for site in range(sites * 9 // 10):  # a tenth of the sites stay unassigned
        town, grid = site % 10, (site // 10) % 10
        lines.append(f'[towns.t{town}.grids.g{grid}.checkpoints.c{site}]\nname = "checkpoint {site}"\nstations = ["site-{site}/*"]\n')
    return "\n".join(lines)


def _timed(fn: Any, runs: int) -> dict[str, float]:
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {"median_ms": round(times[len(times) // 2], 1), "p95_ms": round(percentile(times, 95), 1), "runs": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000, help="screenings per day (two days are seeded)")
    ap.add_argument("--stations", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--explain", action="store_true")
    args = ap.parse_args()

    import psycopg

    from station.centre import db, screen
    from station.centre.tree import Tree, parse_tree
    from tests.support.postgres import postgres_server

    today = dt.datetime.now(UTC).date()
    week_ago = today - dt.timedelta(days=7)
    out: dict[str, Any] = {"events_per_day": args.events, "stations": args.stations}
    with postgres_server(fsync=True) as server:
        url = server.create_database("bench")
        with psycopg.connect(url) as conn:
            tz, _secret = screen.ensure_screen_schema(conn)
            db.create_partitions(conn, [week_ago, today], tz)
            t0 = time.perf_counter()
            for day, tag in ((week_ago, "w"), (today, "t")):
                start, end = db.day_bounds(day, tz)
                params = {"start": start, "end": end, "n": args.events, "stations": args.stations, "tag": tag, "received_ago": "2 hours"}
                with conn.transaction():
                    conn.execute(SEED, params)
                    conn.execute(ALARM_COPIES, params)
            conn.execute(
                "INSERT INTO stations SELECT DISTINCT site, station, now(), now() FROM events WHERE ts >= %s",
                (db.day_bounds(today, tz)[0],),
            )
            conn.commit()
            conn.autocommit = True
            screen.prepare_session(conn)  # as the screen's pool does
            conn.execute("VACUUM ANALYZE events")
            out["seed_s"] = round(time.perf_counter() - t0, 1)
            rows_today = conn.execute("SELECT count(*) FROM events WHERE ts >= %s", (db.day_bounds(today, tz)[0],)).fetchone()
            out["rows_today"] = int(rows_today[0]) if rows_today else 0
            tree = parse_tree(_tree(args.stations))
            assert isinstance(tree, Tree), tree
            screen.save_tree(conn, 0, _tree(args.stations), "bench", "admin", "tree.load", "")
            start, end = db.day_bounds(today, tz)
            t0 = time.perf_counter()
            conn.execute(screen.HOURLY, {"tz": tz.key, "start": start, "end": end}).fetchall()
            out["direct_day_query_ms"] = round((time.perf_counter() - t0) * 1000, 1)
            t0 = time.perf_counter()
            filled = screen.sync_hourly(conn, [week_ago, today], tz, min_interval_s=0)
            out["first_fill_two_days_ms"] = round((time.perf_counter() - t0) * 1000, 1)
            assert filled.days == 2
            # Arrivals of the last seconds: an hour's worth of rows into the current hour, then the sync a screen runs.
            hour_start = dt.datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
            fresh = {
                "start": hour_start,
                "end": hour_start,
                "n": args.events // 24,
                "stations": args.stations,
                "tag": "f",
                "received_ago": "0",
            }
            with conn.transaction():
                conn.execute(SEED.replace("86399.0", "3599.0"), fresh)
                conn.execute(ALARM_COPIES, {"start": hour_start, "end": hour_start + dt.timedelta(hours=1), "tag": "f"})
            syncs = []

            def sync() -> None:
                syncs.append(screen.sync_hourly(conn, [today], tz, min_interval_s=0))

            t0 = time.perf_counter()
            sync()
            out["sync_after_an_hour_of_arrivals"] = {"ms": round((time.perf_counter() - t0) * 1000, 1), "hours_recomputed": syncs[0].hours}
            out["sync_steady"] = _timed(sync, args.runs)
            day_rows: dict[str, Any] = {}

            def hourly() -> None:
                day_rows["rows"] = screen.day_rows(conn, today, tz)

            out["read_day_rollup"] = _timed(hourly, args.runs)
            out["read_day_rollup"]["stations"] = len(day_rows["rows"].totals)
            before = screen.day_rows(conn, week_ago, tz)
            stations = screen.known_stations(conn)
            body: dict[str, Any] = {}

            def python() -> None:
                body.update(screen.dashboard(tree, day_rows["rows"], before, stations, ""))

            out["dashboard_python"] = _timed(python, args.runs)
            out["screened_today"] = body["totals"]["screened"]
            out["dashboard_total_ms"] = round(out["read_day_rollup"]["median_ms"] + out["dashboard_python"]["median_ms"], 1)
            since = dt.datetime.now(dt.UTC) - dt.timedelta(hours=48)
            alarms: list[Any] = []

            def queue() -> None:
                alarms[:] = screen.alarms(conn, since)

            out["alarm_queue"] = _timed(queue, args.runs)
            out["alarm_queue"]["listed"] = len(alarms)
            open_ones = iter(alarms)

            def ack() -> None:
                a = next(open_ones)
                screen.acknowledge(conn, a["site"], a["station"], a["event_id"], "bench", "tracer")

            out["acknowledge"] = _timed(ack, min(args.runs, len(alarms) - 1))
            if args.explain:
                start, end = db.day_bounds(today, tz)
                explained: list[tuple[str, str, Any]] = [
                    ("hourly", screen.HOURLY, {"tz": "UTC", "start": start, "end": end}),
                    ("alarm_queue", f"SELECT ts FROM events WHERE ts >= %s AND {screen.ALARM_WHERE}", (since,)),
                ]
                for name, sql, explain_params in explained:
                    plan = conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, explain_params).fetchall()
                    print(f"--- {name}\n" + "\n".join(r[0] for r in plan))
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for key, value in out.items():
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()
