"""Centre query latency over a big store: python -m bench.centre_queries --json (also ``python -m bench.centre --queries``).

A PostgreSQL made with ``initdb`` (tests/support/postgres.py, fsync on) gets the centre's own schema
(``screen.ensure_screen_schema``, ``tracing.ensure_tracing_schema``: every table, index and day
partition the product makes) and ``--events`` rows over ``--days`` day partitions from
``--stations`` stations, generated in SQL (``generate_series``; the fill runs at the priority the
bench was started with, so start it with ``nice -n 10`` on a shared machine). The mix is the
stations' own: per 100 records of a station 5 vehicles (with a plate reference), 1 audit, 2 fevers
(each with its alarm copy), 1 code denial, the rest screenings, 70 % of the screenings with a
code holder's reference (300 000 holders), one record in 5 000 lost (a ``seq`` gap). Rows of a day
are spread evenly over it; today's end a minute before the fill; ``received_at`` two seconds after
the event.

Then, ``--runs`` times each after a warm run, the product's own functions (what the pages and the
CLI call, not copies), each run after a batch of live arrivals written by ``db.write_batch``:

* ``dashboard`` — the big screen's ``/api/dashboard`` as ``station centre run`` serves it, on a miss of
  its cache: ``screen.load_tree_text``, ``DayCache.get`` of today and the same weekday last week
  (``centre_daily``: one row per station), ``screen.known_stations`` and ``screen.dashboard`` for the
  district; the roll-up is kept current by a ``RollupKeeper`` thread, timed apart as
  ``rollup_sync`` (``screen.sync_hourly`` after the arrivals, no minimum interval);
* ``dashboard_sync_in_request`` — the same with the sync in the request (no keeper);
* ``alarm_queue`` — ``screen.alarms`` over the last 48 h;
* ``trace_30_days`` — ``tracing.where_seen`` of one holder over 30 days (a different holder each run);
* ``fever_passages_day`` — ``tracing.fever_passages`` at one checkpoint over a day;
* ``report_day`` — ``db.report`` (``station centre report --json``) of yesterday;
* ``period_report_day`` / ``period_report_week`` — ``reports.period_report`` of yesterday and of the last 7 days;
* ``missing_by_station`` — ``db.missing_by_station`` (every station's missing events over the data kept);
* ``forecast`` — ``reports.forecast_report`` of one checkpoint.

``--keep DIR`` keeps the cluster (and its fill) in ``DIR`` and reuses it on the next run: the
schema upgrade of a newer product then runs on start, as it does for a centre's existing database.
Prints p50/p95 per query, the machine's load average and the fill's rate.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from bench.stats import percentile

UTC = ZoneInfo("UTC")
HOLDERS = 300_000
PLATES = 20_000
SLOTS = 100  # a station's records cycle through this mix (by seq)

# One day of one station mix, as the writer stores it. %(n)s records of the day over %(stations)s
# stations; a station's seq continues from the days before (seq0 + the record's index of the day).
FILL_DAY = f"""
INSERT INTO events (ts, msg_id, site, station, session, seq, kind, event_id, decision, reason, temperature_c, alarm, code_colour,
                    decision_source, detail, clock_synced, trace_ref, trace_key, received_at)
