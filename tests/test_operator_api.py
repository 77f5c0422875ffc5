"""The operator display's HTTP API with a real store, the real gate driver on gpiozero's mock pins
and, for the streams, the real uvicorn server on a free port."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from starlette.testclient import TestClient

from drivers.gate.gpio_gate import GpioGate
from station.config import StationConfig
from station.domain.model import Box, FaceDetection, FaceObservation, GateAction, GateResult, ThermalFrame, VisibleFrame
from station.lane.pipeline import Decided
from station.store.events import SqliteEventStore
from station.web.desk import DeskSettings, OperatorDesk
from station.web.live import BOUNDARY, LiveView
from station.web.operator import OperatorServer, create_app
from station.web.pin import PinGuard, hash_pin, verify_pin
from tests.support.events import make_event

PIN = "739184620571"  # long enough never to turn up by chance in random hex ids
PIN_HASH = hash_pin(PIN, iterations=2000)  # the real scheme, fewer rounds: tests hash dozens of times


class Rig:
    def __init__(self, tmp_path: Path, **settings: object) -> None:
        self.db = tmp_path / "events.sqlite3"
        self.store = SqliteEventStore(self.db, station_id="st-01", site="gate-a")
        self.store.begin_session()
        self.gate = GpioGate(17, 27, 22, 23, 24, pin_factory="mock", open_s=0.2)
        opts = {"pin_hash": PIN_HASH, "pin_max_failures": 3, "pin_lock_s": 600.0, "overrides_per_min": 2, **settings}
        self.desk = OperatorDesk(
            store=self.store,
            gate=self.gate,
            identity={"site": "gate-a", "id": "st-01", "lane": "entry"},
            settings=DeskSettings(**opts),  # type: ignore[arg-type]
            devices=lambda: {"thermal": "connected", "camera": "running", "detector": "ok", "mqtt": "off"},
            direction_counts=lambda: {"entry": 4, "exit": 1},
        )
        self.client = TestClient(create_app(self.desk), base_url="http://127.0.0.1:8080")

    def decide(self, i: int, alarm: bool) -> Decided:
        event = make_event(i, alarm=alarm)
        self.store.record(event)
        action = GateAction.ALARM if alarm else GateAction.OPEN
        d = Decided(event, GateResult(event.event_id, action, True, "ok", time.monotonic()), 3.0, 4.0)
        self.desk.on_decided(d)
        return d

    def rows(self, sql: str) -> list[tuple]:
        with sqlite3.connect(self.db) as conn:
            return conn.execute(sql).fetchall()

    def audit_outbox(self) -> list[dict]:
        return [json.loads(p) for (p,) in self.rows("SELECT payload FROM outbox WHERE topic LIKE '%/events/audit' ORDER BY id")]

    def relay_on_count(self) -> int:
        return sum(1 for _, out, value in self.gate.history() if out == "relay" and value is True)

    def close(self) -> None:
        self.client.close()
        self.gate.close()
        self.store.close()


@pytest.fixture()
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    r.close()


def test_status_shape_counts_last_decision_and_alarms(rig: Rig) -> None:
    rig.decide(1, alarm=False)
    fever = rig.decide(2, alarm=True)
    s = rig.client.get("/api/status").json()
    assert s["station"] == {"site": "gate-a", "id": "st-01", "lane": "entry"}
    assert s["devices"]["thermal"] == "connected"
    assert s["counts"]["total"] == 2 and s["counts"]["pass"] == 1 and s["counts"]["fever"] == 1
    assert s["counts"]["direction_entry"] == 4
    assert s["last_decision"]["event_id"] == fever.event.event_id
    assert s["last_decision"]["decision"] == "deny_fever"
    # The reason in words for the public, both languages (station/domain/prompts.py); no next step yet.
    assert s["last_decision"]["words"] == {"key": "fever", "zh": "体温异常", "en": "Temperature high"}
    assert s["prompt"] is None
    assert [a["event_id"] for a in s["alarms"]] == [fever.event.event_id]
    assert s["alarms"][0]["ack"] is None and s["unacknowledged"] == 1
    assert s["ui"] == {
        "language": "zh",
        "pin_configured": True,
        "fever_threshold_c": 37.3,
        "staff_check_reasons": ["id_checked", "paper_certificate", "escorted"],
        "staff_check_decisions": ["pass", "deny_code", "manual_check"],
        "registration_reasons": [],  # no vehicle lane: nothing to register
    }


def test_page_and_static_files_are_served(rig: Rig) -> None:
    page = rig.client.get("/")
    assert page.status_code == 200 and "operator.js" in page.text and 'id="alarm-list"' in page.text
    js = rig.client.get("/static/operator.js")
    assert js.status_code == 200 and "EventSource" in js.text


def test_last_decision_survives_a_restart(tmp_path: Path) -> None:
    first = Rig(tmp_path)
    d = first.decide(1, alarm=True)
    first.close()
    again = Rig(tmp_path)
    try:
        s = again.client.get("/api/status").json()
        assert s["last_decision"]["event_id"] == d.event.event_id
        assert s["unacknowledged"] == 1
    finally:
        again.close()


def test_wrong_pin_is_refused_and_audited_and_the_pin_never_stored(rig: Rig) -> None:
    fever = rig.decide(1, alarm=True)
    r = rig.client.post(f"/api/alarms/{fever.event.event_id}/ack", json={"operator": "Li Wei", "pin": "111122223333"})
    assert r.status_code == 403 and r.json()["reason"] == "wrong_pin" and r.json()["attempts_left"] == 2
    assert rig.rows("SELECT action, operator, ok, reason, event_id FROM operator_actions") == [
        ("ack", "Li Wei", 0, "wrong_pin", fever.event.event_id)
    ]
    assert rig.client.get("/api/status").json()["alarms"][0]["ack"] is None
    sent = rig.audit_outbox()
    assert sent[-1]["kind"] == "operator_action" and sent[-1]["ok"] is False and sent[-1]["reason"] == "wrong_pin"
    with sqlite3.connect(rig.db) as conn:  # neither the wrong nor the right PIN is anywhere in the file
        dump = "\n".join(conn.iterdump())
    assert "111122223333" not in dump and PIN not in dump


def test_acknowledge_records_who_and_when(rig: Rig) -> None:
    fever = rig.decide(1, alarm=True)
    before = time.time()
    r = rig.client.post(f"/api/alarms/{fever.event.event_id}/ack", json={"operator": "  Li   Wei ", "pin": PIN})
    assert r.status_code == 200 and r.json()["operator"] == "Li Wei"
    alarm = rig.client.get("/api/status").json()["alarms"][0]
    assert alarm["ack"]["operator"] == "Li Wei" and alarm["ack"]["ts"] >= before
    assert rig.client.get("/api/status").json()["unacknowledged"] == 0
    assert rig.rows("SELECT action, ok, reason FROM operator_actions") == [("ack", 1, "ok")]
    assert rig.audit_outbox()[-1]["action"] == "ack" and rig.audit_outbox()[-1]["event_id"] == fever.event.event_id


def test_actions_accept_only_json_so_other_sites_cannot_post_them(rig: Rig) -> None:
    r = rig.client.post("/api/override/open-gate", content=json.dumps({"pin": PIN}), headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and rig.relay_on_count() == 0
    assert rig.rows("SELECT count(*) FROM operator_actions") == [(0,)]


def test_ack_of_an_unknown_or_non_alarm_event_is_404(rig: Rig) -> None:
    ok = rig.decide(1, alarm=False)
    assert rig.client.post("/api/alarms/nope/ack", json={"pin": PIN}).status_code == 404
    assert rig.client.post(f"/api/alarms/{ok.event.event_id}/ack", json={"pin": PIN}).status_code == 404


def test_open_gate_once_goes_through_the_audited_command_path(rig: Rig) -> None:
    r = rig.client.post("/api/override/open-gate", json={"operator": "Zhang", "pin": PIN})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["executed"] is True and body["audit_id"].startswith("cmd:operator-")
    assert rig.relay_on_count() == 1
    # The same gate_actions row and events/audit message as an MQTT cmd/open-gate ...
    assert rig.rows(f"SELECT action, executed FROM gate_actions WHERE event_id = '{body['audit_id']}'") == [("open", 1)]
    kinds = [(m["kind"], m.get("action")) for m in rig.audit_outbox()]
    assert ("remote_gate_action", "open") in kinds and ("operator_action", "open_gate") in kinds
    gate_msg = next(m for m in rig.audit_outbox() if m["kind"] == "remote_gate_action")
    assert gate_msg["command"]["args"] == {"operator": "Zhang", "source": "operator-display"}
    assert gate_msg["command"]["deadline"] > time.time() - 60
    # ... plus the operator's own row.
    assert rig.rows("SELECT action, operator, ok, detail FROM operator_actions") == [
        ("open_gate", "Zhang", 1, json.dumps({"gate_audit_id": body["audit_id"]}, separators=(",", ":")))
    ]


def test_recheck_records_the_clinical_value_against_the_event(rig: Rig) -> None:
    fever = rig.decide(1, alarm=True)
    r = rig.client.post(
        "/api/override/recheck", json={"event_id": fever.event.event_id, "clinical_c": 36.9, "operator": "Zhang", "pin": PIN}
    )
    assert r.status_code == 200, r.text
    row = rig.store.operator_actions(event_id=fever.event.event_id)[0]
    assert row["action"] == "recheck" and row["ok"] is True
    assert row["detail"] == {"clinical_c": 36.9, "station_c": 38.4, "decision": "deny_fever", "fever": False}
    assert rig.audit_outbox()[-1]["detail"]["clinical_c"] == 36.9
    bad = rig.client.post(
        "/api/override/recheck", json={"event_id": fever.event.event_id, "clinical_c": 80, "operator": "Zhang", "pin": PIN}
    )
    assert bad.status_code == 400
    missing = rig.client.post("/api/override/recheck", json={"event_id": "nope", "clinical_c": 36.5, "pin": PIN})
    assert missing.status_code == 404


def test_wrong_pins_lock_even_the_right_pin_out(rig: Rig) -> None:
    for left in (2, 1, 0):
        r = rig.client.post("/api/override/open-gate", json={"pin": "0000"})
        assert r.status_code == 403 and r.json()["attempts_left"] == left
    r = rig.client.post("/api/override/open-gate", json={"pin": PIN})
    assert r.status_code == 429 and r.json()["reason"] == "locked" and r.json()["retry_after_s"] > 0
    assert rig.relay_on_count() == 0
    reasons = [r for (r,) in rig.rows("SELECT reason FROM operator_actions ORDER BY id")]
    assert reasons == ["wrong_pin", "wrong_pin", "wrong_pin", "locked"]
    assert rig.client.get("/api/status").json()["pin_locked_s"] > 0


def test_overrides_are_rate_limited(rig: Rig) -> None:
    for _ in range(2):
        assert rig.client.post("/api/override/open-gate", json={"pin": PIN}).status_code == 200
    r = rig.client.post("/api/override/open-gate", json={"pin": PIN})
    assert r.status_code == 429 and r.json()["reason"] == "rate_limited"
    assert rig.rows("SELECT count(*) FROM gate_actions WHERE executed = 1") == [(2,)]
    # An acknowledgement is not an override: still allowed.
    fever = rig.decide(1, alarm=True)
    assert rig.client.post(f"/api/alarms/{fever.event.event_id}/ack", json={"pin": PIN}).status_code == 200


def test_no_pin_configured_refuses_every_action(tmp_path: Path) -> None:
    r = Rig(tmp_path, pin_hash="")
    try:
        resp = r.client.post("/api/override/open-gate", json={"pin": ""})
        assert resp.status_code == 403 and resp.json()["reason"] == "no_pin_configured"
        assert r.relay_on_count() == 0
    finally:
        r.close()


def test_pin_hash_is_salted_and_the_guard_unlocks_after_its_time() -> None:
    a, b = hash_pin("123456", iterations=1000), hash_pin("123456", iterations=1000)
    assert a != b and verify_pin("123456", a) and verify_pin("123456", b) and not verify_pin("123457", a)
    assert not verify_pin("123456", "") and not verify_pin("123456", "md5$1$00$00")
    for bad in ("12a456", "1234", "12345", "1234567890123"):
        with pytest.raises(ValueError):
            hash_pin(bad)  # new PINs: 6 to 12 digits
    # A PIN hashed before the 6-digit rule still verifies (same scheme, built by hand here).
    salt = bytes(16)
    legacy = f"pbkdf2_sha256$1000${salt.hex()}${hashlib.pbkdf2_hmac('sha256', b'1234', salt, 1000).hex()}"
    assert verify_pin("1234", legacy) and not verify_pin("1235", legacy)
    now = [100.0]
    guard = PinGuard(2, 30.0, 5, clock=lambda: now[0])
    assert guard.failed() == 1 and guard.failed() == 0 and guard.locked_for() == 30.0
    now[0] += 30.0
    assert guard.locked_for() == 0.0
    # Each further lockout doubles, up to the cap; a right PIN starts again from the first length.
    assert guard.failed() == 1 and guard.failed() == 0 and guard.locked_for() == 60.0
    now[0] += 60.0
    assert guard.failed() == 1 and guard.failed() == 0 and guard.locked_for() == 120.0
    now[0] += 120.0
    assert guard.begin().granted
    guard.succeeded()
    assert guard.failed() == 1 and guard.failed() == 0 and guard.locked_for() == 30.0
    capped = PinGuard(1, 30.0, 5, clock=lambda: now[0], max_lock_s=100.0)
    for expected in (30.0, 60.0, 100.0, 100.0):
        assert capped.failed() == 0 and capped.locked_for() == expected
        now[0] += expected
    assert StationConfig.model_validate({"http": {"pin_hash": a}}).http.pin_hash == a


# -- streams on the real server -------------------------------------------------------------------


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[Rig, LiveView, OperatorServer]]:
    rig = Rig(tmp_path)
    live = LiveView(np.array(StationConfig().thermal.registration), fps=10.0, width=320)
    server = OperatorServer(rig.desk, live, "127.0.0.1", 0)
    server.start()
    try:
        yield rig, live, server
    finally:
        server.stop()
        rig.close()


def sse_events(lines: Iterator[str]) -> Iterator[tuple[str, dict]]:
    kind = ""
    for line in lines:
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            yield kind, json.loads(line[6:])


def test_sse_delivers_decisions_alarms_and_acks(served: tuple[Rig, LiveView, OperatorServer]) -> None:
    rig, _, server = served
    with httpx.stream("GET", server.url + "api/events/stream", timeout=10) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = sse_events(resp.iter_lines())
        kind, first = next(events)
        assert kind == "status" and first["station"]["id"] == "st-01"
        assert rig.desk.subscribers() == 1
        fever = rig.decide(7, alarm=True)
        got = [next(events) for _ in range(2)]
        assert got[0][0] == "decision" and got[0][1]["event_id"] == fever.event.event_id and got[0][1]["decision"] == "deny_fever"
        assert got[0][1]["words"]["zh"] == "体温异常" and got[0][1]["words"]["en"] == "Temperature high"
        assert got[1][0] == "alarm" and got[1][1]["ack"] is None
        httpx.post(server.url + f"api/alarms/{fever.event.event_id}/ack", json={"operator": "Li", "pin": PIN}).raise_for_status()
        kind, ack = next((k, d) for k, d in events if k == "ack")
        assert ack["operator"] == "Li" and ack["event_id"] == fever.event.event_id
        # The lane's next step reaches the page as words (the prompt watcher calls on_prompt).
        rig.desk.on_prompt({"state": "screening", "prompt": {"key": "show_code", "zh": "请出示健康码", "en": "Show your health code"}})
        kind, step = next((k, d) for k, d in events if k == "prompt")
        assert step["prompt"]["zh"] == "请出示健康码" and step["state"] == "screening"
        assert rig.client.get("/api/status").json()["prompt"] == step


def mjpeg_parts(chunks: Iterator[bytes], n: int) -> list[bytes]:
    buf, parts = b"", []
    for chunk in chunks:
        buf += chunk
        while True:
            head = buf.find(b"\r\n\r\n")
            if head < 0 or not buf.startswith(f"--{BOUNDARY}".encode()):
                break
            header = next(line for line in buf[:head].split(b"\r\n") if line.lower().startswith(b"content-length"))
            length = int(header.split(b":")[1])
            if len(buf) < head + 4 + length + 2:
                break
            parts.append(buf[head + 4 : head + 4 + length])
            buf = buf[head + 4 + length + 2 :]
            if len(parts) == n:
                return parts
    return parts


def test_mjpeg_one_encoder_shared_by_every_viewer(served: tuple[Rig, LiveView, OperatorServer]) -> None:
    _, live, server = served
    image = np.full((480, 640, 3), 90, np.uint8)
    live.offer_frame(VisibleFrame(image, seq=1, t=time.monotonic()))
    with (
        httpx.stream("GET", server.url + "api/live.mjpeg", timeout=10) as a,
        httpx.stream("GET", server.url + "api/live.mjpeg", timeout=10) as b,
    ):
        assert a.headers["content-type"].startswith("multipart/x-mixed-replace")
        # Keep the byte iterators: dropping one closes its connection (the server then sees a leaver).
        chunks_a, chunks_b = a.iter_bytes(), b.iter_bytes()
        pa, pb = mjpeg_parts(chunks_a, 1), mjpeg_parts(chunks_b, 1)
        assert pa and pa == pb  # the very same bytes: encoded once, sent to both
        decoded = cv2.imdecode(np.frombuffer(pa[0], np.uint8), cv2.IMREAD_COLOR)
        assert decoded.shape == (240, 320, 3)
        assert live.stats()["viewers"] == 2
    # One camera frame, two viewers: one encode (the frame never changed).
    assert live.stats()["encoded"] == 1


def test_live_picture_draws_face_box_and_thermal_overlay() -> None:
    live = LiveView(np.array(StationConfig().thermal.registration), width=640)
    image = np.full((480, 640, 3), 90, np.uint8)
    now = time.monotonic()
    plain = cv2.imdecode(np.frombuffer(live.render(VisibleFrame(image, 1, now)), np.uint8), cv2.IMREAD_COLOR)
    pixels = np.full((24, 32), 22.0, np.float32)
    pixels[8:16, 12:20] = 36.0  # a warm face in the middle of the thermal image
    live.offer_thermal(ThermalFrame(pixels, 30.0, 1, now))
    live.offer_faces(FaceObservation(1, now, now, (FaceDetection(Box(100, 100, 200, 220), 0.9),), (640, 480), 5.0))
    drawn = cv2.imdecode(np.frombuffer(live.render(VisibleFrame(image, 2, now)), np.uint8), cv2.IMREAD_COLOR)
    diff = np.abs(drawn.astype(int) - plain.astype(int)).sum(axis=2)
    assert diff[100:221, 100].mean() > 60  # the face box's left edge
    assert diff[240, 320] > 60  # the warm region, registered onto the picture centre
    assert diff[20, 620] < 20  # a cold corner stays as it was


@pytest.mark.slow
def test_a_busy_port_leaves_the_station_screening_without_its_display(tmp_path: Path) -> None:
    import socket

    from sim.demo import DemoRun

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        cfg = StationConfig()
        cfg.http.enabled, cfg.http.port, cfg.http.pin_hash = True, busy.getsockname()[1], PIN_HASH
        run = DemoRun(cfg, people=1, data_dir=tmp_path / "demo", fast=True, wait_for_page=True)
        result = run.run(max_s=60)
    assert run.app is not None and run.app.http is None  # logged, not fatal; and the demo did not wait for a page
    assert [d.event.decision.value for _, d in result.decided] == ["pass"]
