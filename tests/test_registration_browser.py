"""Outsider vehicle registration end to end: the operator page in Debian's chromium, a real Mosquitto, the next visit.

A vehicle lane as the station wires it (app.py: the plate thread ``PlateLoop`` with its
``VisitRecorder``, the store's registration look-up within ``vehicle.registration_valid_h``), its
plates from the scene emulator (sim/vehicle_scene.py ``ScenePlateReader``), the real SQLite store,
the outbox pump publishing to a real mosquitto, and the real operator server (uvicorn). An outsider
car drives through: its visit is not registered. The operator taps "Register" on the page: the plate
is pre-filled from the car just read; they choose a reason, type the destination and phone, enter
the PIN on the keypad and confirm. The ``events/registration`` message arrives at the back end over
mosquitto (the phone as hash and last four digits only); the same car's next visit is recognised as
registered with that registration's id, and the board, fed what the back end received, shows both.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sim.vehicle_scene import FRAME, ScenePlateReader, VehicleScene
from station.board.history import BoardHistory
from station.board.state import BoardState
from station.codes.contact import PhoneHasher
from station.domain.direction import LaneGeometry
from station.domain.model import VisibleFrame
from station.domain.vehicles import VehicleLane
from station.domain.visits import VisitBook
from station.lane.vehicle_loop import PlateLoop
from station.lane.visits import VisitRecorder
from station.store import visits
from station.web.desk import DeskSettings, OperatorDesk
from station.web.operator import OperatorServer
from station.web.pin import hash_pin
from station.web.registration import Registrar
from tests.support.broker import Broker, mosquitto_available
from tests.support.browser import browser
from tests.support.waiting import wait_until

__all__ = ["browser"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not mosquitto_available(), reason="mosquitto not installed"),
]

PIN = "271828"
CAR = VehicleScene("鲁L88888", (), stop_t=0.5, leave_t=1.5, gone_t=2.0)


class VehicleStation:
    """The store and pump (tests/support/sync_rig), the plate thread with its visit recorder, the operator server."""

    def __init__(self, tmp_path: Path, broker: Broker) -> None:
        from tests.support.sync_rig import PREFIX, Collector, Station

        self.backend = Collector(broker.port, "backend", f"{PREFIX}/events/#", persistent=False)
        assert self.backend.subscribed.wait(5), "the back end did not subscribe"
        self.station = Station(tmp_path, broker)
        store = self.station.store
        self.plates_reader = ScenePlateReader(time.monotonic)
        lane = VehicleLane(lambda: set(), min_reads=2, memory_s=1.0)
        self.plates = PlateLoop(self.plates_reader, lane, max_rate_hz=10.0, record=store.record_vehicle)
        self.visits = VisitRecorder(
            lane,
            VisitBook(LaneGeometry()),
            record=lambda rec: visits.record_visit(store, rec),
            registered=lambda plate: visits.registration_for(store, plate, time.time() - 24 * 3600.0),
            lane_direction="entry",
        )
        self.plates.add_frame_listener(self.visits.on_frame)
        self.plates.start()
        self.desk = OperatorDesk(
            store=store,
            gate=None,
            identity={"site": "gate-a", "id": "st-01", "lane": "entry"},
            settings=DeskSettings(language="en", pin_hash=hash_pin(PIN, iterations=2000)),
            devices=dict,
            registrar=Registrar(store, PhoneHasher.from_config("", tmp_path), valid_h=24.0),
        )
        self.server = OperatorServer(self.desk, None, "127.0.0.1", 0)
        self.server.start()
        self.image = np.zeros((FRAME[1], FRAME[0], 3), np.uint8)
        self.seq = 0

    def drive(self, scene: VehicleScene) -> None:
        """Let the car drive through: frames at a camera's pace until it is gone and its visit closed."""
        before = self.visits.counts["recorded"]
        self.plates_reader.drive(scene)
        end = time.monotonic() + scene.gone_t + 8.0
        while self.visits.counts["recorded"] == before and time.monotonic() < end:
            self.seq += 1
            self.plates.offer(VisibleFrame(self.image, self.seq, time.monotonic()))
            time.sleep(0.05)
        assert self.visits.counts["recorded"] == before + 1, self.visits.stats()

    def messages(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.backend.unique().values() if m["_topic"].endswith(f"/events/{kind}")]

    def close(self) -> None:
        self.server.stop()
        self.plates.stop()
        self.station.close()
        self.backend.close()


