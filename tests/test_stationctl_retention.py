"""Retention purge and data erase on a real SQLite store: undelivered messages hold their events."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

from click.testing import CliRunner

from station.cli.stationctl import main as stationctl
from station.store.events import SqliteEventStore
from station.store.retention import DAY_S, erase, purge
from tests.support.events import make_event

NOW = time.time()


def open_store(path: Path) -> SqliteEventStore:
    return SqliteEventStore(path, station_id="st-01", site="gate-a")


def ack_outbox_for(db: Path, event_ids: set[str]) -> None:
    """The broker acknowledged these events' messages (what OutboxPump records on PUBACK)."""
    with sqlite3.connect(db) as conn:
        for oid, payload in conn.execute("SELECT id, payload FROM outbox").fetchall():
            if json.loads(payload)["event"]["event_id"] in event_ids:
                conn.execute("UPDATE outbox SET acked_at = ? WHERE id = ?", (int(NOW * 1000), oid))


def ids(db: Path, table: str = "events", column: str = "event_id") -> set[str]:
    with sqlite3.connect(db) as conn:
        return {r[0] for r in conn.execute(f"SELECT {column} FROM {table}")}


def test_purge_deletes_old_delivered_events_and_holds_undelivered_ones(tmp_path: Path) -> None:
    db = tmp_path / "events.sqlite3"
    old_delivered = [make_event(i, ts=NOW - 100 * DAY_S) for i in range(3)]
    old_pending = make_event(10, ts=NOW - 100 * DAY_S, alarm=True)
    recent = make_event(20, ts=NOW - DAY_S)
    with open_store(db) as store:
        for e in [*old_delivered, old_pending, recent]:
            store.record(e)
    ack_outbox_for(db, {e.event_id for e in [*old_delivered, recent]})
    # The outbox rows carry their write time: age the delivered ones like their events.
    with sqlite3.connect(db) as conn:
        conn.execute(
            "UPDATE outbox SET created_at = ? WHERE acked_at IS NOT NULL AND json_extract(CAST(payload AS TEXT), '$.event.event_id') != ?",
            (int((NOW - 100 * DAY_S) * 1000), recent.event_id),
        )
        conn.execute("UPDATE gate_actions SET created_at = ?", (NOW - 100 * DAY_S,))
        conn.execute(
            "INSERT INTO operator_actions(ts, action, operator, event_id, ok, reason) VALUES (?, 'ack', 'op', ?, 1, 'ok')",
            (NOW - 100 * DAY_S, old_pending.event_id),
        )
        conn.execute(
            "INSERT INTO operator_actions(ts, action, operator, event_id, ok, reason) VALUES (?, 'ack', 'op', ?, 1, 'ok')",
            (NOW - DAY_S, recent.event_id),
        )
    crops = tmp_path / "crops"
    crops.mkdir()
    (crops / "old.jpg").write_bytes(b"x")
    (crops / "new.jpg").write_bytes(b"y")
    os.utime(crops / "old.jpg", (NOW - 8 * DAY_S, NOW - 8 * DAY_S))

    with open_store(db) as store:
        result = purge(store, tmp_path, events_days=90, face_crops_days=7, now=NOW)

    assert result.events == 3 and result.held == 1 and result.crops == 1 and result.operator_actions == 1
    assert ids(db) == {old_pending.event_id, recent.event_id}
    assert ids(db, "operator_actions") == {recent.event_id}
    # The undelivered alarm keeps both its messages; the delivered old ones are gone.
    with sqlite3.connect(db) as conn:
        left = [json.loads(p)["event"]["event_id"] for (p,) in conn.execute("SELECT payload FROM outbox")]
        audit = conn.execute("SELECT actor, counts FROM data_audit").fetchall()
    assert sorted(left) == sorted([old_pending.event_id, old_pending.event_id, recent.event_id])
    assert not (crops / "old.jpg").exists() and (crops / "new.jpg").exists()
    assert len(audit) == 1 and audit[0][0] == "retention" and json.loads(audit[0][1])["events"] == 3

    # Once the broker acknowledges it, the next purge takes it; nothing else changes.
    ack_outbox_for(db, {old_pending.event_id})
    with open_store(db) as store:
        again = purge(store, tmp_path, events_days=90, face_crops_days=7, now=NOW)
    assert again.events == 1 and again.held == 0
    assert ids(db) == {recent.event_id}


