"""The SQLite event store and its transactional outbox, on real files (and a real SIGKILL)."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from station.domain.model import (
    GateAction,
    GateResult,
)
from station.store.events import (
    PRIORITY_ALARM,
    PRIORITY_EVENT,
    SCHEMA_VERSION,
    SchemaTooNewError,
    SqliteEventStore,
)
from tests.support.events import make_event


def _tables(store: SqliteEventStore) -> set[str]:
    return {r[0] for r in store._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _columns(store: SqliteEventStore, table: str) -> set[str]:
    return {r[1] for r in store._conn.execute(f"PRAGMA table_info({table})")}


def _indexes(store: SqliteEventStore, table: str) -> set[str]:
    return {r[1] for r in store._conn.execute(f"PRAGMA index_list({table})")}


def _count(store: SqliteEventStore, table: str) -> int:
    return int(store._conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


ROOT = Path(__file__).resolve().parents[1]


def open_store(path: Path) -> SqliteEventStore:
    return SqliteEventStore(path, station_id="st-01", site="gate-a")


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path)


def outbox_payloads(path: Path) -> list[dict]:
    with raw(path) as conn:
        rows = conn.execute("SELECT topic, payload FROM outbox ORDER BY id").fetchall()
    return [dict(json.loads(p), topic=t) for t, p in rows]


# ----------------------------------------------------------------------------- schema


def test_new_database_has_schema_and_pragmas(tmp_path: Path) -> None:
    db = tmp_path / "station.db"
    store = open_store(db)
    try:
        conn = store._conn
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
        assert set(_tables(store)) >= {"events", "outbox", "gate_actions", "meta"}
        assert _columns(store, "outbox") == {
            "id",
            "msg_id",
            "topic",
            "payload",
            "qos",
            "priority",
            "created_at",
            "attempts",
            "sent_at",
            "acked_at",
            "dropped_at",
            "last_error",
        }
        assert "outbox_pending" in _indexes(store, "outbox")
        assert _indexes(store, "events") >= {"events_ts", "events_decision"}
    finally:
        store.close()
    assert not list(tmp_path.glob("*.bak")), "a fresh database needs no backup"


def test_reopen_current_version_keeps_data_and_takes_no_backup(tmp_path: Path) -> None:
    db = tmp_path / "station.db"
    with open_store(db) as store:
        store.record(make_event(1))
    with open_store(db) as store:
        assert [e["event_id"][:9] for e in store.tail(5)] == ["ev-000001"]
    assert not list(tmp_path.glob("*.bak"))


def test_newer_schema_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    db = tmp_path / "station.db"
    open_store(db).close()
    with raw(db) as conn:
        conn.execute("PRAGMA user_version=99")
    with pytest.raises(SchemaTooNewError) as err:
        open_store(db)
    message = str(err.value)
    assert "99" in message and f"up to {SCHEMA_VERSION}" in message and "newer release" in message
    with raw(db) as conn:  # untouched
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 99


def test_older_database_is_backed_up_before_migrating(tmp_path: Path) -> None:
    db = tmp_path / "station.db"
    with raw(db) as conn:  # a "v0" database from some earlier tool
        conn.execute("CREATE TABLE legacy (x TEXT)")
        conn.execute("INSERT INTO legacy VALUES ('keep me')")
    with open_store(db) as store:
        store.record(make_event(1))
        assert _count(store, "legacy") == 1
    backup = tmp_path / f"station.db.pre-v{SCHEMA_VERSION}.bak"
    assert backup.exists()
    with raw(backup) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 0
        assert conn.execute("SELECT x FROM legacy").fetchall() == [("keep me",)]
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name='events'").fetchone()[0] == 0
    assert not list(tmp_path.glob("*.tmp"))


# ----------------------------------------------------------------------------- record


def test_record_writes_event_and_outbox_rows(tmp_path: Path) -> None:
    db = tmp_path / "station.db"
    with open_store(db) as store:
        session = store.begin_session()
        plain, alarm = make_event(1), make_event(2, alarm=True)
        r1 = store.record(plain)
        r2 = store.record(alarm)
        assert r2 == r1 + 1
        events = store.tail(10)
        assert [e["event_id"] for e in events] == [plain.event_id, alarm.event_id]
        assert [e["_rowid"] for e in events] == [r1, r2]
        public = {k: v for k, v in events[1].items() if not k.startswith("_")}
        assert public == alarm.as_record()
        assert events[0]["decision"] == "pass" and events[0]["temperature_c"] == 36.6
        assert store.last_event()["event_id"] == alarm.event_id  # type: ignore[index]
        assert store.counts() == {"pass": 1, "deny_fever": 1}
        assert store.counts(since_ts=time.time() + 60) == {}
        assert [e["event_id"] for e in store.events_since(r1)] == [alarm.event_id]

        stats = store.outbox_stats()
        assert stats["pending"] == 3 and stats["alarms_pending"] == 1 and stats["bytes"] > 0
        assert 0 <= stats["oldest_age_s"] < 60

    payloads = outbox_payloads(db)
    assert [p["topic"] for p in payloads] == [
        "checkpoint/v1/gate-a/st-01/events/screening",
        "checkpoint/v1/gate-a/st-01/events/screening",
        "checkpoint/v1/gate-a/st-01/events/alarm",
    ]
    assert [p["seq"] for p in payloads] == [1, 2, 2]  # one seq per event, shared by its messages
    for p in payloads:
        assert set(p) == {"schema", "msg_id", "station_id", "site", "seq", "session", "ts", "clock_synced", "event", "topic"}
        assert p["schema"] == 1 and p["session"] == session and p["clock_synced"] is True
        assert p["station_id"] == "st-01" and p["site"] == "gate-a"
        assert len(p["msg_id"]) == 32 and p["msg_id"][12] == "7"  # UUIDv7 layout
    assert len({p["msg_id"] for p in payloads}) == 3
    assert payloads[2]["event"] == alarm.as_record()


def test_outbox_pending_order_exclusion_and_ack(tmp_path: Path) -> None:
    with open_store(tmp_path / "station.db") as store:
        store.record(make_event(1))
        store.record(make_event(2, alarm=True))
        store.record(make_event(3))
        rows = store.outbox_pending(10)
        # alarms first (priority 0), then oldest first
        assert [r.priority for r in rows] == [PRIORITY_ALARM, PRIORITY_EVENT, PRIORITY_EVENT, PRIORITY_EVENT]
        assert [r.id for r in rows[1:]] == sorted(r.id for r in rows[1:])
        assert store.outbox_pending(2, exclude_ids={rows[0].id}) == rows[1:3]
        assert store.outbox_pending(0) == []

        store.outbox_mark_sent(rows[0].id)
        store.outbox_mark_sent_many([rows[0].id, rows[1].id])
        again = {r.id: r for r in store.outbox_pending(10)}
        assert again[rows[0].id].attempts == 2 and again[rows[1].id].attempts == 1
        assert store._conn.execute("SELECT sent_at IS NOT NULL FROM outbox WHERE id = ?", (rows[0].id,)).fetchone()[0]

        store.outbox_ack(rows[0].id)
        assert store.outbox_ack_many([rows[1].id, rows[1].id, 999_999]) == 1
        assert [r.id for r in store.outbox_pending(10)] == [r.id for r in rows[2:]]
        assert store.outbox_stats()["alarms_pending"] == 0
        assert _count(store, "events") == 3, "acking deletes outbox rows, never events"


def test_record_is_atomic_when_the_outbox_insert_fails(tmp_path: Path) -> None:
    """A failure between the events insert and the outbox insert leaves nothing behind."""

    class CollidingStore(SqliteEventStore):
        def _new_msg_id(self) -> str:  # every message gets the same idempotency key
            return "0" * 32

    db = tmp_path / "station.db"
    with CollidingStore(db, station_id="st-01", site="gate-a") as store:
        first = make_event(1)
        store.record(first)  # one outbox row: fine
        with pytest.raises(sqlite3.IntegrityError):
            store.record(make_event(2))  # events row inserted, then the outbox insert fails
        with pytest.raises(sqlite3.IntegrityError):
            store.record(make_event(3, alarm=True))  # second outbox row of the same event fails
        assert [e["event_id"] for e in store.tail(10)] == [first.event_id]
        assert _count(store, "outbox") == 1
        assert store._conn.in_transaction is False
    with open_store(db) as store:  # and the failures consumed no seq
        store.record(make_event(4))
    assert [p["seq"] for p in outbox_payloads(db)] == [1, 2]


def test_duplicate_event_id_is_rejected_without_side_effects(tmp_path: Path) -> None:
    with open_store(tmp_path / "station.db") as store:
        ev = make_event(1)
        store.record(ev)
        with pytest.raises(sqlite3.IntegrityError):
            store.record(ev)
        assert _count(store, "events") == 1 and _count(store, "outbox") == 1


def test_seq_strictly_increases_across_reopen_and_sessions_count_opens(tmp_path: Path) -> None:
    db = tmp_path / "station.db"
    sessions = []
    for round_ in range(3):
        with open_store(db) as store:
            sessions.append(store.begin_session())
            for i in range(4):
                store.record(make_event(round_ * 10 + i, alarm=(i == 2)))
    assert sessions == [1, 2, 3]
    screening = [p for p in outbox_payloads(db) if p["topic"].endswith("/screening")]
    seqs = [p["seq"] for p in screening]
    assert seqs == list(range(1, 13))
    assert [p["session"] for p in screening] == [1] * 4 + [2] * 4 + [3] * 4


def test_gate_results_are_logged(tmp_path: Path) -> None:
    with open_store(tmp_path / "station.db") as store:
        ev = make_event(1)
        store.record(ev)
        store.record_gate_result(GateResult(ev.event_id, GateAction.OPEN, True, "ok", 12.5))
        store.record_gate_result(GateResult("never-recorded", GateAction.HOLD, True, "fault: db", 13.0))
        rows = store.gate_actions(ev.event_id)
        assert [(r["action"], r["executed"], r["reason"], r["t_mono"]) for r in rows] == [("open", True, "ok", 12.5)]
        assert store.gate_actions("never-recorded")[0]["action"] == "hold"


def test_non_json_values_are_sanitised(tmp_path: Path) -> None:
    import numpy as np

    odd = dataclasses.replace(
        make_event(1),
        temperature={"skin_c": np.float32(34.25), "spread": float("nan"), "n": np.int64(7), "samples": np.array([36.5, 36.7])},
    )
    with open_store(tmp_path / "station.db") as store:
        store.record(odd)
        temp = store.tail(1)[0]["temperature"]
    assert temp == {"skin_c": 34.25, "spread": None, "n": 7, "samples": [36.5, 36.7]}


def test_store_is_thread_safe(tmp_path: Path) -> None:
    with open_store(tmp_path / "station.db") as store:
        errors: list[Exception] = []

        def writer(base: int) -> None:
            try:
                for i in range(40):
                    store.record(make_event(base + i, alarm=(i % 9 == 0)))
            except Exception as exc:  # noqa: BLE001 - re-raised by the assertion below
                errors.append(exc)

        def reader() -> None:
            try:
                for _ in range(60):
                    store.outbox_stats()
                    store.tail(5)
                    store.outbox_pending(10)
            except Exception as exc:  # noqa: BLE001 - re-raised by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(k * 1000,)) for k in range(3)]
        threads += [threading.Thread(target=reader) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert _count(store, "events") == 120
        seqs = sorted({json.loads(r.payload)["seq"] for r in store.outbox_pending(1000)})
        assert seqs == list(range(1, 121))
        assert store.integrity_check() == "ok"


def test_closed_store_refuses_use(tmp_path: Path) -> None:
    store = open_store(tmp_path / "station.db")
    store.close()
    store.close()  # idempotent
    with pytest.raises(Exception, match="closed"):
        store.record(make_event(1))


def test_close_checkpoints_the_wal(tmp_path: Path) -> None:
    db = tmp_path / "station.db"
    with open_store(db) as store:
        for i in range(20):
            store.record(make_event(i))
    wal = db.with_name(db.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0


# ----------------------------------------------------------------------------- crash test

CHILD = r"""
import sys, time
from pathlib import Path
from station.domain.model import CodeColour, Decision, ScreeningEvent
from station.store.events import SqliteEventStore

