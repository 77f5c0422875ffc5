"""The wait-time chart: the station's stage time reaches the centre's ``wait_ms`` and PostgreSQL's percentiles per hour.

A real station store makes the messages (tests/support/centre_messages.py), the centre's parser and
batch writer store them in a real PostgreSQL; the chart's median and p95 per hour equal numpy's
linear-interpolation percentiles (``percentile_cont``) of what was stored, for a node and the root.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest

from station.centre import db, screen
from station.centre.parse import EventRow, parse_message
from station.centre.tree import parse_tree
from station.centre.wait import WaitCache, node_members, wait_by_hour
from tests.support.centre_messages import station_outbox
from tests.support.centre_screen import TREE, UTC, screening
from tests.support.postgres import pg_server, pg_url

__all__ = ["pg_server", "pg_url"]


def test_the_stations_total_stage_time_is_stored_as_the_wait(tmp_path: Path) -> None:
    topic, body = station_outbox(tmp_path / "s.db", 1)[0]
    row = parse_message("checkpoint/v1", topic, body)
    assert isinstance(row, EventRow) and row.wait_ms == 400.0, "make_event's latency_ms.total"
    record = json.loads(body)
    for hostile in ({"total": -5}, {"total": "fast"}, {"total": 10.0**12}, {"total": True}, "400", None):
        record["event"]["latency_ms"] = hostile
        again = parse_message("checkpoint/v1", topic, json.dumps(record).encode())
        assert isinstance(again, EventRow) and again.wait_ms is None, f"{hostile!r}: the row is kept, the bad figure is not"


def _rows(site: str, station: str, day: dt.date, hour: int, waits: list[float | None], seq0: int) -> list[EventRow]:
    base = dt.datetime.combine(day, dt.time(hour), UTC).timestamp()
    out = []
    for i, w in enumerate(waits):
        row = screening(site, station, base + 10 * i + 1, "pass", "green", seq=seq0 + i)
        out.append(dataclasses.replace(row, wait_ms=w))
    return out


@pytest.mark.slow
def test_median_and_p95_per_hour_come_from_postgresql_for_the_node(pg_url: str) -> None:
    day = dt.datetime.now(UTC).date()
    rng = np.random.default_rng(7)
    gate9 = [float(v) for v in rng.gamma(4.0, 300.0, 40).round(1)]
    gate10 = [float(v) for v in rng.gamma(4.0, 500.0, 25).round(1)]
    market9 = [float(v) for v in rng.gamma(3.0, 900.0, 30).round(1)]
    rows = (
        _rows("gate-a", "st-01", day, 9, [*gate9[:20], None], 1)  # a record without the figure is not a wait of 0
        + _rows("gate-a", "st-02", day, 9, gate9[20:], 100)
        + _rows("gate-a", "st-01", day, 10, gate10, 200)
        + _rows("market", "m1", day, 9, market9, 1)
    )
    alarm_copy = rows[0]
    rows.append(dataclasses.replace(alarm_copy, msg_id="copy-1", kind="alarm", wait_ms=99999.0))
    with db.connect(pg_url) as conn:
        db.ensure_schema(conn)
        db.create_partitions(conn, {day}, UTC)
        db.write_batch(conn, rows, [])
        conn.commit()
    tree = parse_tree(TREE)
    assert not isinstance(tree, Exception)
    with db.connect(pg_url, autocommit=True) as conn:
        stations = screen.known_stations(conn)
        gate = node_members(tree, stations, "east/g1/gate")
        assert gate == {("gate-a", "st-01"), ("gate-a", "st-02")}
        assert node_members(tree, stations, "no/such/node") is None
        body = wait_by_hour(conn, day, UTC, gate)
        root = wait_by_hour(conn, day, UTC, None)
        empty = wait_by_hour(conn, day, UTC, set())
    assert body["screenings"][9] == 40 and body["screenings"][10] == 25 and sum(body["screenings"]) == 65
    assert body["median_ms"][9] == pytest.approx(np.percentile(gate9, 50), abs=0.05)
    assert body["p95_ms"][9] == pytest.approx(np.percentile(gate9, 95), abs=0.05)
    assert body["median_ms"][10] == pytest.approx(np.percentile(gate10, 50), abs=0.05)
    assert body["p95_ms"][10] == pytest.approx(np.percentile(gate10, 95), abs=0.05)
    assert body["median_ms"][8] is None and body["p95_ms"][11] is None, "an hour without screenings is a gap, not 0"
    assert root["screenings"][9] == 70, "the root: both checkpoints; the alarm copy is the same person, not counted"
    assert root["p95_ms"][9] == pytest.approx(np.percentile(gate9 + market9, 95), abs=0.05)
    assert sum(empty["screenings"]) == 0 and empty["median_ms"] == [None] * 24
    assert "time at the gate" in body["measure"]


def test_the_cache_computes_once_per_period() -> None:
    now = [0.0]
    cache = WaitCache(ttl_s=10, clock=lambda: now[0])
    calls: list[int] = []
    key = ("east", dt.date(2026, 12, 4))
    assert cache.get(key, lambda: calls.append(1) or {"n": len(calls)}) == {"n": 1}
    assert cache.get(key, lambda: calls.append(1) or {"n": len(calls)}) == {"n": 1}
    now[0] = 11
    assert cache.get(key, lambda: calls.append(1) or {"n": len(calls)}) == {"n": 2}