SELECT ts, 's' || st || '-' || seq, 'site-' || (st / 10), 'st-' || st, 1, seq,
       CASE WHEN slot < 5 THEN 'vehicle' WHEN slot = 5 THEN 'audit' ELSE 'screening' END,
       'e' || st || '-' || seq,
       CASE WHEN slot < 6 THEN NULL WHEN slot IN (6, 7) THEN 'deny_fever' WHEN slot = 8 THEN 'deny_code' ELSE 'pass' END,
       CASE WHEN slot IN (6, 7) THEN 'fever' WHEN slot = 8 THEN 'code_red' END,
       CASE WHEN slot < 6 THEN NULL WHEN slot IN (6, 7) THEN 38.2 ELSE 36.5 END,
       slot IN (6, 7),
       CASE WHEN slot < 6 THEN NULL WHEN slot = 8 THEN 'red' WHEN slot %% 10 = 2 THEN 'yellow' ELSE 'green' END,
       CASE WHEN slot >= 6 THEN 'code' END,
       CASE WHEN slot < 5 THEN (CASE WHEN slot = 0 THEN 'outsider_vehicle' ELSE 'resident_vehicle' END)
            WHEN slot = 5 THEN 'login' END,
       true,
       CASE WHEN slot < 5 THEN lpad(to_hex(%(holders)s + abs(hashint8(seq * 7 + st)) %% %(plates)s), 32, '0')
            WHEN slot >= 6 AND abs(hashint8(seq * 13 + st)) %% 10 < 7
              THEN lpad(to_hex(abs(hashint8(seq * 31 + st)) %% %(holders)s), 32, '0')
       END,
       'k1', ts + interval '2 s'
FROM (
  SELECT %(start)s::timestamptz + ((g - 1) * %(span)s / %(n)s) * interval '1 s' AS ts,
         (g - 1) %% %(stations)s AS st, %(seq0)s + (g - 1) / %(stations)s AS seq, ((g - 1) / %(stations)s + %(seq0)s) %% {SLOTS} AS slot, g
  FROM generate_series(1, %(n)s) g
) r
WHERE abs(hashint8(g + %(seq0)s * 7919)) %% 5000 <> 0
"""
ALARM_COPIES = """
INSERT INTO events (ts, msg_id, site, station, session, seq, kind, event_id, decision, reason, temperature_c, alarm, code_colour,
                    decision_source, clock_synced, trace_ref, trace_key, received_at)
SELECT ts, msg_id || 'a', site, station, session, seq, 'alarm', event_id, decision, reason, temperature_c, alarm, code_colour,
       decision_source, clock_synced, trace_ref, trace_key, received_at