store = SqliteEventStore(Path(sys.argv[1]), station_id="st-01", site="gate-a")
store.begin_session()
prefix = sys.argv[2]
i = 0
while True:
    alarm = i % 7 == 3
    ev = ScreeningEvent(
        event_id=f"{prefix}-{i}", station_id="st-01", site="gate-a", lane="lane-1",
        decision=Decision.DENY_FEVER if alarm else Decision.PASS, reason="r", alarm=alarm,
        wall_ts=time.time(), temperature_c=36.6, temperature={"n": i}, code_colour=CodeColour.GREEN,
        code={}, face={}, stage_t={}, latency_ms={}, policy={}, clock_synced=False,
    )
    store.record(ev)
    sys.stdout.write(ev.event_id + "\n")
    sys.stdout.flush()
    i += 1
"""


@pytest.mark.slow
def test_sigkill_mid_write_loses_nothing_that_was_reported(tmp_path: Path) -> None:
    """A writer killed at random points: every reported event survives with its outbox rows."""
    db = tmp_path / "station.db"
    rng = random.Random(1234)
    reported: list[str] = []
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for round_ in range(5):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(db), f"r{round_}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env=env,
        )
        assert child.stdout is not None
        want = rng.randint(150, 400)
        got: list[str] = []
        while len(got) < want:
            line = child.stdout.readline()
            if not line:
                stderr = child.stderr.read().decode() if child.stderr else ""
                pytest.fail(f"writer exited early ({child.wait()}):\n{stderr}")
            got.append(line.decode().strip())
        time.sleep(rng.random() * 0.01)  # land the kill at different points of a transaction
        child.send_signal(signal.SIGKILL)
        child.wait()
        rest = child.stdout.read().decode().split()  # lines written before the kill
        child.stdout.close()
        if child.stderr:
            child.stderr.close()
        reported += got + rest

        with raw(db) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            events = {r[0]: bool(r[1]) for r in conn.execute("SELECT event_id, alarm FROM events")}
            outbox: dict[str, list[str]] = {}
            seqs: dict[str, int] = {}
            for topic, payload in conn.execute("SELECT topic, CAST(payload AS TEXT) FROM outbox"):
                p = json.loads(payload)
                outbox.setdefault(p["event"]["event_id"], []).append(topic.rsplit("/", 1)[1])
                seqs[p["event"]["event_id"]] = p["seq"]
        missing = [e for e in reported if e not in events]
        assert not missing, f"round {round_}: {len(missing)} reported events lost, e.g. {missing[:3]}"
        assert set(outbox) == set(events), "an event without its outbox rows, or vice versa"
        for event_id, alarm in events.items():
            assert sorted(outbox[event_id]) == (["alarm", "screening"] if alarm else ["screening"])
        assert sorted(seqs.values()) == list(range(1, len(events) + 1)), "seq gap or reuse"

    # The store opens normally afterwards and carries on.
    with open_store(db) as store:
        assert store.integrity_check() == "ok"
        store.record(make_event(0))
        assert store.outbox_stats()["pending"] >= len(set(reported))


def test_read_only_open_reads_but_never_writes_or_migrates(tmp_path):
    from station.store.events import SCHEMA_VERSION, SqliteEventStore, StoreError

    path = tmp_path / "events.sqlite3"
    with pytest.raises(StoreError, match="no event database"):
        SqliteEventStore(path, station_id="s1", site="site", read_only=True)
    writer = SqliteEventStore(path, station_id="s1", site="site")
    writer.begin_session()
    writer.record(make_event(1))
    reader = SqliteEventStore(path, station_id="s1", site="site", read_only=True)
    try:
        assert [e["event_id"] for e in reader.tail(5)] == [writer.tail(1)[0]["event_id"]]
        assert reader.outbox_stats()["pending"] == 1
        with pytest.raises(StoreError, match="read-only"):
            reader.record(make_event(2))
        with pytest.raises(StoreError, match="read-only"):
            reader.begin_session()
    finally:
        reader.close()
        writer.close()
    # An older schema is not migrated by a reader.
    import sqlite3

    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION - 1}")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="start the daemon once to migrate"):
        SqliteEventStore(path, station_id="s1", site="site", read_only=True)
    assert not list(tmp_path.glob("*.bak"))


def _descriptors_of(path: Path) -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith(str(path)):
                count += 1
        except OSError:
            continue
    return count


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_reopening_after_a_storage_fault_leaves_no_descriptor_behind(tmp_path: Path) -> None:
    # The long soak saw one more open file after each daemon's first storage fault: the new
    # connection was opened before the old one was closed, and SQLite defers the close of a file
    # another connection of the process holds (POSIX locks belong to the process).
    store = SqliteEventStore(tmp_path / "events.sqlite3", station_id="st-01", site="site-a")
    try:
        store.record(make_event(0))
        before = _descriptors_of(tmp_path / "events.sqlite3")
        for i in range(1, 4):
            store._reopen_due = True
            store.record(make_event(i))
            assert _descriptors_of(tmp_path / "events.sqlite3") == before
        assert _count(store, "events") == 4
    finally:
        store.close()
