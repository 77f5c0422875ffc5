"""An alarm handled on the centre's screen reaches the station that raised it (real mosquitto, real PostgreSQL).

The station is the real command link (tests/support/command_rig.py: store, StationLink, verifier, handlers);
its alarm travels to the centre as the station's own outbox message (parsed and written by the centre's
code); a tracer acknowledges and closes it on the screen (Starlette TestClient); the centre's mirror signs
``alarm-ack`` with the centre key the station trusts; the station's store — what its operator display
lists — shows the alarm acknowledged by ``centre:duty``. A mirror signing with a key the station does not
trust is refused and counted.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from station.centre import db
from station.centre.mirror import AlarmMirror
from station.centre.page import Screen, create_screen_app
from station.centre.parse import EventRow, parse_message
from station.link.command_auth import new_signing_key, private_pem
from tests.support.centre_screen import TRACER, UTC, add_users, login
from tests.support.command_rig import Rig
from tests.support.events import make_event
from tests.support.postgres import pg_server, pg_url
from tests.support.waiting import wait_until

__all__ = ["pg_server", "pg_url"]

pytestmark = pytest.mark.slow

BASE = "http://127.0.0.1:8090"
ORIGIN = {"Origin": BASE}


@pytest.fixture()
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    r.close()


def _to_centre(rig: Rig, url: str) -> None:
    """Carry the station's outbox to the centre's database the way the ingest does (parse, day partition, batch)."""
    with sqlite3.connect(rig.tmp / "events.db") as conn:
        rows = conn.execute("SELECT topic, payload FROM outbox WHERE acked_at IS NULL ORDER BY id").fetchall()
    parsed = [parse_message("checkpoint/v1", t, bytes(p)) for t, p in rows]
    events = [r for r in parsed if isinstance(r, EventRow)]
    with db.connect(url) as conn:
        db.ensure_schema(conn)
        db.create_partitions(conn, {db.day_of(r.ts, UTC) for r in events}, UTC)
        db.write_batch(conn, events, [])


def _mirror(rig: Rig, key: Any, path: Path) -> AlarmMirror:
    path.write_bytes(private_pem(key))
    mirror = AlarmMirror(rig.broker.url, path, signer="district-centre")
    mirror.start()
    wait_until(lambda: mirror.client is not None and mirror.client.is_connected(), 5, "mirror connected")
    return mirror


def test_an_alarm_closed_at_the_centre_shows_as_acknowledged_on_the_station(rig: Rig, pg_url: str, tmp_path: Path) -> None:
    event = make_event(1, alarm=True)
    rig.store.record(event)
    rig.store.record(make_event(2))
    _to_centre(rig, pg_url)
    add_users(pg_url)
    sc = Screen(pg_url)
    sc.open()
    sc.mirror = _mirror(rig, rig.key, tmp_path / "centre-key.pem")
    try:
        client = TestClient(create_screen_app(sc), base_url=BASE)
        login(client, TRACER)
        alarms = client.get("/api/alarms").json()["alarms"]
        assert [(a["site"], a["station"], a["event_id"], a["state"]) for a in alarms] == [("gate-a", "st-01", event.event_id, "open")]
        key = {"site": "gate-a", "station": "st-01", "event_id": event.event_id}
        acked = client.post("/api/alarms/ack", json=key, headers=ORIGIN).json()
        assert acked["state"] == "acknowledged" and acked["mirrored"]
        wait_until(lambda: sc.mirror.result(acked["mirrored"]) is not None, 5, "the station's answer")
        assert sc.mirror.result(acked["mirrored"])["ok"] is True
        shown = rig.store.alarms()
        assert [(a["event_id"], a["ack"]["operator"]) for a in shown] == [(event.event_id, "centre:duty")], shown
        closed = client.post("/api/alarms/close", json={**key, "note": "复测正常 normal on re-check"}, headers=ORIGIN).json()
        wait_until(lambda: sc.mirror.result(closed["mirrored"]) is not None, 5, "the station's answer to the close")
        with sqlite3.connect(rig.tmp / "events.db") as conn:
            actions = conn.execute("SELECT action, operator, ok, event_id FROM operator_actions ORDER BY id").fetchall()
        assert actions == [("ack", "centre:duty", 1, event.event_id), ("ack", "centre:duty", 1, event.event_id)]
        assert sc.mirror.stats() == {"sent": 2, "ok": 2, "refused": 0, "publish_errors": 0}
        results = rig.results("alarm-ack")
        assert [r["result"]["state"] for r in results] == ["acknowledged", "closed"]
    finally:
        sc.mirror.stop()
        sc.close()


def test_a_mirror_the_station_does_not_trust_is_refused_and_nothing_is_acknowledged(rig: Rig, tmp_path: Path) -> None:
    event = make_event(3, alarm=True)
    rig.store.record(event)
    mirror = _mirror(rig, new_signing_key(), tmp_path / "other-key.pem")
    try:
        sent = mirror.send("gate-a", "st-01", event.event_id, "acknowledged", "duty")
        assert sent is not None
        wait_until(lambda: mirror.result(sent) is not None, 5, "the station's refusal")
        assert mirror.result(sent)["ok"] is False and mirror.stats()["refused"] == 1
        assert rig.store.alarms()[0]["ack"] is None
        trusted = _mirror(rig, rig.key, tmp_path / "centre-key.pem")
        try:
            nothing = trusted.send("gate-a", "st-01", "no-such-event", "acknowledged", "duty")
            assert nothing is not None
            wait_until(lambda: trusted.result(nothing) is not None, 5, "the station's answer")
            assert trusted.result(nothing)["ok"] is False and "no alarm with event id" in trusted.result(nothing)["error"]
        finally:
            trusted.stop()
    finally:
        mirror.stop()
    with pytest.raises(ValueError, match="not a usable signing key"):
        (tmp_path / "bad.pem").write_text("not a key")
        AlarmMirror(rig.broker.url, tmp_path / "bad.pem")
