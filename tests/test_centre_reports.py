"""Centre reports and the flow forecast against a real PostgreSQL.

Report messages come from a real station store (screenings with a fever alarm, a vehicle lane's
plate events, visits and a registration, an outbox bound that dropped rows), ingested by the real
``Ingestor``. The forecast's history is written through the centre's own batch writer.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sqlite3
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import psycopg
from click.testing import CliRunner

from sim.flow_history import synthetic_history
from station.centre import db
from station.centre import reports as rep
from station.centre.cli import centre
from station.centre.ingest import Ingestor
from station.centre.parse import EventRow
from station.store import visits
from station.store.events import OutboxBounds, SqliteEventStore
from tests.support.centre_messages import deliveries
from tests.support.events import make_event
from tests.support.postgres import pg_server, pg_url

__all__ = ["pg_server", "pg_url"]

UTC = ZoneInfo("UTC")


def _vehicle_station(path: Path, ts: float) -> list[tuple[str, bytes]]:
    """A vehicle lane: 6 screenings (one fever), 3 plate events, 3 visits (2 outsiders, one flagged), 1 registration."""
    store = SqliteEventStore(path, station_id="lane-v", site="gate-b")
    store.begin_session()
    ids = []
    for i in range(6):
        event = dataclasses.replace(make_event(i, alarm=i == 2, ts=ts + i), station_id="lane-v", site="gate-b")
        store.record(event)
        ids.append(event.event_id)
    for n, kind in enumerate(("outsider_vehicle", "resident_vehicle", "outsider_vehicle")):
        store.record_vehicle({"vehicle_id": f"veh-{n}", "ts": ts + 10 + n, "type": kind, "plate": f"浙A1234{n}"})
        occupants = [
            {"event_id": ids[n * 2], "decision": "pass"},
            {"event_id": ids[n * 2 + 1], "decision": "deny_fever" if n == 1 else "pass"},
        ]
        visits.record_visit(
            store,
            {
                "visit_id": f"visit-{n}",
                "ts": ts + 10 + n,
                "closed_ts": ts + 20 + n,
                "kind": kind,
                "plate": f"浙A1234{n}",
                "occupants": occupants,
                "summary": {"occupants": 2, "fever": int(n == 1), "denied": int(n == 1)},
            },
        )
    visits.record_registration(
        store,
        {
            "registration_id": "reg-1",
            "ts": ts + 30,
            "plate": "浙A12340",
            "reason": "delivery",
            "destination": "3号楼",
            "phone_hash": "ab" * 32,
            "phone_last4": "8000",
            "operator": "Zhao Min",
        },
    )
    store.close()
    with sqlite3.connect(path) as conn:
        return [(t, bytes(p)) for t, p in conn.execute("SELECT topic, payload FROM outbox ORDER BY id").fetchall()]


def _gappy_station(path: Path, ts: float) -> list[tuple[str, bytes]]:
    """A screening lane whose outbox bound dropped its 4 oldest of 10 screenings."""
    store = SqliteEventStore(path, station_id="st-01", site="gate-a")
    store.begin_session()
    for i in range(10):
        store.record(make_event(i, ts=ts + i))
    store.outbox_bounds = OutboxBounds(max_rows=6, max_bytes=10**9, max_age_s=10**9)
    store.outbox_enforce_bounds()
    store.close()
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT topic, payload FROM outbox WHERE dropped_at IS NULL ORDER BY id").fetchall()
    return [(t, bytes(p)) for t, p in rows]


def test_the_daily_and_weekly_reports_count_decisions_fevers_vehicles_registrations_and_gaps(pg_url: str, tmp_path: Path) -> None:
    now = time.time()
    messages = _vehicle_station(tmp_path / "v.db", now - 60) + _gappy_station(tmp_path / "s.db", now - 50)
    writer = Ingestor(pg_url, lambda d: True)
    writer.open()
    assert writer.process(deliveries(messages)) is not None
    assert writer.dropped == {}, "visits and registrations are kinds the centre takes"
    writer.stop()
    today = dt.datetime.fromtimestamp(now, UTC).date()
    with psycopg.connect(pg_url) as conn:
        day = rep.period_report(conn, today, 1, UTC)
        week = rep.period_report(conn, today - dt.timedelta(days=6), 7, UTC)
        contract = db.report(conn, today, UTC)
    by = {(s["site"], s["station"]): s for s in day["stations"]}
    v, g = by[("gate-b", "lane-v")], by[("gate-a", "st-01")]
    assert (v["screened"], v["pass"], v["deny_fever"], v["fevers"], v["alarms"]) == (6, 5, 1, 1, 1)
    assert (v["outsider_vehicles"], v["flagged_visits"], v["registrations"], v["missing_events"]) == (2, 1, 1, 0)
    assert (g["screened"], g["missing_events"], g["outsider_vehicles"]) == (6, 4, 0)
    assert day["totals"]["screened"] == 12 and day["totals"]["missing_events"] == 4
    assert week["totals"] == day["totals"] and (week["from"], week["to"]) == ((today - dt.timedelta(days=6)).isoformat(), today.isoformat())
    assert contract["screened"] == 12 and contract["missing_events"] == 4, "visits and registrations are not counted as missing"
    assert day["offline_tracked"] is False and day["totals"]["offline_over_10min"] == 0
    csv_text = rep.report_csv(day)
    assert csv_text.splitlines()[0].startswith("from,to,level,where,screened") and "station,gate-b/lane-v,6,5," in csv_text


def test_the_report_cli_gives_a_week_as_json_and_csv_and_the_day_contract_is_unchanged(pg_url: str, tmp_path: Path) -> None:
    now = time.time()
    writer = Ingestor(pg_url, lambda d: True)
    writer.open()
    writer.process(deliveries(_vehicle_station(tmp_path / "v.db", now - 60)))
    writer.stop()
    today = dt.datetime.fromtimestamp(now, UTC).date().isoformat()
    runner = CliRunner()
    week = runner.invoke(centre, ["reports", "--db", pg_url, "--week", today, "--json"])
    assert week.exit_code == 0, week.output
    body = json.loads(week.stdout)
    assert body["days"] == 7 and body["totals"]["registrations"] == 1
    as_csv = runner.invoke(centre, ["reports", "--db", pg_url, "--day", today, "--csv"])
    assert as_csv.exit_code == 0 and as_csv.stdout.count("\n") == 3  # header, district, one station
    both = runner.invoke(centre, ["reports", "--db", pg_url, "--day", today, "--week", today])
    assert both.exit_code == 2
    day = runner.invoke(centre, ["report", "--db", pg_url, "--day", today, "--json"])
    got = json.loads(day.stdout)
    assert {"day", "stations", "screened", "by_decision", "missing_events"} <= set(got) and got["screened"] == 6


def _history_rows(history: dict[dt.date, list[int]]) -> list[EventRow]:
    rows = []
    seq = 0
    for day, hours in history.items():
        for hour, n in enumerate(hours):
            t0 = dt.datetime.combine(day, dt.time(hour), tzinfo=UTC).timestamp()
            for k in range(n):
                seq += 1
                ts = t0 + (k + 0.5) * 3600.0 / n
                rows.append(EventRow(f"m{seq}", ts, "gate-a", "st-01", 1, seq, "screening", event_id=f"e{seq}", decision="pass"))
    return rows


def test_the_forecast_from_the_database_matches_the_model_and_beats_last_weeks_hours_on_held_out_days(pg_url: str) -> None:
    target = dt.date(2026, 11, 16)  # a Monday
    history = synthetic_history(target - dt.timedelta(weeks=5), 35, seed=11)
    with psycopg.connect(pg_url) as conn:
        db.ensure_schema(conn)
        db.create_partitions(conn, history, UTC)
        rows = _history_rows(history)
        db.write_batch(conn, rows, [])
        body = rep.forecast_report(conn, "gate-a", "st-01", target, UTC, weeks=4)
    assert body["hourly"] == rep.forecast_day(history, target, 4)
    assert body["history_days"] == 35 and 6 <= body["peak_hour"] <= 9
    held = body["held_out"]
    assert len(held["days"]) == 7
    model, naive = held["weekday_hour_mean_trend"], held["seasonal_naive"]
    assert model["mae"] < naive["mae"] and model["mape_pct"] < naive["mape_pct"]
    assert model["mape_pct"] < 35


def test_the_forecast_follows_a_trend_and_knows_weekends_without_a_database() -> None:
    start = dt.date(2026, 9, 7)
    growing = synthetic_history(start, 42, seed=3, growth_per_week=0.10)
    monday, saturday = dt.date(2026, 10, 19), dt.date(2026, 10, 17)
    plain = sum(rep.forecast_day({d: v for d, v in growing.items() if d < monday}, monday, weeks=4))
    flat_mean = sum(sum(growing[monday - dt.timedelta(weeks=w)]) for w in range(1, 5)) / 4
    assert plain > flat_mean * 1.05, "a growing flow is forecast above the four weeks' mean"
    weekend = sum(rep.forecast_day({d: v for d, v in growing.items() if d < saturday}, saturday, weeks=4))
    assert weekend < 0.8 * plain
    assert rep.forecast_day({}, monday) == [0.0] * 24
    assert rep.errors([[0] * 24], [[0.0] * 24]) == {"mae": 0.0, "mape_pct": None, "hours": 24}


def test_the_reports_roll_up_along_the_saved_district_tree_and_keep_unplaced_stations(pg_url: str, tmp_path: Path) -> None:
    now = time.time()
    writer = Ingestor(pg_url, lambda d: True)
    writer.open()
    writer.process(deliveries(_vehicle_station(tmp_path / "v.db", now - 60) + _gappy_station(tmp_path / "s.db", now - 50)))
    writer.stop()
    tree = tmp_path / "tree.toml"
    tree.write_text(
        '[district]\nname = "乐清市"\n[towns.east]\nname = "城东街道"\n[towns.east.grids.g01]\nname = "网格一"\n'
        '[towns.east.grids.g01.checkpoints.gate]\nname = "东门卡口"\nstations = ["gate-b/lane-v"]\n'
    )
    runner = CliRunner()
    loaded = runner.invoke(centre, ["tree", "load", str(tree), "--db", pg_url])
    assert loaded.exit_code == 0, loaded.output
    today = dt.datetime.fromtimestamp(now, UTC).date().isoformat()
    out = runner.invoke(centre, ["reports", "--db", pg_url, "--week", today, "--json"])
    assert out.exit_code == 0, out.output
    body = json.loads(out.stdout)
    root = body["tree"]
    assert body["tree_version"] == 1 and root["totals"]["screened"] == 12
    east = next(c for c in root["children"] if c["key"] == "east")
    loose = next(c for c in root["children"] if c["key"] == "unassigned")
    assert east["totals"]["registrations"] == 1 and east["totals"]["screened"] == 6
    assert loose["totals"]["missing_events"] == 4 and [s["station"] for s in loose["stations"]] == ["st-01"]
    rows = runner.invoke(centre, ["reports", "--db", pg_url, "--week", today, "--csv"]).stdout.splitlines()
    assert [r.split(",")[2:4] for r in rows[1:6]] == [
        ["district", ""],
        ["town", "east"],
        ["grid", "east/g01"],
        ["checkpoint", "east/g01/gate"],
        ["unassigned", "unassigned"],
    ]
