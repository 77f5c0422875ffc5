"""A vehicle visit is one record: replayed vehicle scenes through the real vehicle lane, screening lane, visit recorder and store.

The scenes (sim/vehicle_scene.py) have a car roll up, its occupants screened one by one at the
window (each with their own temperature and code) and the car drive off. Checked: one visit per
car, its occupants' screenings linked by visit id (``visit_occupants`` and the record), the summary
the centre reads, the flag for a denied occupant, the direction, the registration recognised within
its window, and what is not a visit (a stray plate, a pedestrian with no car there).
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from sim.vehicle_scene import SceneOccupant, VehicleScene, vehicle_scenario
from station.domain.direction import LaneGeometry
from station.domain.vehicles import VehicleLane
from station.domain.visits import VisitBook
from station.lane.visits import VisitRecorder
from station.store import visits
from station.store.events import SqliteEventStore
from station.store.retention import purge
from tests.support.screening_obs import lane
from tests.support.vehicle_replay import replay

WALL0 = 1_795_000_000.0


class Rig:
    """The vehicle lane's parts as the station wires them (app.py ``_visit_recorder``), with a store in ``tmp_path``."""

    def __init__(
        self, tmp_path: Path, residents: set[str] | None = None, window_s: float = 24 * 3600.0, lane_direction: str = "both"
    ) -> None:
        self.db = tmp_path / "events.sqlite3"
        self.store = SqliteEventStore(self.db, station_id="st-01", site="gate-a")
        self.store.begin_session()
        self.wall = WALL0
        self.vehicles = VehicleLane(lambda: residents or set(), min_reads=2)
        self.recorder = VisitRecorder(
            self.vehicles,
            VisitBook(LaneGeometry(), min_sightings=2),
            record=lambda rec: visits.record_visit(self.store, rec),
            registered=lambda plate: visits.registration_for(self.store, plate, self.wall - window_s),
            lane_direction=lane_direction,
            wall=lambda: self.wall,
        )

    def set_wall(self, wall: float) -> None:
        self.wall = wall

    def run(self, scene: VehicleScene, t0: float = 0.0, wall0: float = WALL0) -> list[Any]:
        return replay(scene, self.vehicles, lane(), self.recorder, store=self.store, t0=t0, wall0=wall0, set_wall=self.set_wall)

    def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.db)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    def messages(self, kind: str) -> list[dict[str, Any]]:
        return [json.loads(p) for t, p in self.rows("SELECT topic, payload FROM outbox ORDER BY id") if t.endswith(f"/events/{kind}")]


@pytest.fixture()
def rig(tmp_path: Path) -> Any:
    r = Rig(tmp_path)
    yield r
    r.store.close()


def test_a_car_with_three_occupants_is_one_visit_with_its_screenings_linked(rig: Rig) -> None:
    scene, truth = vehicle_scenario("three_occupants_one_fever")
    decided = rig.run(scene)
    assert [e.decision.value for e in decided] == ["pass", "deny_fever", "pass"]

    [visit] = visits.visits_tail(rig.store, 10)
    assert (visit["plate"], visit["kind"], visit["resident"], visit["registered"]) == (truth["plate"], "outsider_vehicle", False, False)
    assert visit["summary"] == {"occupants": 3, "fever": 1, "denied": 1} and visit["flagged"] is True
    assert visit["text"] == "浙A12345, 3 occupants, 1 fever"
    assert [o["event_id"] for o in visit["occupants"]] == [e.event_id for e in decided]
    assert [(o["temperature_c"], o["fever"], o["decision"]) for o in visit["occupants"]] == [
        (36.5, False, "pass"),
        (38.4, True, "deny_fever"),
        (36.7, False, "pass"),
    ]
    # The plate's best read (a misread and an unsure read did not count) and its frame.
    assert visit["confidence"] == 0.92 and visit["reads"] == 2 and visit["best_frame"]["seq"] is not None
    assert visit["direction"] == "entry" and visit["direction_from"] == "travel"  # the plate grew as it came
    assert visit["alarm"] is False and visit["closed_ts"] >= visit["ts"] + 10

    # Linked by visit id in the store, both ways, to screenings that are in the events table.
    links = rig.rows("SELECT visit_id, event_id FROM visit_occupants ORDER BY rowid")
    assert {eid for _v, eid in links} == {e.event_id for e in decided} and {v for v, _e in links} == {visit["visit_id"]}
    assert all(visits.visit_of_event(rig.store, e.event_id) == visit["visit_id"] for e in decided)
    assert {r[0] for r in rig.rows("SELECT event_id FROM events")} == {e.event_id for e in decided}
    assert rig.rows("SELECT plate, occupants, fever, denied, flagged FROM visits") == [("浙A12345", 3, 1, 1, 1)]

    # One events/visit message, after the three screenings, in the seq order of the station.
    [msg] = rig.messages("visit")
    assert msg["visit"]["visit_id"] == visit["visit_id"] and msg["visit"]["summary"]["fever"] == 1
    assert msg["seq"] == max(m["seq"] for m in rig.messages("screening")) + 1
    assert rig.recorder.stats()["occupants_linked"] == 3 and rig.recorder.stats()["open"] == 0


