"""A damaged event database at start: the store keeps the damaged files, starts from what is readable and says so.

Each kind of damage is made on a real SQLite file the real store wrote: a write-ahead log cut in the
middle of its committed frames (a card that lost the tail of a file), a page of the events table
overwritten with noise (a bad block), and a destroyed file header (nothing readable). What must hold
after the store opens with ``recover=True`` (the daemon's start): the damaged files lie beside the
database under a timestamped name, byte for byte as found; every event that could be read is there
with its record intact; ``seq`` never goes back; the store writes again.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from station.store.events import SqliteEventStore
from station.store.recovery import SEQ_JUMP, wal_damage
from tests.support.events import make_event

N = 300


def open_store(path: Path, *, recover: bool = True) -> SqliteEventStore:
    return SqliteEventStore(path, station_id="st-01", site="gate-a", recover=recover)


def write_events(path: Path, n: int = N) -> dict[str, str]:
    """Write ``n`` events (closed cleanly: all in the main file); return event id → stored record JSON."""
    with open_store(path, recover=False) as store:
        store.begin_session()
        for i in range(n):
            store.record(make_event(i, alarm=i % 7 == 0))
    db = sqlite3.connect(path)
    records = {eid: rec for eid, rec in db.execute("SELECT event_id, record FROM events")}
    db.close()
    return records


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def damaged_files(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.damaged-*"))


def events_in(store: SqliteEventStore) -> dict[str, str]:
    return {e["event_id"]: json.dumps({k: v for k, v in e.items() if not k.startswith("_")}, sort_keys=True) for e in store.tail(10 * N)}


def as_stored(records: dict[str, str]) -> dict[str, str]:
    return {k: json.dumps(json.loads(v), sort_keys=True) for k, v in records.items()}


def test_a_sound_database_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    write_events(path, 20)
    before = digest(path)
    with open_store(path) as store:
        assert store.recovery is None
    assert damaged_files(path) == []
    assert digest(path) != "" and before  # opened and closed normally


def test_a_write_ahead_log_cut_short_keeps_the_commits_before_the_cut_and_the_cut_log_aside(tmp_path: Path) -> None:
    # The station is running (its WAL holds the last commits, not yet checkpointed) when the card
    # loses the tail of the WAL: the files are copied as they are on the medium at that moment.
    live = tmp_path / "live" / "events.sqlite3"
    written = []
    store = open_store(live, recover=False)
    store._conn.execute("PRAGMA wal_autocheckpoint=0")  # everything stays in the WAL, as between checkpoints
    store.begin_session()
    for i in range(60):
        event = make_event(i)
        store.record(event)
        written.append(event.event_id)
    path = tmp_path / "card" / "events.sqlite3"
    path.parent.mkdir()
    for suffix in ("", "-wal"):
        shutil.copyfile(f"{live}{suffix}", f"{path}{suffix}")
    store.close()
    wal = Path(f"{path}-wal")
    size = wal.stat().st_size
    with open(wal, "r+b") as f:
        f.truncate(size // 2 + 1000)  # in the middle of a frame, half the commits gone
    cut = digest(wal)
    assert wal_damage(wal) is not None

    with open_store(path) as reopened:
        recovery = reopened.recovery
        assert recovery is not None and recovery.kind == "wal_truncated"
        assert "write-ahead log was damaged" in recovery.reason()
        kept = damaged_files(path)
        assert [p.name.endswith("-wal") for p in kept] == [False, True]
        assert digest(kept[1]) == cut, "the damaged log was not kept as found"
        survived = [e["event_id"] for e in reopened.tail(1000)]
        # A prefix of what was written: the commits before the cut, in order, none after it.
        assert 0 < len(survived) < len(written)
        assert survived == written[: len(survived)]
        assert reopened.integrity_check() == "ok"
        seq_before = reopened._read(lambda c: int(c.execute("SELECT value FROM meta WHERE key='seq'").fetchone()[0]))
        reopened.record(make_event(999))
        assert reopened.outbox_rows_after(0, 1000)[-1].payload.find(f'"seq":{seq_before + 1}'.encode()) > 0


def test_a_bad_page_in_the_events_table_keeps_every_readable_event_and_the_damaged_file_aside(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    records = write_events(path)
    db = sqlite3.connect(path)
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    leaves = [r[0] for r in db.execute("SELECT pageno FROM dbstat WHERE name = 'events' AND pagetype = 'leaf' ORDER BY pageno")]
    bad = leaves[len(leaves) // 2]
    db.close()
    with open(path, "r+b") as f:
        f.seek((bad - 1) * page_size)
        f.write(bytes((i * 131 + 7) % 251 for i in range(page_size)))  # noise where a leaf page was
    damaged = digest(path)

    with open_store(path) as store:
        recovery = store.recovery
        assert recovery is not None and recovery.kind == "bad_page"
        assert "started from a copy of what was readable" in recovery.reason()
        kept = [p for p in damaged_files(path) if not p.name.endswith("-wal")]  # its (empty) WAL goes beside it too
        assert len(kept) == 1 and digest(kept[0]) == damaged, "the damaged file was not kept as found"
        got = events_in(store)
        lost = set(records) - set(got)
        per_page = N / len(leaves)
        assert 0 < len(lost) <= 3 * per_page, f"lost {len(lost)} events, about {per_page:.0f} fit on a page"
        want = as_stored(records)
        assert all(got[eid] == want[eid] for eid in got), "a recovered event differs from what was written"
        assert store.integrity_check() == "ok"
        assert recovery.rows_copied["events"] == len(got)
        store.record(make_event(1000))
        assert store.event(store.last_event()["event_id"]) is not None  # type: ignore[index]


def test_a_destroyed_header_starts_empty_with_seq_past_anything_sent(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    write_events(path, 10)
    with open(path, "r+b") as f:
        f.write(b"this is no longer a database" + b"\0" * 100)
    with open_store(path) as store:
        recovery = store.recovery
        assert recovery is not None and recovery.kind == "not_a_database"
        assert len([p for p in damaged_files(path) if not p.name.endswith("-wal")]) == 1
        assert store.tail(10) == []
        store.begin_session()
        store.record(make_event(1))
        payload = json.loads(store.outbox_rows_after(0, 10)[0].payload)
        assert payload["seq"] > SEQ_JUMP, "seq went back: the centre would see old numbers again"


def test_readers_never_judge_or_move_a_file(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    write_events(path, 10)
    with open(path, "r+b") as f:
        f.write(b"this is no longer a database" + b"\0" * 100)
    with pytest.raises(sqlite3.DatabaseError):  # stationctl beside the daemon: an error, never a rebuild
        SqliteEventStore(path, station_id="st-01", site="gate-a", read_only=True)
    assert damaged_files(path) == []


@pytest.mark.slow
def test_the_station_starts_on_a_damaged_database_and_names_it_as_a_degraded_store(tmp_path: Path) -> None:
    from sim.demo import DemoRun
    from station.config import StationConfig

    data = tmp_path / "data"
    first = DemoRun(StationConfig(), people=1, data_dir=data, fast=True).run(max_s=60)
    assert first.decided
    path = first.db_path
    with open(path, "r+b") as f:
        f.write(b"this is no longer a database" + b"\0" * 100)
    seen: list[list[dict[str, str]]] = []
    run = DemoRun(StationConfig(), people=1, data_dir=data, fast=True)
    run.on_decided = lambda person, d: seen.append(run.app.runtime_status()["degraded"])  # type: ignore[union-attr]
    second = run.run(max_s=60)
    assert second.decided, "the station did not screen on the rebuilt database"
    store = [d for d in seen[0] if d["module"] == "store"]
    assert store and "database was damaged (not_a_database" in store[0]["reason"] and ".damaged-" in store[0]["reason"]
    assert [p for p in damaged_files(path) if not p.name.endswith("-wal")]