FROM events WHERE ts >= %(start)s AND ts < %(end)s AND kind = 'screening' AND alarm
"""
STATIONS = """
INSERT INTO stations (site, station, first_seen, last_seen, last_event_ts, last_session, max_seq)
SELECT site, station, min(ts), max(received_at), max(ts), 1, max(seq) FROM events WHERE ts >= %(start)s GROUP BY 1, 2
ON CONFLICT (site, station) DO UPDATE SET last_seen = excluded.last_seen, last_event_ts = excluded.last_event_ts, max_seq = excluded.max_seq
"""


def _server(keep: Path | None) -> Any:
    from tests.support.postgres import PostgresServer

    if keep is None:
        return PostgresServer(fsync=True)
    if (keep / "data").exists():
        server = PostgresServer.__new__(PostgresServer)  # an existing cluster: no initdb
        from tests.support.broker import free_port
        from tests.support.postgres import pg_bin_dir

        bindir = pg_bin_dir()
        assert bindir is not None
        server.bindir, server.workdir, server.port, server.fsync = bindir, keep, free_port(), True
        server.data, server.sockets, server.log = keep / "data", keep / "sock", keep / "postgres.log"
        server.user = "nobody" if os.geteuid() == 0 else None
        return server
    keep.mkdir(parents=True, exist_ok=True)
    return PostgresServer(workdir=keep, fsync=True)


def fill(conn: Any, tz: ZoneInfo, *, events: int, days: int, stations: int, now: dt.datetime, log: Callable[[str], None]) -> dict[str, Any]:
    """Fill ``days`` day partitions ending today with about ``events`` rows; return how long it took and what was stored."""
    from station.centre import db

    today = now.astimezone(tz).date()
    first = today - dt.timedelta(days=days - 1)
    db.create_partitions(conn, [first + dt.timedelta(days=i) for i in range(days + 2)], tz)
    per_day = int(events / days / (1 + 2 / SLOTS)) // stations * stations  # the alarm copies come on top
    conn.execute("SET synchronous_commit = off")
    t0 = time.perf_counter()
    for i in range(days):
        day = first + dt.timedelta(days=i)
        start, end = db.day_bounds(day, tz)
        span = min(86400.0, (now - dt.timedelta(minutes=1) - start).total_seconds())
        args = {"start": start, "end": end, "span": span, "n": per_day, "stations": stations, "seq0": i * (per_day // stations)}
        args |= {"holders": HOLDERS, "plates": PLATES}
        with conn.transaction():
            conn.execute(FILL_DAY, args)
            conn.execute(ALARM_COPIES, args)
        log(f"filled {day} ({i + 1}/{days}) at {time.perf_counter() - t0:.0f} s")
    with conn.transaction():
        conn.execute(STATIONS, {"start": db.day_bounds(first, tz)[0]})
    fill_s = time.perf_counter() - t0
    conn.execute("RESET synchronous_commit")
    conn.commit()
    t1 = time.perf_counter()
    conn.autocommit = True
    conn.execute("VACUUM ANALYZE")  # what autovacuum does on its own after a bulk load
    conn.autocommit = False
    vacuum_s = time.perf_counter() - t1
    return {"fill_s": round(fill_s, 1), "vacuum_analyze_s": round(vacuum_s, 1), "rows_per_day": per_day, "first_day": first.isoformat()}


def _timed(fn: Callable[[], Any], runs: int, before: Callable[[int], Any] | None = None) -> dict[str, Any]:
    """Run ``fn`` once warm and ``runs`` times timed (``before(i)`` untimed ahead of each); return p50, p95 and max in ms."""
    if before:
        before(-1)
    fn()
    times = []
    for i in range(runs):
        if before:
            before(i)
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return {
        "p50_ms": round(statistics.median(times), 1),
        "p95_ms": percentile(times, 0.95),
        "max_ms": round(max(times), 1),
        "runs": runs,
    }


def _arrivals(conn: Any, tz: ZoneInfo, stations: int, n: int, tag: str) -> Callable[[int], None]:
    """Return a function writing ``n`` live screenings stamped now through the product's writer (``db.write_batch``)."""
    from station.centre import db
    from station.centre.parse import EventRow

    counter = iter(range(1, 1 << 40))
    # Each station goes on from its last number (no false gap); the numbers are kept in the stations' rows.
    next_seq = {str(station): int(seq or 0) + 1 for station, seq in conn.execute("SELECT station, max_seq FROM stations").fetchall()}
    compact = getattr(db, "compact_seq_runs", None)  # what the writers do every few seconds (absent before the runs)

    def arrive(_i: int) -> None:
        now = time.time()
        rows = []
        for _ in range(n):
            k = next(counter)
            st = k % stations
            seq = next_seq.get(f"st-{st}", 1)
            next_seq[f"st-{st}"] = seq + 1
            rows.append(
                EventRow(
                    msg_id=f"{tag}{k}",
                    site=f"site-{st // 10}",
                    station=f"st-{st}",
                    ts=now - 0.5,
                    session=2,
                    seq=seq,
                    kind="screening",
                    event_id=f"{tag}e{k}",
                    decision="pass",
                    reason=None,
                    temperature_c=36.5,
                    alarm=False,
                    code_colour="green",
                    decision_source="code",
                    detail=None,
                    dropped=None,
                    clock_synced=True,
                    trace_ref=None,
                    trace_key=None,
                )
            )
        db.write_batch(conn, rows, [])
        if compact is not None:
            compact(conn)

    return arrive


