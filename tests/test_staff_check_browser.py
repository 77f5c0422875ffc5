"""The operator-assisted check end to end in Debian's chromium (Playwright): tap, reason, PIN, decision, audit, board.

A person without a smartphone stands at a real running lane (tests/support/staff_lane.py) behind
the real operator server (uvicorn). The lane decides ``retry`` (no code) by itself; the operator taps
"checked by staff", chooses "paper certificate", enters the PIN on the keypad and confirms. The page
then shows the pass decided by staff; the audit row names the operator, the reason and the event;
and the command-centre board, fed the station's own outbox messages, shows the source on the
station's tile state.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from station.board.history import BoardHistory
from station.board.state import BoardState
from station.domain.screening import LaneState
from station.web.desk import DeskSettings, OperatorDesk
from station.web.operator import OperatorServer
from station.web.pin import hash_pin
from tests.support.browser import browser
from tests.support.staff_lane import StaffLane

__all__ = ["browser"]

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PIN = "271828"


class Station:
    def __init__(self, tmp_path: Path) -> None:
        self.lane = StaffLane(tmp_path)
        self.desk = OperatorDesk(
            store=self.lane.store,
            gate=self.lane.gate,
            identity={"site": "gate-a", "id": "st-01", "lane": "entry"},
            settings=DeskSettings(language="en", pin_hash=hash_pin(PIN, iterations=2000)),
            devices=dict,
            staff_check=self.lane.pipeline.staff_check,
        )
        self.lane.pipeline.add_listener(self.desk.on_decided)
        self.server = OperatorServer(self.desk, None, "127.0.0.1", 0)
        self.server.start()

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.lane.db) as conn:
            return conn.execute(sql).fetchall()

    def close(self) -> None:
        self.server.stop()
        self.lane.close()


@pytest.fixture()
def station(tmp_path: Path) -> Iterator[Station]:
    s = Station(tmp_path)
    yield s
    s.close()


def test_operator_checks_a_person_without_a_smartphone_on_the_touch_page(station: Station, browser: Any, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(station.server.url)
    # The person stood there without a phone: the station itself asked them to retry.
    page.wait_for_function("document.body.dataset.decision === 'retry'", timeout=20_000)
    assert station.lane.pipeline.lane.state is LaneState.DECIDED
    assert not page.get_by_test_id("source").is_visible()

    page.get_by_test_id("staff-check").click()
    dialog = page.get_by_test_id("pin-dialog")
    assert dialog.is_visible()
    assert page.get_by_test_id("staff-row").is_visible()
    assert not page.get_by_test_id("pin-clinical").is_visible()
    # Confirming without a reason is caught on the page (nothing sent, nothing audited).
    page.get_by_test_id("pin-operator").fill("Zhao Min")
    page.get_by_test_id("pin-ok").click()
    assert page.get_by_test_id("pin-error").text_content() == "Choose a reason"
    page.get_by_test_id("staff-reason-paper_certificate").click()
    assert "chosen" in (page.get_by_test_id("staff-decision-pass").get_attribute("class") or "")
    for digit in PIN:
        page.locator("#keypad button", has_text=digit).first.click()
    page.get_by_test_id("pin-ok").click()

    page.wait_for_function("document.body.dataset.decision === 'pass'", timeout=10_000)
    # The dialog closes on the POST's answer, which may come after the decision's SSE message.
    dialog.wait_for(state="hidden", timeout=5_000)
    assert page.get_by_test_id("source").is_visible()
    assert page.get_by_test_id("source").text_content() == "decided by staff"
    assert page.get_by_test_id("decision").text_content() == "PASS"

    # The event and its audit row.
    event = json.loads(station.rows("SELECT record FROM events ORDER BY id DESC LIMIT 1")[0][0])
    assert (event["decision"], event["reason"], event["decision_source"]) == ("pass", "staff:paper_certificate", "staff")
    audit = station.rows("SELECT action, operator, ok, reason, event_id, detail, ts FROM operator_actions")
    assert [a[:5] for a in audit] == [("staff_check", "Zhao Min", 1, "ok", event["event_id"])]
    assert json.loads(audit[0][5]) == {"reason": "paper_certificate", "decision": "pass"}
    assert abs(audit[0][6] - event["ts"]) < 5

    # The board: the station's own outbox messages, as the command centre receives them.
    board = BoardState(BoardHistory(tmp_path / "board.sqlite3"), "checkpoint/v1")
    for topic, payload in station.rows("SELECT topic, payload FROM outbox ORDER BY id"):
        board.handle(topic, payload.encode() if isinstance(payload, str) else payload)
    tile = next(s for s in board.view()["stations"] if s["station"] == "st-01")
    assert tile["last"]["decision"] == "pass" and tile["last"]["decision_source"] == "staff"
    assert tile["today"]["by_decision"] == {"retry": 1, "pass": 1}
    page.close()
