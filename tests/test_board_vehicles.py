"""The board shows vehicle visits and outsider registrations: fed the station's own outbox messages, and hostile ones.

A replayed car with three occupants (one fever) through the real vehicle lane, screening lane,
visit recorder and store; an outsider registered through the store: the board takes their
``events/visit`` and ``events/registration`` messages as the centre receives them, shows the visit
flagged with its summary and the registration (never the phone's hash), de-duplicates re-sent
messages, and types, cleans and caps whatever a rogue publishes on those topics.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from sim.vehicle_scene import vehicle_scenario
from station.board.history import BoardHistory
from station.board.state import RECENT_VEHICLES, BoardState
from station.domain.direction import LaneGeometry
from station.domain.vehicles import VehicleLane
from station.domain.visits import VisitBook
from station.lane.visits import VisitRecorder
from station.store import visits
from station.store.events import SqliteEventStore
from tests.support.screening_obs import lane
from tests.support.vehicle_replay import replay

P = "checkpoint/v1"
BASE = f"{P}/gate-a/st-01"


def station_messages(tmp_path: Path) -> list[tuple[str, bytes]]:
    db = tmp_path / "events.sqlite3"
    store = SqliteEventStore(db, station_id="st-01", site="gate-a")
    store.begin_session()
    wall = {"now": time.time()}
    vehicles = VehicleLane(lambda: set(), min_reads=2)
    recorder = VisitRecorder(
        vehicles,
        VisitBook(LaneGeometry()),
        record=lambda rec: visits.record_visit(store, rec),
        registered=lambda plate: visits.registration_for(store, plate, wall["now"] - 3600),
        wall=lambda: wall["now"],
    )
    visits.record_registration(
        store,
        {
            "registration_id": "reg-1",
            "ts": wall["now"] - 60,
            "plate": "浙A12345",
            "reason": "delivery",
            "destination": "3号楼",
            "phone_hash": "ab" * 32,
            "phone_last4": "8000",
            "operator": "Wang Li",
        },
    )
    scene, _ = vehicle_scenario("three_occupants_one_fever")
    replay(scene, vehicles, lane(), recorder, store=store, wall0=wall["now"], set_wall=lambda w: wall.update(now=w))
    store.close()
    conn = sqlite3.connect(db)
    try:
        return [(t, bytes(p)) for t, p in conn.execute("SELECT topic, payload FROM outbox ORDER BY id")]
    finally:
        conn.close()


def row(board: BoardState) -> dict[str, Any]:
    [r] = board.view()["stations"]
    assert isinstance(r, dict)
    return r


def test_the_board_shows_a_flagged_visit_with_its_summary_and_the_registration(tmp_path: Path) -> None:
    board = BoardState(BoardHistory(tmp_path / "board.sqlite3"), P)
    messages = station_messages(tmp_path)
    for topic, payload in messages + messages:  # everything re-sent once (at-least-once delivery)
        board.handle(topic, payload)
    r = row(board)
    [visit] = r["visits"]
    assert (visit["plate"], visit["occupants"], visit["fever"], visit["denied"], visit["flagged"]) == ("浙A12345", 3, 1, 1, True)
    assert (visit["kind"], visit["direction"]) == ("outsider_vehicle", "entry")
    assert (visit["registered"], visit["registration_id"]) == (True, "reg-1")
    assert r["vehicle_flagged"] is True
    [reg] = r["registrations"]
    assert reg == {
        "registration_id": "reg-1",
        "ts": reg["ts"],
        "plate": "浙A12345",
        "reason": "delivery",
        "destination": "3号楼",
        "phone_last4": "8000",
    }
    assert r["today"]["screened"] == 3 and r["today"]["alarms"] == 1  # the occupants' own screenings, as ever
    assert board.duplicates >= 2


def test_the_board_keeps_the_newest_few_visits_only(tmp_path: Path) -> None:
    board = BoardState(BoardHistory(tmp_path / "board.sqlite3"), P)
    now = time.time()
    for i in range(RECENT_VEHICLES + 3):
        body = {"ts": now + i, "visit": {"visit_id": f"v{i}", "closed_ts": now + i, "plate": f"浙A1234{i}", "summary": {"occupants": 1}}}
        assert board.handle(f"{BASE}/events/visit", json.dumps(body).encode()) == "accepted"
    assert [v["visit_id"] for v in row(board)["visits"]] == [f"v{i}" for i in range(RECENT_VEHICLES + 2, 2, -1)]
    assert row(board)["vehicle_flagged"] is False


@pytest.mark.parametrize(
    ("topic", "body", "verdict"),
    [
        ("visit", {"visit": "nope"}, "dropped:no_visit"),
        ("visit", {"visit": {"visit_id": "<script>", "closed_ts": 1.8e9}}, "dropped:bad_visit_id"),
        ("visit", {"visit": {"visit_id": "v1", "closed_ts": "soon"}}, "dropped:bad_ts"),
        ("registration", {"registration": []}, "dropped:no_registration"),
        ("registration", {"registration": {"registration_id": "r1", "ts": float("1e300")}}, "dropped:bad_ts"),
    ],
)
def test_hostile_visit_and_registration_messages_are_dropped_with_a_reason(tmp_path: Path, topic: str, body: Any, verdict: str) -> None:
    board = BoardState(BoardHistory(tmp_path / "board.sqlite3"), P)
    assert board.handle(f"{BASE}/events/{topic}", json.dumps(body).encode()) == verdict


def test_hostile_values_are_typed_cleaned_and_capped(tmp_path: Path) -> None:
    board = BoardState(BoardHistory(tmp_path / "board.sqlite3"), P)
    now = time.time()
    evil = '<img src=x onerror="window.__pwned=1">\u202e\x00'
    visit = {
        "visit_id": "v-evil",
        "closed_ts": now,
        "plate": evil,
        "kind": "tank",
        "direction": "sideways",
        "summary": {"occupants": 10**9, "fever": -1, "denied": 2},
        "flagged": "yes",
        "registered": 1,
        "registration_id": {"x": 1},
    }
    reg = {"registration_id": "r-evil", "ts": now, "plate": evil, "reason": "<b>", "destination": evil * 10, "phone_last4": "12345"}
    assert board.handle(f"{BASE}/events/visit", json.dumps({"visit": visit}).encode()) == "accepted"
    assert board.handle(f"{BASE}/events/registration", json.dumps({"registration": reg}).encode()) == "accepted"
    [v], [g] = row(board)["visits"], row(board)["registrations"]
    assert v["plate"] is not None and v["plate"].isprintable() and len(v["plate"]) <= 12
    assert (v["kind"], v["direction"], v["occupants"], v["fever"], v["denied"]) == (None, None, None, None, 2)
    assert v["flagged"] is True  # its own summary counts a denied occupant, whatever "flagged" said
    assert (v["registered"], v["registration_id"]) == (False, None)
    assert g["reason"] is None and g["phone_last4"] is None and len(g["destination"]) <= 40 and g["destination"].isprintable()


@pytest.mark.slow
@pytest.mark.browser
def test_the_board_page_shows_the_flagged_visit_and_a_rogues_plate_as_text(tmp_path: Path) -> None:
    """The board page in Debian's chromium: the flagged visit on the tile, the registration in the overlay, markup inert."""
    import asyncio
    import shutil
    import socket
    import threading

    import uvicorn

    from station.board.web import create_app
    from tests.support.board_auth import VIEWER, make_auth

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    board = BoardState(BoardHistory(tmp_path / "board.sqlite3"), P)
    for topic, payload in station_messages(tmp_path):
        board.handle(topic, payload)
    xss = '<img src=x onerror="window.__pwned=1">'
    rogue = {"visit_id": "v-rogue", "closed_ts": time.time(), "plate": xss, "summary": {"occupants": 1, "denied": 1}}
    assert board.handle(f"{P}/gate-a/rogue/events/visit", json.dumps({"visit": rogue}).encode()) == "accepted"

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(board, make_auth(tmp_path / "auth")), log_config=None, lifespan="off"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1600, "height": 900}, bypass_csp=True)
                page.goto(f"http://127.0.0.1:{port}/login")
                page.fill("#user", VIEWER[0])
                page.fill("#password", VIEWER[1])
                page.click("#login")
                page.wait_for_function("document.querySelectorAll('.tile [data-testid=visit]').length === 2", timeout=20_000)
                tile = page.locator('.tile[data-key="gate-a/st-01"] [data-testid=visit]')
                assert tile.get_attribute("data-flagged") == "1"
                assert "浙A12345 · 3 人 · 1 发热 · 已登记" in tile.inner_text() and "⚑" in tile.inner_text()
                assert xss[:12] in page.locator('.tile[data-key="gate-a/rogue"] [data-testid=visit]').inner_text()  # as text
                page.locator('.tile[data-key="gate-a/st-01"]').click()
                page.wait_for_selector("#overlay.open")
                assert "浙A12345 · 送货 · 3号楼 · ****8000" in page.get_by_test_id("registration").inner_text()
                assert page.evaluate("window.__pwned === undefined")
            finally:
                browser.close()
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
    assert not thread.is_alive()
