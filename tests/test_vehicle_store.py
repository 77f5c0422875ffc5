"""Vehicle events as durable records: the v2 migration, ``record_vehicle`` (row + outbox in one
transaction), the plate thread writing them, and delivery over a real mosquitto."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import cv2
import pytest

from station.domain.vehicles import VehicleLane
from station.store import residents
from station.store.events import MIGRATIONS, SCHEMA_VERSION, SqliteEventStore
from tests.support.events import make_event
from tests.support.waiting import wait_until

PLATES_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "images" / "plates"


def open_store(path: Path) -> SqliteEventStore:
    return SqliteEventStore(path, station_id="st-01", site="gate-a")


def make_v1_file(path: Path) -> None:
    """A database exactly as the v1 release left it: the first migration only, with history."""
    conn = sqlite3.connect(path, isolation_level=None)
    MIGRATIONS[0](conn)
    conn.execute("UPDATE meta SET value = '41' WHERE key = 'seq'")
    conn.execute("UPDATE meta SET value = '3' WHERE key = 'session'")
    conn.execute("PRAGMA user_version=1")
    conn.close()


def vehicle(plate: str = "皖K66666", kind: str = "outsider_vehicle") -> dict:
    return {
        "vehicle_id": f"v-{plate}-{time.monotonic_ns()}",
        "ts": 1795638209.5,
        "type": kind,
        "plate": plate,
        "confidence": 0.93,
        "reads": 2,
        "track_id": 1,
        "alarm": False,
    }


def outbox(db: Path) -> list[tuple[str, dict]]:
    conn = sqlite3.connect(db)
    try:
        return [(t, json.loads(p)) for t, p in conn.execute("SELECT topic, payload FROM outbox ORDER BY id")]
    finally:
        conn.close()


def test_v1_file_migrates_with_backup_and_keeps_its_counters(tmp_path: Path) -> None:
    db = tmp_path / "station.db"
    make_v1_file(db)
    with open_store(db) as store:
        assert store.begin_session() == 4  # session and seq survived the migration
        store.record_vehicle(vehicle())
    backup = tmp_path / f"station.db.pre-v{SCHEMA_VERSION}.bak"  # one copy, named for the version migrated to
    assert backup.exists()
    conn = sqlite3.connect(backup)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'vehicles'").fetchone()[0] == 0
    finally:
        conn.close()
    [(topic, payload)] = outbox(db)
    assert payload["seq"] == 42 and payload["session"] == 4
    # A current file reopens as it is: no second migration, the backup untouched.
    mtime = backup.stat().st_mtime_ns
    with open_store(db) as store:
        assert [v["plate"] for v in store.vehicles_tail(5)] == ["皖K66666"]
    assert backup.stat().st_mtime_ns == mtime and len(list(tmp_path.glob("*.bak"))) == 1


def test_record_vehicle_writes_row_and_vehicle_message_never_an_alarm(tmp_path: Path) -> None:
    db = tmp_path / "station.db"
    with open_store(db) as store:
        session = store.begin_session()
        store.record(make_event(1))
        store.record_vehicle(vehicle("鲁L88888", "outsider_vehicle"))
        store.record_vehicle(vehicle("皖K66666", "resident_vehicle"))
        assert [(v["type"], v["plate"], v["alarm"]) for v in store.vehicles_tail(5)] == [
            ("outsider_vehicle", "鲁L88888", False),
            ("resident_vehicle", "皖K66666", False),
        ]
        with pytest.raises(ValueError, match="plate"):
            store.record_vehicle({**vehicle(), "plate": ""})
    rows = outbox(db)
    assert [t.rsplit("/", 2)[-2:] for t, _ in rows] == [["events", "screening"], ["events", "vehicle"], ["events", "vehicle"]]
    assert [p["seq"] for _, p in rows] == [1, 2, 3]  # one seq counter across screenings and vehicles
    _, first = rows[1]
    assert first["vehicle"]["plate"] == "鲁L88888" and first["session"] == session and first["schema"] == 1
    assert len({p["msg_id"] for _, p in rows}) == 3
    assert not any(t.endswith("/events/alarm") for t, _ in rows)


def test_failed_vehicle_write_leaves_nothing_behind(tmp_path: Path) -> None:
    db = tmp_path / "station.db"
    with open_store(db) as store:
        store.begin_session()
        v = vehicle()
        store.record_vehicle(v)
        with pytest.raises(sqlite3.IntegrityError):
            store.record_vehicle(v)  # same vehicle_id: the row fails, so must its outbox message and seq
        assert len(store.vehicles_tail(5)) == 1
    assert [p["seq"] for _, p in outbox(db)] == [1]


@pytest.mark.skipif(not PLATES_DIR.is_dir(), reason="shared test photos not found")
@pytest.mark.slow  # about a second: kept out of the fast loop
def test_vehicle_lane_run_writes_vehicles_and_outbox_and_survives_a_failed_write(tmp_path: Path) -> None:
    from drivers.detect.plates import OnnxPlateReader
    from station.domain.model import VisibleFrame
    from station.lane.vehicle_loop import PlateLoop

    db = tmp_path / "station.db"
    store = open_store(db)
    store.begin_session()
    path = tmp_path / residents.FILE_NAME
    residents.add(path, "浙A12345")  # the car in the photo (皖K66666) is not listed: an outsider
    fail_first = {"left": 1}

    def record(rec: dict) -> int:
        # The first write hits a closed-store-like failure: the loop must log, count and go on.
        if fail_first["left"]:
            fail_first["left"] -= 1
            raise sqlite3.OperationalError("disk I/O error")
        return store.record_vehicle(rec)

    reader = OnnxPlateReader.from_models_dir()
    img = cv2.imread(str(PLATES_DIR / "zeusees-11.jpg"))
    lane = VehicleLane(residents.ResidentFile(path), min_reads=2, memory_s=0.3)
    loop = PlateLoop(reader, lane, max_rate_hz=50.0, record=record)
    loop.start()
    try:
        t = 0.0
        for _car in range(2):  # the same photo twice, 2 s apart: two vehicles (the track expires between)
            for _ in range(4):
                loop.offer(VisibleFrame(img, int(t * 10), t))
                t += 0.1
                time.sleep(0.12)  # one frame at a time, at a camera's pace: the slot keeps only the newest
            t += 2.0
        wait_until(lambda: loop.counts["recorded"] >= 1, 10, "a recorded vehicle")
    finally:
        loop.stop()
        store.close()
    assert loop.counts["record_errors"] == 1 and loop.counts["recorded"] == 1
    assert loop.counts["outsider_vehicle"] == 2
    with open_store(db) as again:
        [row] = again.vehicles_tail(5)
    assert row["type"] == "outsider_vehicle" and row["plate"] == "皖K66666" and row["alarm"] is False
    rows = outbox(db)
    assert [t.rsplit("/", 1)[-1] for t, _ in rows] == ["vehicle"]
    assert rows[0][1]["vehicle"]["vehicle_id"] == row["vehicle_id"]


def test_vehicle_event_arrives_over_a_real_mosquitto(tmp_path: Path) -> None:
    from tests.support.broker import Broker, mosquitto_available

    if not mosquitto_available():
        pytest.skip("mosquitto not installed")
    from tests.support.sync_rig import PREFIX, Collector, Station

    broker = Broker(tmp_path / "broker")
    broker.start()
    try:
        sub = Collector(broker.port, "backend", f"{PREFIX}/events/#", persistent=False)
        assert sub.subscribed.wait(5), "subscriber did not subscribe"
        station = Station(tmp_path, broker)
        try:
            station.store.record_vehicle(vehicle("鲁L88888"))
            wait_until(
                lambda: len(sub.unique()) >= 1 and station.store.outbox_stats()["pending"] == 0,
                10,
                "the vehicle event at the back end and acknowledged",
            )
        finally:
            station.close()
        [msg] = sub.unique().values()
        assert msg["_topic"] == f"{PREFIX}/events/vehicle"
        assert msg["vehicle"]["plate"] == "鲁L88888" and msg["vehicle"]["type"] == "outsider_vehicle" and msg["seq"] == 1
        sub.close()
    finally:
        broker.kill()


@pytest.mark.skipif(not PLATES_DIR.is_dir(), reason="shared test photos not found")
@pytest.mark.slow
def test_station_in_vehicle_mode_records_vehicles_in_its_store(tmp_path: Path) -> None:
    """The real station (demo devices, vehicle.mode = vehicle): a car's frames handed to its plate
    thread end as a row in the station's own store and an events/vehicle outbox message."""
    from sim.demo import DemoRun
    from station.app import DB_NAME
    from station.config import StationConfig
    from station.domain.model import VisibleFrame

    run = DemoRun(StationConfig.model_validate({"vehicle": {"mode": "vehicle"}}), people=1, data_dir=tmp_path, fast=True)
    img = cv2.imread(str(PLATES_DIR / "zeusees-11.jpg"))
    box: dict = {}

    def on_decided(_person, _d) -> None:  # type: ignore[no-untyped-def]
        app = run.app
        assert app is not None and app.plates is not None
        # The demo scene has no car: detach the camera tap so only the car's frames reach the plate thread.
        app.pipeline.frame_taps.remove(app.plates.offer)
        for i in range(6):
            app.plates.offer(VisibleFrame(img, 10_000 + i, 100.0 + i * 0.25))
            time.sleep(0.25)  # one frame at a time, at a camera's pace: the slot keeps only the newest
        wait_until(lambda: app.plates.counts["recorded"] >= 1, 10, "a recorded vehicle")
        box["stats"] = app.plates.stats()

    run.on_decided = on_decided
    run.run(max_s=40)
    assert box["stats"].get("recorded") == 1 and box["stats"].get("record_errors", 0) == 0, box["stats"]
    db = tmp_path / DB_NAME
    with SqliteEventStore(db, station_id="x", site="y") as store:
        [row] = store.vehicles_tail(5)
    assert row["type"] == "outsider_vehicle" and row["plate"] == "皖K66666"
    conn = sqlite3.connect(db)
    try:
        topics = [t for (t,) in conn.execute("SELECT topic FROM outbox")]
    finally:
        conn.close()
    assert sum(t.endswith("/events/vehicle") for t in topics) == 1 and not any(t.endswith("/events/alarm") for t in topics)