def measure(conn: Any, tz: ZoneInfo, *, stations: int, runs: int, now: dt.datetime) -> dict[str, Any]:
    """Time the product's query functions (see the module docstring); return p50/p95 per query."""
    from bench.centre_screen import _tree
    from station.centre import db, reports, screen, tracing
    from station.centre.tree import Tree, parse_tree

    conn.commit()
    conn.autocommit = True
    screen.prepare_session(conn)  # as the screen's pool does
    today = now.astimezone(tz).date()
    yesterday, week_ago = today - dt.timedelta(days=1), today - dt.timedelta(days=7)
    text = _tree(stations)
    if screen.load_tree_text(conn)[0] == 0:
        screen.save_tree(conn, 0, text, "bench", "admin", "tree.load", "")
    db.add_user(conn, "bench-tracer", "tracer", "x")
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    first = screen.sync_hourly(conn, [week_ago, today], tz, min_interval_s=0)
    out["dashboard_first_fill_of_two_days"] = {"ms": round((time.perf_counter() - t0) * 1000, 1), "days": first.days}
    arrive = _arrivals(conn, tz, stations, 500, f"live{int(time.time())}-")
    body: dict[str, Any] = {}

    def request(sync_in_request: bool) -> None:
        """Do what the page's /api/dashboard does (page.py _dashboard) on a cache miss of both days."""
        _version, tree_text = screen.load_tree_text(conn)
        tree = parse_tree(tree_text)
        assert isinstance(tree, Tree)
        cache = screen.DayCache(sync_in_request=sync_in_request)
        if sync_in_request:  # the roll-up brought up to date in the request, whatever another replica did lately
            screen.sync_hourly(conn, [today], tz, min_interval_s=0)
        rows = cache.get(conn, today, today, tz)
        before = cache.get(conn, week_ago, today, tz)
        known = screen.known_stations(conn)
        body.update(screen.dashboard(tree, rows, before, known, "", now.astimezone(tz).hour))

    # As `station centre run` serves it: a RollupKeeper thread syncs every 4 s, a request only reads.
    out["dashboard"] = _timed(lambda: request(False), runs, arrive)
    out["dashboard"]["screened_today"] = body["totals"]["screened"]
    # The keeper's sync after 500 arrivals (once per 4 s across replicas; not on a request's path).
    out["rollup_sync"] = _timed(lambda: screen.sync_hourly(conn, [today], tz, min_interval_s=0), runs, arrive)
    # Without a keeper: the sync in the request (DayCache(sync_in_request=True), as tests and other uses run it).
    out["dashboard_sync_in_request"] = _timed(lambda: request(True), runs, arrive)
    since = now - dt.timedelta(hours=48)
    listed: list[Any] = []
    out["alarm_queue"] = _timed(lambda: listed.__setitem__(slice(None), screen.alarms(conn, since)), runs)
    out["alarm_queue"]["listed"] = len(listed)
    rng = random.Random(7)
    refs = [format(rng.randrange(HOLDERS), "032x") for _ in range(runs + 1)]
    found: list[int] = []
    trace_refs = iter(refs)

    def trace() -> None:
        rows = tracing.where_seen(conn, "bench-tracer", "bench: a 30-day trace", [next(trace_refs)], days=30, now=now)
        found.append(len(rows))

    out["trace_30_days"] = _timed(trace, runs)
    out["trace_30_days"]["rows_median"] = statistics.median(found)
    y0, y1 = db.day_bounds(yesterday, tz)
    fevers: list[int] = []
    out["fever_passages_day"] = _timed(
        lambda: fevers.append(len(tracing.fever_passages(conn, "bench-tracer", "bench: fevers at a gate", "site-3", "st-31", y0, y1))),
        runs,
    )
    out["fever_passages_day"]["rows"] = fevers[-1]
    report_runs = max(3, runs // 4)
    rep: dict[str, Any] = {}
    out["report_day"] = _timed(lambda: rep.update(db.report(conn, yesterday, tz)), report_runs)
    out["report_day"] |= {"screened": rep["screened"], "missing_events": rep["missing_events"], "messages": rep["messages"]}
    period: dict[str, Any] = {}
    out["period_report_day"] = _timed(lambda: period.update(reports.period_report(conn, yesterday, 1, tz)), report_runs)
    out["period_report_day"]["screened"] = period["totals"]["screened"]
    out["period_report_week"] = _timed(
        lambda: period.update(reports.period_report(conn, today - dt.timedelta(days=7), 7, tz)), max(3, report_runs // 2)
    )
    out["period_report_week"]["screened"] = period["totals"]["screened"]
    missing: list[Any] = []
    out["missing_by_station"] = _timed(lambda: missing.__setitem__(slice(None), db.missing_by_station(conn)), report_runs)
    out["missing_by_station"]["missing_events"] = sum(int(m["missing_events"]) for m in missing)
    out["forecast"] = _timed(lambda: reports.forecast_report(conn, "site-3", "st-31", today, tz), report_runs)
    return out


def main(argv: list[str] | None = None) -> None:
    """Fill (or reuse) the store, time the queries, print or write the results."""
    ap = argparse.ArgumentParser(prog="python -m bench.centre_queries", description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=20_000_000, help="rows to store (alarm copies included)")
    ap.add_argument("--days", type=int, default=31, help="day partitions filled, ending today")
    ap.add_argument("--stations", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=20, help="timed runs per query (reports: a quarter of it, at least 3)")
    ap.add_argument("--keep", type=Path, help="keep the cluster here and reuse its fill on the next run")
    ap.add_argument("--fill-only", action="store_true", help="fill (or upgrade) the store and stop")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    args = ap.parse_args(argv)

    import psycopg

    from station.centre import db, screen, tracing

    def log(msg: str) -> None:
        print(f"[{dt.datetime.now(UTC):%H:%M:%S}] {msg}", flush=True, file=__import__("sys").stderr)

    server = _server(args.keep)
    out: dict[str, Any] = {"events_asked": args.events, "days": args.days, "stations": args.stations}
    out["load_average_before"] = os.getloadavg()
    try:
        server.start(timeout=120)
        with psycopg.connect(server.dsn, autocommit=True) as admin:
            admin.execute("ALTER SYSTEM SET max_wal_size = '8GB'")
            admin.execute("SELECT pg_reload_conf()")
            exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = 'bench'").fetchone()
        url = server.url("bench") if exists else server.create_database("bench")
        now = dt.datetime.now(UTC)
        with psycopg.connect(url) as conn:
            t0 = time.perf_counter()
            tz, _secret = screen.ensure_screen_schema(conn)  # on a kept store: the product's upgrade on start
            tracing.ensure_tracing_schema(conn)
            out["schema_on_start_s"] = round(time.perf_counter() - t0, 1)
            filled = conn.execute("SELECT value FROM centre_meta WHERE key = 'bench_filled_at'").fetchone()
            if filled is None:
                log(f"filling {args.events} events over {args.days} days")
                out["fill"] = fill(conn, tz, events=args.events, days=args.days, stations=args.stations, now=now, log=log)
                conn.execute("INSERT INTO centre_meta (key, value) VALUES ('bench_filled_at', %s)", (now.isoformat(),))
                conn.commit()
                out["fill"]["rows_per_s"] = None
            else:
                now = dt.datetime.fromisoformat(str(filled[0]))  # the fill's "now": its today and its 30 days
                out["filled_at"] = now.isoformat()
            rows = conn.execute("SELECT count(*) FROM events").fetchone()
            out["rows"] = int(rows[0]) if rows else 0
            if "fill" in out:
                out["fill"]["rows_per_s"] = round(out["rows"] / out["fill"]["fill_s"])
            size = conn.execute("SELECT pg_database_size(current_database())").fetchone()
            out["database_bytes"] = int(size[0]) if size else 0
            partitions = len(db.existing_partitions(conn))
            out["partitions"] = partitions
            conn.commit()
            if not args.fill_only:
                log("measuring")
                out["load_average_at_measure"] = os.getloadavg()
                out["queries"] = measure(conn, tz, stations=args.stations, runs=args.runs, now=now)
        out["load_average_after"] = os.getloadavg()
    finally:
        if args.keep is None:
            server.remove()
        else:
            server.stop()
    text = json.dumps(out, indent=2, default=str)
    if args.out:
        args.out.write_text(text + "\n")
    if args.json:
        print(text)
    else:
        for key, value in out.items():
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()
