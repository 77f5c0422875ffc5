"""Missing events from the writer's runs of received numbers agree with the scan over every event kept.

``station_gaps`` reads ``station_seq_runs`` and the writers' uncompacted ``station_seq_notes``;
``station_gaps_scan`` is the definition (a window over every event kept). Real station stores make
the messages, real ``Ingestor`` writers (two, as two replicas) store them on a real PostgreSQL with
redeliveries, losses, an out-of-order replay and compactions in between; the two views must agree row
for row, and the compacted runs must be maximal. A database made before the runs gets them on start.
"""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from station.centre import db
from station.centre.ingest import Ingestor
from tests.support.centre_messages import deliveries, station_outbox
from tests.support.postgres import pg_server, pg_url

__all__ = ["pg_server", "pg_url"]

GAPS = "SELECT site, station, session, first_missing, last_missing, missing, next_ts FROM {view} ORDER BY 1, 2, 4"
OVERLAPS = """
SELECT count(*) FROM station_seq_runs a JOIN station_seq_runs b
  ON a.site = b.site AND a.station = b.station AND a.first_seq < b.first_seq AND b.first_seq <= a.last_seq + 1
"""


def _writer(url: str) -> Ingestor:
    writer = Ingestor(url, lambda d: True)
    writer.open()
    return writer


def _gaps(conn: psycopg.Connection[Any], view: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in conn.execute(GAPS.format(view=view)).fetchall()]


def _district(tmp_path: Path, rng: random.Random) -> tuple[list[tuple[str, bytes]], int]:
    """Return messages of five stations (one with a wild clock), some numbers lost; and how many numbers were lost."""
    messages: list[tuple[str, bytes]] = []
    lost = 0
    for k in range(5):
        ts = time.time() + (400 * 86400 if k == 4 else 0)  # station 4's clock is a year ahead: events_misdated
        made = station_outbox(tmp_path / f"s{k}.db", 40, alarm_every=4, station=f"st-{k}", ts=ts)
        seqs = sorted({json.loads(p)["seq"] for _t, p in made})
        gone = set(rng.sample(seqs[1:-1], 6)) if k != 2 else set()  # st-2 loses nothing
        lost += len(gone)
        messages += [m for m in made if json.loads(m[1])["seq"] not in gone]
    return messages, lost


@pytest.mark.slow
def test_two_replicas_redeliveries_and_a_replay_give_the_gaps_of_the_scan_and_maximal_runs(pg_url: str, tmp_path: Path) -> None:
    rng = random.Random(11)
    messages, lost = _district(tmp_path, rng)
    held = rng.sample(range(len(messages)), 30)  # delivered only later, after an outage: a replay filling holes
    first = [m for i, m in enumerate(messages) if i not in held]
    rng.shuffle(first)
    a, b = _writer(pg_url), _writer(pg_url)
    try:
        # Both replicas get overlapping halves (a redelivery to the other replica), in batches of 7, at once.
        cut = len(first) // 2
        parts = [first[: cut + 15], first[cut - 15 :]]

        def play(writer: Ingestor, part: list[tuple[str, bytes]], seed: int) -> None:
            for i in range(0, len(part), 7):
                writer.process(deliveries(part[i : i + 7], start_mid=seed * 10_000 + i + 1))
                if i % 21 == 0:
                    writer.compact_seq_runs(force=True)  # compactions interleaved with the other replica's batches

        threads = [threading.Thread(target=play, args=(w, p, n)) for n, (w, p) in enumerate(zip((a, b), parts, strict=True))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        with psycopg.connect(pg_url) as conn:
            assert _gaps(conn, "station_gaps") == _gaps(conn, "station_gaps_scan"), "before the replay"
        replay = [messages[i] for i in held]
        rng.shuffle(replay)
        a.process(deliveries(replay + replay[:5], start_mid=90_000))  # and a redelivered part of it
        with psycopg.connect(pg_url) as conn:
            notes = conn.execute("SELECT count(*) FROM station_seq_notes").fetchone()
            assert notes is not None and notes[0] > 0, "read before any compaction: the notes count too"
            uncompacted = _gaps(conn, "station_gaps")
            assert uncompacted == _gaps(conn, "station_gaps_scan")
        b.compact_seq_runs(force=True)
        with psycopg.connect(pg_url) as conn:
            scan = _gaps(conn, "station_gaps_scan")
            assert _gaps(conn, "station_gaps") == scan == uncompacted
            assert sum(g[5] for g in scan) == lost and {g[1] for g in scan} == {"st-0", "st-1", "st-3", "st-4"}
            assert conn.execute("SELECT count(*) FROM station_seq_notes").fetchone() == (0,)
            assert conn.execute(OVERLAPS).fetchone() == (0,), "compacted runs neither overlap nor touch"
            runs = conn.execute("SELECT count(*) FROM station_seq_runs").fetchone()
            assert runs is not None and runs[0] == 5 + len(scan), "one run per station and one more after each gap"
            by_station = {r["station"]: r["missing_events"] for r in db.missing_by_station(conn)}
            assert by_station["st-2"] == 0 and sum(by_station.values()) == lost
            stored = conn.execute("SELECT count(*) FROM events").fetchone()
            misdated = conn.execute("SELECT count(*) FROM events_misdated").fetchone()
        assert stored is not None and misdated is not None and stored[0] + misdated[0] == len(messages), "each message once"
    finally:
        a.stop()
        b.stop()


@pytest.mark.slow
def test_a_database_made_before_the_runs_gets_them_from_its_events_on_start(pg_url: str, tmp_path: Path) -> None:
    rng = random.Random(5)
    messages, lost = _district(tmp_path, rng)
    writer = _writer(pg_url)
    try:
        writer.process(deliveries(messages))
    finally:
        writer.stop()
    with psycopg.connect(pg_url) as conn:  # as a schema-1 database was: no runs, no notes
        conn.execute("DROP VIEW station_missing, station_gaps")
        conn.execute("DROP TABLE station_seq_runs, station_seq_notes")
        conn.execute("UPDATE centre_meta SET value = '1' WHERE key = 'schema'")
        conn.commit()
        db.ensure_schema(conn)
        assert conn.execute("SELECT value FROM centre_meta WHERE key = 'schema'").fetchone() == (str(db.SCHEMA_VERSION),)
        assert conn.execute("SELECT count(*) FROM station_seq_notes").fetchone() == (0,)
        scan = _gaps(conn, "station_gaps_scan")
        assert _gaps(conn, "station_gaps") == scan and sum(g[5] for g in scan) == lost
        assert conn.execute(OVERLAPS).fetchone() == (0,)


def test_a_batch_of_duplicates_notes_nothing(pg_url: str, tmp_path: Path) -> None:
    msgs = station_outbox(tmp_path / "st.db", 6, alarm_every=3)
    writer = _writer(pg_url)
    try:
        writer.process(deliveries(msgs))
        writer.compact_seq_runs(force=True)
        writer.process(deliveries(msgs, start_mid=100))  # every message again: nothing new
        with psycopg.connect(pg_url) as conn:
            assert conn.execute("SELECT count(*) FROM station_seq_notes").fetchone() == (0,)
            assert conn.execute("SELECT first_seq, last_seq FROM station_seq_runs").fetchall() == [(1, 6)]
    finally:
        writer.stop()
