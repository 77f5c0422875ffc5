"""The operator-assisted check over the operator page's HTTP API, on a real running lane.

A person without a smartphone stands at the gate (tests/support/staff_lane.py: the station's
pipeline, lane, SQLite store and mock-pin gate): the lane measures them, waits for a code, decides
``retry``/``no_code``; then staff decide through ``POST /api/override/staff-check``. Checked: the
PIN and the override budget guard it and every refusal is audited; the decision is an event with
``decision_source`` ``staff`` and the chosen reason, on the MQTT outbox too, and its audit row
names the operator, the reason and that event; the temperature policy still holds.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from station.domain.screening import LaneState
from station.web.desk import STAFF_CHECK_REASONS, DeskSettings, OperatorDesk
from station.web.operator import create_app
from station.web.pin import hash_pin
from tests.support.staff_lane import StaffLane
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow  # a running pipeline: a few seconds per test

PIN = "482916"
PIN_HASH = hash_pin(PIN, iterations=2000)
URL = "/api/override/staff-check"


class Desk:
    def __init__(self, tmp_path: Path, core_c: float = 36.6, **settings: Any) -> None:
        self.lane = StaffLane(tmp_path, core_c=core_c)
        opts = {"pin_hash": PIN_HASH, "pin_max_failures": 3, "pin_lock_s": 600.0, "overrides_per_min": 2, **settings}
        self.desk = OperatorDesk(
            store=self.lane.store,
            gate=self.lane.gate,
            identity={"site": "gate-a", "id": "st-01", "lane": "entry"},
            settings=DeskSettings(**opts),
            devices=dict,
            staff_check=self.lane.pipeline.staff_check,
        )
        self.lane.pipeline.add_listener(self.desk.on_decided)  # as start_operator_display wires it
        self.client = TestClient(create_app(self.desk), base_url="http://127.0.0.1:8080")

    def wait_decided(self) -> None:
        """Wait until the lane decided the standing person by itself (no code: retry)."""
        wait_until(lambda: self.lane.decided and self.lane.pipeline.lane.state is LaneState.DECIDED, timeout=15)

    def post(self, **body: Any) -> Any:
        return self.client.post(URL, json={"operator": "Wang Li", **body})

    def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.lane.db) as conn:
            return conn.execute(sql, args).fetchall()

    def audit(self) -> list[tuple[Any, ...]]:
        return self.rows("SELECT action, operator, ok, reason, event_id, detail FROM operator_actions ORDER BY id")

    def close(self) -> None:
        self.client.close()
        self.lane.close()


@pytest.fixture()
def desk(tmp_path: Path) -> Iterator[Desk]:
    d = Desk(tmp_path)
    yield d
    d.close()


def test_wrong_pin_is_refused_and_audited_and_decides_nothing(desk: Desk) -> None:
    desk.wait_decided()
    r = desk.post(pin="000000", reason="id_checked")
    assert r.status_code == 403
    assert r.json()["reason"] == "wrong_pin"
    assert r.json()["attempts_left"] == 2
    assert [a[:4] for a in desk.audit()] == [("staff_check", "Wang Li", 0, "wrong_pin")]
    assert PIN not in json.dumps(desk.audit()) and "000000" not in json.dumps(desk.audit())
    assert [s for _, _, s in desk.lane.decisions()] == ["station"]


def test_right_pin_decides_the_person_at_the_gate_as_staff_with_the_reason(desk: Desk) -> None:
    desk.wait_decided()
    assert desk.lane.decisions() == [("retry", "no_code", "station")]
    first = desk.lane.decided[0].event
    r = desk.post(pin=PIN, reason="paper_certificate")
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["decision_source"] == "staff" and out["decision"] == "pass" and out["reason"] == "paper_certificate"
    wait_until(lambda: len(desk.lane.decided) == 2, timeout=5)
    decided = desk.lane.decided[1]
    event = desk.lane.store.event(out["event_id"])
    assert event is not None
    assert (event["decision"], event["reason"], event["decision_source"]) == ("pass", "staff:paper_certificate", "staff")
    # The same person: the reading the lane took stands, the staff check only replaced the code.
    assert event["temperature_c"] == first.temperature_c and 36.0 <= event["temperature_c"] <= 37.2
    assert event["face"]["track_id"] == first.face["track_id"]
    assert decided.gate.action.value == "open" and decided.gate.executed
    # Audited like the other overrides: operator, time, reason, the event it decided.
    action, operator, ok, reason, event_id, detail = desk.audit()[-1]
    assert (action, operator, ok, reason, event_id) == ("staff_check", "Wang Li", 1, "ok", out["event_id"])
    assert json.loads(detail) == {"reason": "paper_certificate", "decision": "pass"}
    # Both reach the command centre: the event (with its source) and the audit message.
    payloads = [json.loads(p) for (p,) in desk.rows("SELECT payload FROM outbox ORDER BY id")]
    screening = [p["event"] for p in payloads if p.get("event", {}).get("event_id") == out["event_id"]]
    assert screening and screening[0]["decision_source"] == "staff" and screening[0]["reason"] == "staff:paper_certificate"
    audits = [p for p in payloads if p.get("kind") == "operator_action" and p.get("action") == "staff_check"]
    assert audits and audits[-1]["event_id"] == out["event_id"] and audits[-1]["detail"]["reason"] == "paper_certificate"
    # The page's status shows who decided.
    assert desk.client.get("/api/status").json()["last_decision"]["decision_source"] == "staff"


def test_staff_may_deny_or_call_a_manual_check_and_the_gate_follows(desk: Desk) -> None:
    desk.wait_decided()
    r = desk.post(pin=PIN, reason="id_checked", decision="deny_code")
    assert r.status_code == 200, r.text
    wait_until(lambda: len(desk.lane.decided) == 2, timeout=5)
    decided = desk.lane.decided[1]
    assert (decided.event.decision.value, decided.event.decision_source) == ("deny_code", "staff")
    assert decided.gate.action.value == "hold"


def test_unknown_reason_or_decision_is_a_400_with_the_allowed_list(desk: Desk) -> None:
    r = desk.post(pin=PIN, reason="looked_honest")
    assert r.status_code == 400
    assert r.json()["reason"] == "bad_reason" and r.json()["allowed"] == list(STAFF_CHECK_REASONS)
    r = desk.post(pin=PIN, reason="escorted", decision="deny_fever")
    assert r.status_code == 400
    assert r.json()["allowed"] == ["pass", "deny_code", "manual_check"]
    for hostile in ({"reason": ["id_checked"]}, {"reason": None}, {"reason": "id_checked", "decision": 1}):
        assert desk.post(pin=PIN, **hostile).status_code == 400


def test_staff_checks_are_rate_limited_like_the_other_overrides(desk: Desk) -> None:
    desk.wait_decided()
    assert desk.post(pin=PIN, reason="escorted").status_code == 200
    assert desk.post(pin=PIN, reason="escorted").status_code == 200  # the same person again: a second record
    r = desk.post(pin=PIN, reason="escorted")
    assert r.status_code == 429 and r.json()["reason"] == "rate_limited"
    assert [(a[0], a[2], a[3]) for a in desk.audit()] == [
        ("staff_check", 1, "ok"),
        ("staff_check", 1, "ok"),
        ("staff_check", 0, "rate_limited"),
    ]
    wait_until(lambda: len(desk.lane.decided) == 3, timeout=5)
    assert [s for _, _, s in desk.lane.decisions()] == ["station", "staff", "staff"]


def test_wrong_pins_lock_the_staff_check(desk: Desk) -> None:
    for _ in range(3):
        desk.post(pin="111111", reason="id_checked")
    r = desk.post(pin=PIN, reason="id_checked")
    assert r.status_code == 429 and r.json()["reason"] == "locked"
    assert [a[3] for a in desk.audit()] == ["wrong_pin", "wrong_pin", "wrong_pin", "locked"]


def test_nobody_at_the_gate_is_refused_and_audited(desk: Desk) -> None:
    desk.wait_decided()
    desk.lane.detector.present.clear()
    wait_until(lambda: desk.lane.pipeline.lane.state is LaneState.IDLE, timeout=5)
    r = desk.post(pin=PIN, reason="escorted")
    assert r.status_code == 409 and r.json()["reason"] == "nobody_at_gate"
    assert [(a[2], a[3]) for a in desk.audit()] == [(0, "nobody_at_gate")]
    assert len(desk.lane.decided) == 1


def test_staff_cannot_pass_a_fever(tmp_path: Path) -> None:
    d = Desk(tmp_path, core_c=38.6)
    try:
        wait_until(lambda: d.lane.decided, timeout=15)
        assert d.lane.decisions()[0][0] == "deny_fever"
        r = d.post(pin=PIN, reason="paper_certificate")
        assert r.status_code == 409 and r.json()["reason"] == "fever"
        assert [(a[2], a[3]) for a in d.audit()] == [(0, "fever")]
        assert [s for _, _, s in d.lane.decisions()] == ["station"]
    finally:
        d.close()