def test_a_resident_with_a_red_code_is_flagged_and_says_code_denied(rig: Rig, tmp_path: Path) -> None:
    scene, truth = vehicle_scenario("resident_red_code")
    other = Rig(tmp_path / "r", residents={"皖K66666"}, lane_direction="exit")
    try:
        decided = other.run(scene)
        [visit] = visits.visits_tail(other.store, 5)
    finally:
        other.store.close()
    assert [e.decision.value for e in decided] == ["deny_code"]
    assert (visit["kind"], visit["resident"], visit["flagged"], visit["summary"]) == (
        "resident_vehicle",
        True,
        True,
        {"occupants": 1, "fever": 0, "denied": 1},
    )
    assert visit["text"] == "皖K66666, 1 occupant, 1 code denied" and truth["flagged"] is True


def test_two_cars_in_a_row_are_two_visits_each_with_its_own_occupant(rig: Rig) -> None:
    first, _ = vehicle_scenario("outsider_alone")
    second = VehicleScene("鲁L77777", (SceneOccupant("driver", 2.0, 36.8),))
    a = rig.run(first)
    b = rig.run(second, t0=20.0, wall0=WALL0 + 20.0)
    one, two = visits.visits_tail(rig.store, 5)
    assert (one["plate"], [o["event_id"] for o in one["occupants"]]) == ("鲁L88888", [a[0].event_id])
    assert (two["plate"], [o["event_id"] for o in two["occupants"]]) == ("鲁L77777", [b[0].event_id])
    assert one["visit_id"] != two["visit_id"] and not one["flagged"] and not two["flagged"]


def test_a_registered_outsider_is_recognised_within_the_window_only(tmp_path: Path) -> None:
    rig = Rig(tmp_path, window_s=3600.0)
    try:
        visits.record_registration(
            rig.store,
            {
                "registration_id": "reg-1",
                "ts": WALL0 - 600.0,  # ten minutes before the car comes
                "plate": "鲁L88888",
                "reason": "delivery",
                "destination": "3号楼",
                "phone_hash": "ab" * 32,
                "phone_last4": "5678",
                "operator": "Wang Li",
            },
        )
        scene, _ = vehicle_scenario("outsider_alone")
        rig.run(scene)
        rig.run(scene, t0=100.0, wall0=WALL0 + 7200.0)  # two hours later: out of the one-hour window
        first, later = visits.visits_tail(rig.store, 5)
    finally:
        rig.store.close()
    assert (first["registered"], first["registration_id"], first["kind"]) == (True, "reg-1", "outsider_vehicle")
    assert (later["registered"], later["registration_id"]) == (False, None)


def test_a_stray_plate_takes_no_occupant_and_a_pedestrian_is_no_visit(rig: Rig) -> None:
    # A person screened with no car in the picture, and one plate detection in one frame: no visit at all.
    ped = VehicleScene("浙A00000", (SceneOccupant("walker", 1.0, 36.6),), stop_t=0.1, leave_t=0.1, gone_t=0.05)
    decided = rig.run(ped)
    assert [e.decision.value for e in decided] == ["pass"]
    assert visits.visits_tail(rig.store, 5) == [] and rig.recorder.stats()["unlinked"] == 1
    assert rig.recorder.stats()["unrecorded"] == 1  # the one-frame plate: never read, nobody in it


