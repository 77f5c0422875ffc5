"""The fleet view: stations' retained status and state on a real mosquitto, stored in a real PostgreSQL, offline spells counted."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import paho.mqtt.client as mqtt
import psycopg
import pytest
from click.testing import CliRunner
from paho.mqtt.enums import CallbackAPIVersion

from station.centre import fleet as fl
from station.centre import reports as rep
from station.centre.cli import centre
from station.centre.db import ensure_schema
from station.config import load_config
from station.link.fleet_state import FleetState, write_doctor_result
from tests.support.broker import Broker
from tests.support.postgres import pg_server, pg_url
from tests.support.waiting import wait_until

__all__ = ["pg_server", "pg_url"]

ROOT = Path(__file__).resolve().parents[1]
P = "checkpoint/v1"


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        (f"{P}/a/b/status", b"\xff\xfe", "not_utf8"),
        (f"{P}/a/b/status", b"[]", "not_object"),
        (f"{P}/a/b/status", b'{"state": "dancing"}', "bad_status"),
        (f"{P}/a/b/state/fleet", b'{"station_id": "other"}', "sender_mismatch"),
        (f"{P}/a/b/state/secrets", b"{}", "bad_topic"),
        (f"{P}/a/b c/status", b"{}", "bad_topic"),
        (f"{P}/a/b/state/fleet", b"{" * 20000, "too_large"),
        (f"{P}/a/b/status", b"", "cleared"),
        ("elsewhere/a/b/status", b"{}", "not_ours"),
        (None, b"{}", "bad_input"),
    ],
)
def test_hostile_state_messages_are_dropped_with_their_reason(topic: object, payload: bytes, reason: str) -> None:
    assert fl.parse_state(P, topic, payload, 1.0) == reason


def test_only_typed_fields_are_kept_from_a_fleet_state() -> None:
    body = {
        "models": {"ok-model": "0123456789ab", "<script>": "0123456789ab", "bad": "zz"},
        "config_hash": "DROP TABLE x;--",
        "district_key_id": "0123456789abcdef",
        "disk_used_pct": 1e308,
        "doctor": {"exit_code": 2, "failed": ["camera", "<b>x</b>", 5], "ts": 10.0},
        "clock_synced": "yes",
    }
    got = fl.parse_state(P, f"{P}/a/b/state/fleet", json.dumps(body).encode(), 5.0)
    assert isinstance(got, fl.StateUpdate)
    v = got.values
    assert v["models"] == {"ok-model": "0123456789ab"} and v["config_hash"] is None and v["district_key_id"] == "0123456789abcdef"
    assert (v["disk_used_pct"], v["doctor_exit"], v["doctor_failed"], v["clock_synced"]) == (None, 2, ["camera"], None)


def _station(broker: Broker, site: str, station: str) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{site}-{station}")
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    return client


@pytest.mark.slow
def test_retained_status_and_fleet_state_reach_the_database_and_offline_spells_are_counted(pg_url: str, tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker")
    broker.start()
    data = tmp_path / "data"
    data.mkdir()
    write_doctor_result(data, 2, [{"name": "camera", "level": "fail"}, {"name": "clock", "level": "warn"}])
    cfg = load_config(ROOT / "config" / "station.toml")
    body = FleetState(
        cfg=cfg, data_dir=data, models_dir=None, clock_synced=lambda: False, district_key_id=lambda: None, version="1.2.3"
    ).state()
    stations = [_station(broker, "gate-a", "st-01"), _station(broker, "gate-a", "st-02")]
    for client, name, trust in ((stations[0], "st-01", 3), (stations[1], "st-02", 4)):
        base = f"{P}/gate-a/{name}"
        client.publish(
            f"{base}/status", json.dumps({"state": "online", "session": 7, "version": "1.2.3"}), qos=1, retain=True
        ).wait_for_publish(5)
        state = {**body, "trust_list_version": trust, "station_id": name, "site": "gate-a"}
        client.publish(f"{base}/state/fleet", json.dumps(state), qos=1, retain=True).wait_for_publish(5)
        client.publish(
            f"{base}/state/outbox", json.dumps({"pending": 12, "oldest_age_s": 40, "mqtt": "connected"}), qos=1, retain=True
        ).wait_for_publish(5)
    with psycopg.connect(pg_url) as conn:
        ensure_schema(conn)
        fl.ensure_fleet_schema(conn)
    writer = fl.FleetWriter(pg_url, P, interval_s=0.1)
    sub = fl.FleetSubscriber(broker.url, writer, prefix=P)  # connects after the stations: the retained messages come at once
    writer.start()
    sub.start()
    try:

        def stored() -> dict[str, Any]:
            with psycopg.connect(pg_url) as conn:
                return fl.fleet_view(conn)

        wait_until(
            lambda: stored()["summary"]["stations"] == 2 and all(r["outbox_pending"] == 12 for r in stored()["stations"]),
            10,
            "fleet stored",
        )
        stations[1].publish(
            f"{P}/gate-a/st-02/status", json.dumps({"state": "offline", "session": 7}), qos=1, retain=True
        ).wait_for_publish(5)
        wait_until(lambda: stored()["stations"][1]["state"] == "offline", 10, "offline stored")
    finally:
        sub.stop()
        writer.stop()
        for c in stations:
            c.loop_stop()
            c.disconnect()
        broker.stop()
    with psycopg.connect(pg_url) as conn:
        later = fl.fleet_view(conn, now=time.time() + 700)
        log_rows = conn.execute("SELECT station, state FROM station_status_log ORDER BY at, station").fetchall()
    one, two = later["stations"]
    assert (one["version"], one["trust_list_version"], one["trust_list_behind"], two["trust_list_behind"]) == ("1.2.3", 3, True, False)
    assert (one["doctor_exit"], one["doctor_failed"], one["doctor_warned"], one["doctor_ok"]) == (2, ["camera"], ["clock"], False)
    assert one["config_hash"] == body["config_hash"] and one["models"] == body["models"] and one["clock_synced"] is False
    assert (one["offline_over_10min"], two["offline_over_10min"]) == (False, True) and two["offline_s"] > 600
    assert later["summary"]["offline_over_10min"] == 1 and later["summary"]["doctor_failing"] == 2
    assert log_rows == [("st-01", "online"), ("st-02", "online"), ("st-02", "offline")]
    assert writer.stats()["dropped"] == {}


def test_the_report_counts_offline_spells_over_ten_minutes_and_the_fleet_cli_prints_json(pg_url: str) -> None:
    now = time.time()
    with psycopg.connect(pg_url) as conn:
        ensure_schema(conn)
        fl.ensure_fleet_schema(conn)
        updates = []
        for at, state in (
            (now - 7200, "online"),
            (now - 3600, "offline"),
            (now - 1800, "online"),
            (now - 1200, "offline"),
            (now - 1000, "online"),
        ):
            got = fl.parse_state(P, f"{P}/gate-a/st-01/status", json.dumps({"state": state, "session": 1}).encode(), at)
            assert isinstance(got, fl.StateUpdate)
            updates.append(got)
        late_will = fl.parse_state(P, f"{P}/gate-a/st-01/status", json.dumps({"state": "offline", "session": 0}).encode(), now - 900)
        assert isinstance(late_will, fl.StateUpdate)
        for u in [*updates, late_will]:  # one message at a time, as the broker delivers them
            fl.write_updates(conn, [u])
        today = dt.datetime.fromtimestamp(now - 3600, ZoneInfo("UTC")).date()
        body = rep.period_report(conn, today - dt.timedelta(days=1), 2, ZoneInfo("UTC"))
    assert body["offline_tracked"] is True
    assert body["totals"]["offline_over_10min"] == 1, "30 minutes offline counts, 200 s does not"
    out = CliRunner().invoke(centre, ["fleet", "--db", pg_url, "--json"])
    assert out.exit_code == 0, out.output
    fleet = json.loads(out.stdout)
    assert fleet["summary"]["online"] == 1 and fleet["stations"][0]["state"] == "online"
    text = CliRunner().invoke(centre, ["fleet", "--db", pg_url])
    assert text.exit_code == 0, text.output
    assert "0 missing events at 0 stations" in text.stdout and "gate-a/st-01: online" in text.stdout and " missing 0" in text.stdout
