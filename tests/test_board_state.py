"""The board's state and history without a broker: de-duplication, restart, late Wills, attention
order, replicas sharing one history, and the web API (Starlette TestClient)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from station.board.history import BoardHistory
from station.board.state import BoardState
from station.board.web import create_app
from station.link.snapshots import snapshot_payload
from tests.support.board_auth import login, make_auth
from tests.support.board_messages import P, screening, status


def alarm_msg(station: str, event_id: str, temp: float = 38.4, site: str = "s1") -> tuple[str, bytes]:
    topic, payload = screening(station, event_id, "deny_fever", temp, True, site=site)
    return topic.replace("/events/screening", "/events/alarm"), payload


def state_msg(station: str, component: str, site: str = "s1", **fields: Any) -> tuple[str, bytes]:
    body = {"schema": 1, "station_id": station, "site": site, "ts": time.time(), "component": component, **fields}
    return f"{P}/{site}/{station}/state/{component}", json.dumps(body).encode()


def by_key(state: BoardState) -> dict[str, dict[str, Any]]:
    return {s["key"]: s for s in state.view()["stations"]}


def test_duplicates_count_once_and_a_restart_keeps_the_days_counts(tmp_path: Path) -> None:
    history = BoardHistory(tmp_path / "board.sqlite3")
    board = BoardState(history, P)
    first = screening("lane-1", "e1")
    for topic, payload in (
        first,
        first,
        screening("lane-1", "e2", "deny_code"),
        alarm_msg("lane-1", "e3"),
        screening("lane-1", "e3", "deny_fever", 38.4, True),
    ):
        board.handle(topic, payload)
    board.handle(*alarm_msg("lane-1", "e3"))  # the alarm re-sent (at-least-once)
    view = by_key(board)["s1/lane-1"]
    assert view["today"] == {"screened": 3, "by_decision": {"pass": 1, "deny_code": 1, "deny_fever": 1}, "alarms": 1}
    assert view["last"]["event_id"] == "e3" and view["last"]["temperature_c"] == 38.4
    assert board.duplicates == 2
    history.close()

    again = BoardState(BoardHistory(tmp_path / "board.sqlite3"), P)  # a restarted board, nothing re-sent
    view = by_key(again)["s1/lane-1"]
    assert view["today"]["screened"] == 3 and view["today"]["alarms"] == 1
    assert view["state"] == "unknown" and view["level_name"] == "offline", "no status seen yet by this board"


def test_yesterdays_event_delivered_today_counts_for_yesterday(tmp_path: Path) -> None:
    board = BoardState(BoardHistory(tmp_path / "b.sqlite3"), P)
    board.handle(*screening("lane-1", "old", ts=time.time() - 2 * 86400))
    board.handle(*screening("lane-1", "new"))
    assert by_key(board)["s1/lane-1"]["today"]["screened"] == 1


def test_late_will_of_an_older_session_is_ignored(tmp_path: Path) -> None:
    board = BoardState(BoardHistory(tmp_path / "b.sqlite3"), P)
    board.handle(*status("lane-1", "online", 5))
    board.handle(*status("lane-1", "offline", 4))  # the previous run's Will, delivered late
    assert by_key(board)["s1/lane-1"]["state"] == "online"
    board.handle(*status("lane-1", "offline", 5))
    assert by_key(board)["s1/lane-1"]["state"] == "offline"


def test_sorted_by_attention_offline_alarm_backlog_fault_ok(tmp_path: Path) -> None:
    board = BoardState(BoardHistory(tmp_path / "b.sqlite3"), P, backlog_rows=20)
    for name in ("a-ok", "b-fault", "c-backlog", "d-alarm", "e-offline"):
        board.handle(*status(name, "online", 1))
        board.handle(*state_msg(name, "thermal", state="connected"))
        board.handle(*state_msg(name, "outbox", pending=0, alarms_pending=0, bounds_alarm=None, mqtt="connected"))
    board.handle(*state_msg("b-fault", "thermal", state="reconnecting"))
    board.handle(*state_msg("c-backlog", "outbox", pending=500, alarms_pending=0, bounds_alarm=None, mqtt="connected"))
    board.handle(*alarm_msg("d-alarm", "x1"))
    board.handle(*status("e-offline", "offline", 1))
    board.handle(*status("f-stopped", "stopped", 1))
    rows = board.view()["stations"]
    assert [r["station"] for r in rows] == ["e-offline", "f-stopped", "d-alarm", "c-backlog", "b-fault", "a-ok"]
    assert [r["level_name"] for r in rows] == ["offline", "offline", "alarm", "backlog", "fault", "ok"]
    totals = board.view()["totals"]
    assert totals["stations"] == 6 and totals["online"] == 4 and totals["offline"] == 2 and totals["alarms"] == 1
    assert totals["backlog"] == 500


def test_replicas_sharing_one_history_both_show_every_event(tmp_path: Path) -> None:
    # Two replicas of a shared subscription each receive half of the events.
    a = BoardState(BoardHistory(tmp_path / "shared.sqlite3"), P)
    b = BoardState(BoardHistory(tmp_path / "shared.sqlite3"), P)
    for i in range(10):
        (a if i % 2 else b).handle(*screening("lane-1", f"e{i}"))
    a.handle(*screening("lane-1", "e3"))  # a redelivery to the other replica: still once
    b.handle(*screening("lane-1", "e3"))
    for replica in (a, b):
        replica.refresh_history()
        assert by_key(replica)["s1/lane-1"]["today"]["screened"] == 10


def test_bad_payloads_are_counted_not_fatal(tmp_path: Path) -> None:
    board = BoardState(BoardHistory(tmp_path / "b.sqlite3"), P)
    board.handle(f"{P}/s1/lane-1/events/screening", b"not json")
    board.handle(f"{P}/s1/lane-1/events/screening", b'{"event": {}}')
    board.handle(f"{P}/s1/lane-1/snapshot", b'{"jpeg_b64": "R0lGODlh"}')
    board.handle(f"{P}/s1/lane-1/cmd/ping", b"{}")  # a request to the station, not about it
    assert board.bad_messages == 3 and board.view()["totals"]["screened"] == 0


def test_web_api_lists_stations_and_serves_the_snapshot(tmp_path: Path) -> None:
    board = BoardState(BoardHistory(tmp_path / "b.sqlite3"), P)
    board.handle(*status("lane-1", "online", 1))
    board.handle(*screening("lane-1", "e1"))
    jpeg = b"\xff\xd8\xff\xe0fake-jpeg-body"
    board.handle(
        f"{P}/s1/lane-1/snapshot",
        snapshot_payload(
            jpeg, {"blur": "faces", "faces_blurred": 0, "width": 320, "height": 240}, {"station_id": "lane-1", "site": "s1"}, time.time()
        ),
    )
    client = TestClient(create_app(board, make_auth(tmp_path / "auth")), base_url="http://127.0.0.1:8080")
    assert login(client).status_code == 303
    data = client.get("/api/stations").json()
    (row,) = data["stations"]
    assert row["key"] == "s1/lane-1" and row["state"] == "online" and row["today"]["screened"] == 1
    assert row["snapshot"]["blur"] == "faces"
    pic = client.get(row["snapshot"]["url"])
    assert pic.status_code == 200 and pic.headers["content-type"] == "image/jpeg" and pic.content == jpeg
    assert client.get("/api/stations/s1/nope/snapshot.jpg").status_code == 404
    page = client.get("/")
    assert page.status_code == 200 and "指挥大屏" in page.text and "Command centre" in page.text


def test_a_station_writes_only_its_own_tile_and_the_table_is_capped(tmp_path: Path) -> None:
    board = BoardState(BoardHistory(tmp_path / "b.sqlite3"), P, max_stations=3)
    board.handle(*status("lane-1", "online", 1))
    board.handle(*state_msg("lane-1", "outbox", pending=2))
    # The rogue names lane-1 in its payload: the tile key comes from the topic, so only its own tile changes.
    rogue = json.dumps({"station_id": "lane-1", "site": "s1", "key": "s1/lane-1", "state": "offline", "session": 99}).encode()
    assert board.ingest(f"{P}/s1/rogue/status", rogue) == "accepted"
    assert board.ingest(f"{P}/s1/rogue/state/outbox", json.dumps({"pending": "many", "station_id": "lane-1"}).encode()) == "accepted"
    rows = by_key(board)
    assert rows["s1/lane-1"]["state"] == "online" and rows["s1/lane-1"]["backlog"]["pending"] == 2
    assert rows["s1/rogue"]["state"] == "offline" and rows["s1/rogue"]["backlog"]["pending"] is None
    assert board.view()["totals"]["backlog"] == 2
    assert board.ingest(f"{P}/s1/lane-2/status", status("lane-2", "online", 1)[1]) == "accepted"
    assert board.ingest(f"{P}/s1/lane-3/status", status("lane-3", "online", 1)[1]) == "dropped:too_many_stations"
    assert board.ingest(*screening("lane-4", "e1")) == "dropped:too_many_stations"
    assert board.history.counts(time.strftime("%Y-%m-%d")) == {}, "a refused station leaves no history rows"
    assert board.ingest(f"{P}/s1/lane 5/status", b"{}") == "dropped:bad_topic"
    assert board.forget("s1", "rogue") and "s1/rogue" not in by_key(board)
    assert board.ingest(f"{P}/s1/lane-3/status", status("lane-3", "online", 1)[1]) == "accepted", "room again"