def test_a_visit_still_open_when_the_lane_stops_is_recorded(rig: Rig) -> None:
    scene, _ = vehicle_scenario("outsider_alone")
    parked = VehicleScene(scene.plate, scene.occupants, leave_t=60.0, gone_t=61.0)
    replay(parked, rig.vehicles, lane(), rig.recorder, store=rig.store, tail_s=-55.0, set_wall=rig.set_wall)  # stop at 6 s
    assert visits.visits_tail(rig.store, 5) == []
    rig.recorder.close()
    [visit] = visits.visits_tail(rig.store, 5)
    assert visit["plate"] == "鲁L88888" and visit["summary"]["occupants"] == 1


def test_a_failed_visit_write_is_counted_and_the_next_visit_is_recorded(rig: Rig) -> None:
    calls = {"n": 0}

    def flaky(rec: dict[str, Any]) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            raise sqlite3.OperationalError("disk I/O error")
        return visits.record_visit(rig.store, rec)

    rig.recorder._record = flaky
    scene, _ = vehicle_scenario("outsider_alone")
    rig.run(scene)
    rig.run(scene, t0=20.0, wall0=WALL0 + 20.0)
    assert rig.recorder.stats()["record_errors"] == 1 and rig.recorder.stats()["recorded"] == 1
    assert len(visits.visits_tail(rig.store, 5)) == 1


def test_visits_and_registrations_are_purged_with_retention_but_not_while_undelivered(rig: Rig, tmp_path: Path) -> None:
    scene, _ = vehicle_scenario("outsider_alone")
    rig.run(scene)
    visits.record_registration(
        rig.store,
        {
            "registration_id": "reg-2",
            "ts": WALL0,
            "plate": "鲁L88888",
            "reason": "visit",
            "destination": "A",
            "phone_hash": "cd" * 32,
            "phone_last4": "0000",
            "operator": "x",
        },
    )
    later = WALL0 + 100 * 86400.0
    held = purge(rig.store, tmp_path, events_days=90, face_crops_days=7, now=later)
    assert (held.visits, held.registrations) == (0, 0) and held.held >= 2  # their messages are still in the outbox
    rig.store.outbox_ack_many([r[0] for r in rig.rows("SELECT id FROM outbox")])
    gone = purge(rig.store, tmp_path, events_days=90, face_crops_days=7, now=later)
    assert (gone.visits, gone.registrations) == (1, 1)
    assert rig.rows("SELECT count(*) FROM visit_occupants") == [(0,)] and rig.rows("SELECT count(*) FROM registrations") == [(0,)]
    [(counts,)] = rig.rows("SELECT counts FROM data_audit WHERE actor = 'retention'")
    assert json.loads(counts)["visits"] == 1 and json.loads(counts)["registrations"] == 1


def test_registrations_are_erased_on_request_with_their_messages_and_audited(rig: Rig) -> None:
    base = {"ts": time.time(), "reason": "visit", "destination": "A", "phone_hash": "ef" * 32, "phone_last4": "1111", "operator": "x"}
    visits.record_registration(rig.store, {**base, "registration_id": "r-a", "plate": "鲁L88888"})
    visits.record_registration(rig.store, {**base, "registration_id": "r-b", "plate": "苏E12345"})
    with pytest.raises(ValueError, match="time range"):
        visits.erase_registrations(rig.store)
    kept = visits.erase_registrations(rig.store, plates=["鲁L88888"])
    assert kept == {"registrations": 0, "outbox": 0, "held": ["r-a"]}  # undelivered: kept unless asked
    done = visits.erase_registrations(rig.store, plates=["鲁L88888"], include_pending=True, note="request 17")
    assert done == {"registrations": 1, "outbox": 1, "held": []}
    assert [r["registration_id"] for r in visits.export_registrations(rig.store)] == ["r-b"]
    [(criteria, note)] = rig.rows("SELECT criteria, note FROM data_audit WHERE note != '' ")
    assert note == "request 17" and "鲁L88888" not in criteria  # the audit says what went, not the plate
