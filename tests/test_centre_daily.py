"""The screen's per-station day counters (``centre_daily``) equal a count over the events, whatever the delivery did.

Real station stores make screenings and alarm copies at several hours; two real ``Ingestor`` writers
(two replicas) store them on a real PostgreSQL at once, with redeliveries and a lost screening copy
(its alarm copy stands for the decision); syncs run in between, then an outage's backlog is replayed
into the hours it belongs to. After each step the counters read by the screen (``day_rows``: totals
by decision and colour, screened and fevers per hour) must equal ``count(*)`` over ``events``.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest

from station.centre import db, screen
from station.centre.ingest import Ingestor
from tests.support.centre_messages import deliveries, station_outbox
from tests.support.postgres import pg_server, pg_url
from tests.support.waiting import wait_until

__all__ = ["pg_server", "pg_url"]

# The definition, written independently of the roll-up: every screening, and every alarm copy whose
# screening copy never arrived, on the local hour of its time.
COUNTED = """
SELECT site, station, (ts AT TIME ZONE %(tz)s)::date, extract(hour FROM ts AT TIME ZONE %(tz)s)::int, decision, code_colour, count(*)
FROM events e
WHERE kind = 'screening'
   OR (kind = 'alarm' AND NOT EXISTS (
        SELECT 1 FROM events s WHERE s.kind = 'screening' AND s.site = e.site AND s.station = e.station AND s.event_id = e.event_id))
GROUP BY 1, 2, 3, 4, 5, 6
"""


def _expected(conn: psycopg.Connection[Any], tz: ZoneInfo) -> tuple[dict[Any, Counter[str]], dict[Any, list[int]]]:
    totals: dict[Any, Counter[str]] = {}
    hours: dict[Any, list[int]] = {}
    for site, station, day, hour, decision, colour, n in conn.execute(COUNTED, {"tz": tz.key}).fetchall():
        key = (day, site, station)
        c = totals.setdefault(key, Counter())
        c["screened"] += n
        c[decision] += n
        c[colour] += n
        hours.setdefault(key, [0] * 24)[hour] += n
    return totals, hours


def _check(conn: psycopg.Connection[Any], tz: ZoneInfo, days: list[dt.date]) -> int:
    """Assert the screen's counters equal the count over the events; return the screenings counted."""
    screen.sync_hourly(conn, days, tz, min_interval_s=0)
    totals, hours = _expected(conn, tz)
    got_totals: dict[Any, Counter[str]] = {}
    got_hours: dict[Any, list[int]] = {}
    for day in days:
        rows = screen.day_rows(conn, day, tz)
        for (site, station), counts in screen.per_station(rows).items():
            if counts["screened"]:
                got_totals[(day, site, station)] = Counter({k: v for k, v in counts.items() if v and k != "fevers"})
                assert counts["fevers"] == counts["deny_fever"]
        for (site, station), (screened, fevers) in rows.station_hours().items():
            if any(screened):
                got_hours[(day, site, station)] = screened
                assert sum(fevers) == got_totals[(day, site, station)]["deny_fever"]
    assert got_totals == totals
    assert got_hours == hours
    return sum(c["screened"] for c in totals.values())


@pytest.mark.slow
def test_the_day_counters_equal_the_events_after_duplicates_two_replicas_and_a_replay(pg_url: str, tmp_path: Path) -> None:
    now = time.time()
    rng = random.Random(3)
    messages: list[tuple[str, bytes]] = []
    decisions = 0
    for k, hours_ago in enumerate((0, 1, 3)):
        for station in ("st-01", "st-02"):
            made = station_outbox(tmp_path / f"{station}-{k}.db", 12, alarm_every=4, station=station, ts=now - hours_ago * 3600)
            decisions += 12
            if k == 1 and station == "st-01":  # one alarm's screening copy lost: the alarm copy stands for it
                alarm_seq = next(json.loads(p)["seq"] for t, p in made if t.endswith("/alarm"))
                made = [(t, p) for t, p in made if not (t.endswith("/screening") and json.loads(p)["seq"] == alarm_seq)]
            messages += made
    rng.shuffle(messages)
    held, first = messages[:20], messages[20:]  # held back by an outage, replayed at the end
    a, b = Ingestor(pg_url, lambda d: True), Ingestor(pg_url, lambda d: True)
    a.open()
    b.open()
    try:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            tz, _ = screen.ensure_screen_schema(conn)
            days = sorted({db.day_of(now - h * 3600, tz) for h in (0, 1, 3)})
            assert _check(conn, tz, days) == 0, "the days are filled before anything arrived"
            half = len(first) // 2
            parts = [first[: half + 10], first[half - 10 :]]  # 20 messages reach both replicas

            def play(writer: Ingestor, part: list[tuple[str, bytes]], base: int) -> None:
                for i in range(0, len(part), 5):
                    writer.process(deliveries(part[i : i + 5], start_mid=base + i))

            threads = [
                threading.Thread(target=play, args=(w, p, 1000 * (n + 1))) for n, (w, p) in enumerate(zip((a, b), parts, strict=True))
            ]
            for t in threads:
                t.start()
            screen.sync_hourly(conn, days, tz, min_interval_s=0)  # a screen's sync while both replicas write
            for t in threads:
                t.join(60)
            _check(conn, tz, days)
            a.process(deliveries(held + held[:6], start_mid=50_000))  # the backlog, part of it twice
            assert _check(conn, tz, days) == decisions, "every decision once: screenings and the lone alarm copy"
            b.process(deliveries(messages, start_mid=60_000))  # everything again: nothing changes
            assert _check(conn, tz, days) == decisions
    finally:
        a.stop()
        b.stop()


def test_a_rollup_keeper_keeps_the_screen_current_and_a_read_only_cache_fills_a_new_day_once(pg_url: str, tmp_path: Path) -> None:
    writer = Ingestor(pg_url, lambda d: True)
    writer.open()
    keeper: screen.RollupKeeper | None = None
    try:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            tz, _ = screen.ensure_screen_schema(conn)
            today = dt.datetime.now(tz).date()
            cache = screen.DayCache(ttl_s=0.0, sync_in_request=False)
            writer.process(deliveries(station_outbox(tmp_path / "a.db", 5)))
            first = cache.get(conn, today, today, tz)  # never filled: filled by this read, once
            assert sum(c["screened"] for c in first.totals.values()) == 5 and cache.last_sync.days == 1
            writer.process(deliveries(station_outbox(tmp_path / "b.db", 3, station="st-02"), start_mid=100))
            later = cache.get(conn, today, today, tz)
            assert sum(c["screened"] for c in later.totals.values()) == 5, "a read-only cache does not sync: the keeper does"
            keeper = screen.RollupKeeper(pg_url, tz, interval_s=0.1)
            keeper.start()
            assert wait_until(
                lambda: sum(c["screened"] for c in cache.get(conn, today, today, tz).totals.values()) == 8, 20, "the keeper's sync"
            )
            assert keeper.errors == 0 and keeper.syncs >= 1
    finally:
        if keeper is not None:
            keeper.stop()
        writer.stop()