@pytest.fixture()
def station(tmp_path: Path) -> Iterator[VehicleStation]:
    broker = Broker(tmp_path / "broker")
    broker.start()
    try:
        s = VehicleStation(tmp_path, broker)
        try:
            yield s
        finally:
            s.close()
    finally:
        broker.kill()


def test_register_an_outsider_on_the_page_then_its_next_visit_is_recognised(station: VehicleStation, browser: Any, tmp_path: Path) -> None:
    station.drive(CAR)
    wait_until(lambda: station.messages("visit"), 10, "the first visit at the back end")
    [first] = station.messages("visit")
    assert (first["visit"]["plate"], first["visit"]["kind"], first["visit"]["registered"]) == ("鲁L88888", "outsider_vehicle", False)

    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(station.server.url)
    page.wait_for_function("document.getElementById('outsider-plate').textContent === '鲁L88888'", timeout=15_000)
    assert page.get_by_test_id("vehicles").is_visible()

    page.get_by_test_id("register-outsider").click()
    assert page.get_by_test_id("reg-row").is_visible() and not page.get_by_test_id("staff-row").is_visible()
    assert page.get_by_test_id("reg-plate").input_value() == "鲁L88888"  # pre-filled from the car just read
    page.get_by_test_id("pin-operator").fill("Zhao Min")
    page.get_by_test_id("reg-destination").fill("3号楼 物业")
    page.get_by_test_id("reg-phone").fill("138-0013-8000")
    page.get_by_test_id("pin-ok").click()  # no reason chosen yet: caught on the page, nothing sent
    assert page.get_by_test_id("pin-error").text_content() == "Choose a reason"
    page.get_by_test_id("reg-reason-delivery").click()
    page.get_by_test_id("reg-plate").fill("<b>鲁L88888</b>")  # hostile edit: refused by the station, named
    for digit in PIN:
        page.locator("#keypad button", has_text=digit).first.click()
    page.get_by_test_id("pin-ok").click()
    page.wait_for_function("document.getElementById('pin-error').textContent.startsWith('plate must be')", timeout=10_000)
    assert visits.registrations_tail(station.station.store, 5) == []
    page.get_by_test_id("reg-plate").fill("鲁L·88888")
    for digit in PIN:
        page.locator("#keypad button", has_text=digit).first.click()
    page.get_by_test_id("pin-ok").click()
    page.wait_for_selector("[data-testid=registration-list] li", timeout=10_000)
    assert not page.get_by_test_id("pin-dialog").is_visible()
    shown = page.get_by_test_id("registration-list").inner_text()
    assert "鲁L88888" in shown and "Delivery" in shown and "****8000" in shown and "13800138000" not in shown

    # The registration at the back end, over mosquitto: the phone only as a keyed hash and four digits.
    wait_until(lambda: station.messages("registration"), 10, "the registration at the back end")
    [msg] = station.messages("registration")
    reg = msg["registration"]
    assert (reg["plate"], reg["reason"], reg["destination"], reg["phone_last4"], reg["operator"]) == (
        "鲁L88888",
        "delivery",
        "3号楼 物业",
        "8000",
        "Zhao Min",
    )
    assert reg["vehicle_id"] == first["visit"]["vehicle_id"] and len(reg["phone_hash"]) == 64
    assert "13800138000" not in str(station.backend.raw())

    # The same car again: recognised as registered, with that registration's id.
    station.drive(CAR)
    wait_until(lambda: len(station.messages("visit")) == 2, 10, "the second visit at the back end")
    second = next(m["visit"] for m in station.messages("visit") if m["visit"]["visit_id"] != first["visit"]["visit_id"])
    assert (second["plate"], second["registered"], second["registration_id"]) == ("鲁L88888", True, reg["registration_id"])

    # The board, fed what the back end received.
    board = BoardState(BoardHistory(tmp_path / "board.sqlite3"), "checkpoint/v1")
    for topic, payload, _retained in station.backend.raw():
        board.handle(topic, payload)
    [row] = board.view()["stations"]
    assert [r["registration_id"] for r in row["registrations"]] == [reg["registration_id"]]
    assert [v["registered"] for v in row["visits"]] == [True, False]
    page.close()