def test_purge_with_nothing_to_do_writes_no_audit_row(tmp_path: Path) -> None:
    db = tmp_path / "events.sqlite3"
    with open_store(db) as store:
        store.record(make_event(1))
        result = purge(store, tmp_path, events_days=90, face_crops_days=7, now=NOW)
    assert result.deleted == 0
    assert ids(db, "data_audit", "id") == set()


def test_erase_by_id_and_range_respects_pending_unless_asked(tmp_path: Path) -> None:
    db = tmp_path / "events.sqlite3"
    evs = [make_event(i, ts=NOW - (10 - i) * 3600) for i in range(6)]
    with open_store(db) as store:
        for e in evs:
            store.record(e)
    ack_outbox_for(db, {e.event_id for e in evs[:4]})
    with open_store(db) as store:
        # The operator re-checked evs[0] with a clinical thermometer: that reading goes with the event.
        store.record_operator_action("recheck", "op-1", True, "ok", event_id=evs[0].event_id, detail={"clinical_c": 36.9})
        store.record_operator_action("ack", "op-1", True, "ok", event_id=evs[5].event_id)
        by_id = erase(store, event_ids=[evs[0].event_id, "no-such-id"], note="request 17")
        ranged = erase(store, since=NOW - 9.5 * 3600, until=NOW)  # evs[1..5]; 4 and 5 are undelivered
        forced = erase(store, event_ids=[evs[4].event_id], include_pending=True)
    assert (by_id["events"], by_id["not_found"], by_id["operator_actions"]) == (1, ["no-such-id"], 1)
    assert by_id["outbox"] == 2  # its screening message and the operator audit message about it
    assert ranged["events"] == 3 and ranged["held"] == sorted([evs[4].event_id, evs[5].event_id])
    assert forced["events"] == 1 and forced["outbox"] == 1  # its pending message will never be sent
    assert ids(db) == {evs[5].event_id}
    assert ids(db, "operator_actions") == {evs[5].event_id}
    with sqlite3.connect(db) as conn:
        notes = conn.execute("SELECT actor, note, criteria FROM data_audit ORDER BY id").fetchall()
    assert len(notes) == 3 and notes[0][1] == "request 17"
    assert json.loads(notes[2][2])["include_pending"] is True


def write_cfg(tmp_path: Path) -> Path:
    cfg = tmp_path / "station.toml"
    cfg.write_text(f'[station]\nsite = "gate-a"\nid = "st-01"\ndata_dir = "{tmp_path / "data"}"\n')
    return cfg


def test_cli_export_and_erase(tmp_path: Path) -> None:
    cfg = write_cfg(tmp_path)
    db = tmp_path / "data" / "events.sqlite3"
    evs = [make_event(i, ts=NOW - (5 - i) * 86400) for i in range(5)]
    with open_store(db) as store:
        for e in evs:
            store.record(e)
    ack_outbox_for(db, {e.event_id for e in evs})
    run = CliRunner().invoke
    r = run(stationctl, ["--config", str(cfg), "data", "export", "--since", "3.5d"])  # the newest 3
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["event_id"] for x in lines] == [e.event_id for e in evs[2:]]
    assert lines[0]["temperature_c"] == 36.6

    # Without --yes it asks; "n" erases nothing.
    r = run(stationctl, ["--config", str(cfg), "data", "erase", "--until", "3.5d"], input="n\n")
    assert r.exit_code == 1 and len(ids(db)) == 5
    r = run(stationctl, ["--config", str(cfg), "data", "erase", "--until", "3.5d", "--yes", "--vacuum", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["events"] == 2
    assert ids(db) == {e.event_id for e in evs[2:]}
    r = run(stationctl, ["--config", str(cfg), "data", "erase"])
    assert r.exit_code == 2  # no criteria: refuses to erase everything
    r = run(stationctl, ["--config", str(cfg), "data", "purge", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["via"].startswith("stationctl")
