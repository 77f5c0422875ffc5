"""Finding the person after an alarm: the face and thermal crops a fever or denial keeps (issue 16, part 5).

Real parts throughout: a real SQLite store, real JPEG/PNG files under ``<data_dir>/crops``, the
operator app behind its access checks, the demo station (emulated thermal module on a pty, scene
camera, real detector) and a real mosquitto for the MQTT privacy check.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from station.cli.stationctl import main as stationctl
from station.config import StationConfig
from station.domain.model import Decision, GateAction, GateResult, ScreeningEvent, ThermalFrame
from station.lane.capture import CropWriter, ThermalFrames, keeps
from station.lane.pipeline import Decided
from station.store.events import SqliteEventStore
from station.store.retention import CROPS_DIR, DAY_S, erase, purge
from station.web.access import AccessPolicy, load_token
from station.web.desk import DeskSettings, OperatorDesk
from station.web.operator import create_app
from tests.support.broker import Broker, mosquitto_available
from tests.support.events import make_event
from tests.support.sync_rig import Collector
from tests.support.waiting import wait_until

REGISTRATION = np.array(StationConfig().thermal.registration, dtype=np.float64)
FACE_BOX = [260.0, 150.0, 380.0, 300.0]  # visible pixels; about thermal x 12-19, y 6-16 through REGISTRATION
THERMAL_SEQ = 41


def crop_rows(db: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(db) as conn:
        return sorted(conn.execute("SELECT event_id, kind, file FROM event_crops").fetchall())


def thermal_frame(seq: int) -> ThermalFrame:
    pixels = np.full((24, 32), 24.0, dtype=np.float32)
    pixels[8:15, 13:19] = 36.5  # the face, warm
    pixels[10:12, 15:17] = 38.6  # its hottest part
    return ThermalFrame(pixels, die_c=30.0, seq=seq, t=time.monotonic())


def face_crop() -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.integers(0, 255, (150, 120, 3), dtype=np.uint8)


def screening(i: int, decision: Decision, *, alarm: bool) -> ScreeningEvent:
    e = make_event(i, alarm=alarm)
    return dataclasses.replace(
        e,
        decision=decision,
        reason={Decision.DENY_CODE: "code_red", Decision.DENY_FEVER: "fever"}.get(decision, "ok"),
        face={"box": FACE_BOX, "score": 0.9, "capture": {"frame_seq": 7, "box": FACE_BOX, "score": 120.0}},
        temperature={**e.temperature, "thermal_seq": THERMAL_SEQ},
    )


def decided(event: ScreeningEvent, capture: Any) -> Decided:
    gate = GateResult(event.event_id, GateAction.ALARM if event.alarm else GateAction.OPEN, True, "ok", time.monotonic())
    return Decided(event, gate, 3.0, 4.0, capture=capture)


class Rig:
    """A data directory with a real store, thermal frames as the pipeline's tap keeps them, and a crop writer."""

    def __init__(self, data_dir: Path, keep: str = "alarms", queue_size: int = 8) -> None:
        self.data_dir = data_dir
        self.db = data_dir / "events.sqlite3"
        self.store = SqliteEventStore(self.db, station_id="st-01", site="gate-a")
        self.store.begin_session()
        self.frames = ThermalFrames()
        for seq in range(THERMAL_SEQ - 3, THERMAL_SEQ + 3):
            self.frames.offer(thermal_frame(seq))
        self.writer = CropWriter(self.store, data_dir / CROPS_DIR, keep, self.frames, lambda: REGISTRATION, queue_size=queue_size)

    def decide(self, i: int, decision: Decision, *, alarm: bool = False, record: bool = True) -> ScreeningEvent:
        event = screening(i, decision, alarm=alarm)
        if record:
            self.store.record(event)
        self.writer.on_decided(decided(event, face_crop()))
        return event

    def close(self) -> None:
        self.writer.stop()
        self.store.close()


@pytest.fixture()
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path / "data")
    r.writer.start()
    yield r
    r.close()


def written(rig: Rig, n: int) -> None:
    wait_until(lambda: rig.writer.stats()["written"] + rig.writer.stats()["skipped"] >= n, timeout=10)


def test_a_fever_keeps_one_face_and_one_thermal_crop_linked_to_its_event(rig: Rig) -> None:
    fever = rig.decide(1, Decision.DENY_FEVER, alarm=True)
    written(rig, 1)
    rows = crop_rows(rig.db)
    assert [(e, k) for e, k, _ in rows] == [(fever.event_id, "face"), (fever.event_id, "thermal")]
    crops = rig.data_dir / CROPS_DIR
    assert sorted(p.name for p in crops.iterdir()) == sorted(f for _, _, f in rows)
    for p in crops.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, "pictures of people: owner only"
    face = cv2.imread(str(crops / f"{fever.event_id}.face.jpg"))
    assert face is not None and face.shape[:2] == (150, 120)
    thermal = cv2.imread(str(crops / f"{fever.event_id}.thermal.png"))
    assert thermal is not None and thermal.shape[0] >= 100
    # False colour: the warm face is a bright colour, the room dark; not a grey picture.
    assert thermal.std(axis=2).max() > 30
    centre = thermal[thermal.shape[0] // 2, thermal.shape[1] // 2].astype(int)
    corner = thermal[0, 0].astype(int)
    assert centre.sum() > corner.sum() + 200


def test_the_thermal_crop_comes_from_the_frame_of_the_reading(rig: Rig) -> None:
    # A newer frame with nobody in it: the crop must still show the face from the reading's frame.
    empty = ThermalFrame(np.full((24, 32), 24.0, dtype=np.float32), die_c=30.0, seq=THERMAL_SEQ + 10, t=time.monotonic())
    rig.frames.offer(empty)
    assert rig.frames.find(THERMAL_SEQ) is not None and rig.frames.find(THERMAL_SEQ).seq == THERMAL_SEQ  # type: ignore[union-attr]
    assert rig.frames.find(None) is empty and rig.frames.find(999) is empty, "unknown seq: the newest frame"
    fever = rig.decide(2, Decision.DENY_FEVER, alarm=True)
    written(rig, 1)
    thermal = cv2.imread(str(rig.data_dir / CROPS_DIR / f"{fever.event_id}.thermal.png"))
    assert thermal is not None and thermal.max() > 150, "the warm face, not the empty newer frame"


def test_alarms_keeps_fevers_and_denials_only_all_keeps_every_decision_none_nothing(tmp_path: Path) -> None:
    for keep, expected in (("alarms", {"deny_fever", "deny_code"}), ("all", {"deny_fever", "deny_code", "pass", "retry"}), ("none", set())):
        r = Rig(tmp_path / keep, keep=keep)
        r.writer.start()
        events = {
            "pass": r.decide(1, Decision.PASS),
            "deny_code": r.decide(2, Decision.DENY_CODE),
            "deny_fever": r.decide(3, Decision.DENY_FEVER, alarm=True),
            "retry": r.decide(4, Decision.RETRY),
        }
        r.close()  # stop() writes what was queued
        kept = {e for e, _k, _f in crop_rows(r.db)}
        assert kept == {events[k].event_id for k in expected}, keep
        files = list((r.data_dir / CROPS_DIR).iterdir()) if (r.data_dir / CROPS_DIR).exists() else []
        assert len(files) == 2 * len(expected), keep
    soft_fever = dataclasses.replace(make_event(5, alarm=True), decision=Decision.MANUAL_CHECK, reason="fever_soft_policy")
    assert keeps("alarms", soft_fever), "a fever under the soft policy is an alarm too"
    with pytest.raises(ValueError, match="capture.keep"):
        CropWriter(r.store, tmp_path, "some", r.frames, lambda: REGISTRATION)


def test_a_full_queue_drops_and_counts_and_an_unrecorded_event_keeps_nothing(tmp_path: Path) -> None:
    r = Rig(tmp_path / "data", queue_size=1)
    t0 = time.monotonic()
    first = r.decide(1, Decision.DENY_FEVER, alarm=True)
    r.decide(2, Decision.DENY_FEVER, alarm=True)  # the writer is not running: the queue (1) is full
    assert time.monotonic() - t0 < 0.5, "the listener never waits for the writer"
    assert r.writer.stats()["dropped"] == 1 and r.writer.stats()["queued"] == 1
    r.writer.start()
    written(r, 1)
    r.decide(3, Decision.DENY_FEVER, alarm=True, record=False)  # its write failed (disk full): no crop without its record
    written(r, 2)
    r.close()
    assert {e for e, _k, _f in crop_rows(r.db)} == {first.event_id}
    assert r.writer.stats()["skipped"] == 1 and len(list((r.data_dir / CROPS_DIR).iterdir())) == 2


def test_expiry_removes_the_crops_and_their_links_after_face_crops_days(rig: Rig) -> None:
    fever = rig.decide(1, Decision.DENY_FEVER, alarm=True)
    denied = rig.decide(2, Decision.DENY_CODE)
    written(rig, 2)
    crops = rig.data_dir / CROPS_DIR
    stray = crops / "left-by-a-crash.face.jpg"  # a file whose link row was never written
    stray.write_bytes(b"\xff\xd8")
    now = time.time()
    kept = purge(rig.store, rig.data_dir, events_days=90, face_crops_days=7, now=now + 6 * DAY_S)
    assert kept.crops == 0 and len(crop_rows(rig.db)) == 4
    gone = purge(rig.store, rig.data_dir, events_days=90, face_crops_days=7, now=now + 8 * DAY_S)
    assert gone.crops == 5 and crop_rows(rig.db) == [] and list(crops.iterdir()) == []
    assert rig.store.event(fever.event_id) is not None and rig.store.event(denied.event_id) is not None, "the events stay (90 days)"
    with sqlite3.connect(rig.db) as conn:
        (counts,) = conn.execute("SELECT counts FROM data_audit WHERE actor = 'retention'").fetchone()
    assert json.loads(counts)["crops"] == 5


def test_a_crop_goes_with_its_event_when_events_expire_first(rig: Rig) -> None:
    old = dataclasses.replace(screening(1, Decision.DENY_FEVER, alarm=True), wall_ts=time.time() - 2 * DAY_S)
    rig.store.record(old)
    rig.writer.on_decided(decided(old, face_crop()))
    written(rig, 1)
    with sqlite3.connect(rig.db) as conn:  # its MQTT message was delivered: nothing holds the event
        conn.execute("UPDATE outbox SET acked_at = 1")
    result = purge(rig.store, rig.data_dir, events_days=1, face_crops_days=30)
    assert result.events == 1 and result.crops == 2 and crop_rows(rig.db) == []


def test_erase_removes_the_crops_of_the_erased_events_only(rig: Rig) -> None:
    a = rig.decide(1, Decision.DENY_FEVER, alarm=True)
    b = rig.decide(2, Decision.DENY_FEVER, alarm=True)
    written(rig, 2)
    result = erase(rig.store, event_ids=[a.event_id], include_pending=True, note="request 9")
    assert result["events"] == 1 and result["crops"] == 2 and result["crop_links"] == 2
    assert {e for e, _k, _f in crop_rows(rig.db)} == {b.event_id}
    assert sorted(p.name for p in (rig.data_dir / CROPS_DIR).iterdir()) == [f"{b.event_id}.face.jpg", f"{b.event_id}.thermal.png"]


def test_stationctl_exports_crops_only_when_asked_and_erase_removes_them(tmp_path: Path) -> None:
    data = tmp_path / "data"
    r = Rig(data)
    r.writer.start()
    fever = r.decide(1, Decision.DENY_FEVER, alarm=True)
    r.close()
    cfg = tmp_path / "station.toml"
    cfg.write_text(f'[station]\nsite = "gate-a"\nid = "st-01"\ndata_dir = "{data}"\n')
    run = CliRunner().invoke
    plain = run(stationctl, ["--config", str(cfg), "data", "export"])
    assert plain.exit_code == 0, plain.output
    (line,) = [json.loads(x) for x in plain.stdout.splitlines()]
    assert line["event_id"] == fever.event_id and "crops" not in line
    out = tmp_path / "export-crops"
    asked = run(stationctl, ["--config", str(cfg), "data", "export", "--crops-to", str(out)])
    assert asked.exit_code == 0, asked.output
    (line,) = [json.loads(x) for x in asked.stdout.splitlines()]
    assert line["crops"] == {"face": f"{fever.event_id}.face.jpg", "thermal": f"{fever.event_id}.thermal.png"}
    assert (out / line["crops"]["face"]).read_bytes() == (data / CROPS_DIR / line["crops"]["face"]).read_bytes()
    erased = run(stationctl, ["--config", str(cfg), "data", "erase", "--event-id", fever.event_id, "--include-pending", "--yes", "--json"])
    assert erased.exit_code == 0, erased.output
    assert json.loads(erased.stdout)["crops"] == 2 and list((data / CROPS_DIR).iterdir()) == []


def test_the_alarm_card_route_serves_the_crop_uncached_and_only_with_the_token_beyond_loopback(rig: Rig, tmp_path: Path) -> None:
    fever = rig.decide(1, Decision.DENY_FEVER, alarm=True)
    written(rig, 1)
    desk = OperatorDesk(
        store=rig.store,
        gate=None,
        identity={"site": "gate-a", "id": "st-01", "lane": "entry"},
        settings=DeskSettings(),
        devices=dict,
    )
    token = load_token(rig.data_dir)
    # Listening beyond 127.0.0.1 (start_operator_display then sets the token), reached over the LAN.
    client = TestClient(create_app(desk, None, AccessPolicy(token=token)), base_url="http://10.0.0.5:8080")
    url = f"/api/crops/{fever.event_id}/face"
    refused = client.get(url)
    assert refused.status_code == 401 and refused.json()["reason"] == "no_token" and b"\xff\xd8" not in refused.content
    auth = {"Authorization": f"Bearer {token}"}
    face = client.get(url, headers=auth)
    assert face.status_code == 200 and face.headers["content-type"] == "image/jpeg"
    assert face.headers["cache-control"] == "no-store"
    assert face.content == (rig.data_dir / CROPS_DIR / f"{fever.event_id}.face.jpg").read_bytes()
    thermal = client.get(f"/api/crops/{fever.event_id}/thermal", headers=auth)
    assert thermal.status_code == 200 and thermal.headers["content-type"] == "image/png" and thermal.content[:4] == b"\x89PNG"
    for bad in (f"/api/crops/{fever.event_id}/record", "/api/crops/no-such-event/face"):
        r = client.get(bad, headers=auth)
        assert r.status_code == 404 and r.headers["cache-control"] == "no-store", bad
    traversal = client.get(f"/api/crops/{fever.event_id}/..%2F..%2Fevents.sqlite3", headers=auth)
    assert traversal.status_code == 404 and b"SQLite" not in traversal.content
    status = client.get("/api/status", headers=auth).json()
    assert [(a["event_id"], a["crops"]) for a in status["alarms"]] == [(fever.event_id, ["face", "thermal"])]
    erase(rig.store, event_ids=[fever.event_id], include_pending=True)
    assert client.get(url, headers=auth).status_code == 404, "erased with its event"


# -- the whole station: the demo lane ---------------------------------------------------------------


def demo(tmp_path: Path, cfg: StationConfig) -> tuple[Any, Path]:
    from sim.demo import DemoRun

    data = tmp_path / "data"
    result = DemoRun(cfg, people=2, data_dir=data, fast=True).run(max_s=60)  # a pass, then a fever
    return result, data


@pytest.mark.slow
@pytest.mark.skipif(not mosquitto_available(), reason="mosquitto not installed")
def test_demo_fever_keeps_its_crops_pass_none_and_no_crop_reaches_mqtt(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker")
    broker.start()
    sub = Collector(broker.port, "privacy-check", "#", persistent=False)
    try:
        assert sub.subscribed.wait(10)
        cfg = StationConfig()  # the defaults: capture.keep = "alarms", snapshots on with a broker
        cfg.mqtt.url = broker.url
        result, data = demo(tmp_path, cfg)
        decisions = [d.event.decision for _, d in result.decided]
        assert decisions == [Decision.PASS, Decision.DENY_FEVER]
        fever = result.decided[1][1].event
        rows = crop_rows(data / "events.sqlite3")
        assert [(e, k) for e, k, _ in rows] == [(fever.event_id, "face"), (fever.event_id, "thermal")]
        assert sorted(p.name for p in (data / CROPS_DIR).iterdir()) == sorted(f for _, _, f in rows)
        wait_until(lambda: any(t.endswith("/events/screening") for t, _, _ in sub.raw()), timeout=10)
        crop_bytes = [(data / CROPS_DIR / f).read_bytes() for _, _, f in rows]
        messages = sub.raw()
        assert messages, "the demo published"
        for topic, payload, _retained in messages:
            for crop in crop_bytes:
                assert crop[:64] not in payload, topic
            assert b"\x89PNG" not in payload, topic
            if not topic.endswith("/snapshot"):  # the board's snapshot is a blurred JPEG of the scene
                assert b"\xff\xd8\xff" not in payload, topic
            assert b"crops" not in payload and b".face.jpg" not in payload, topic
    finally:
        sub.close()
        broker.stop()


@pytest.mark.slow
def test_demo_with_keep_none_keeps_nothing(tmp_path: Path) -> None:
    cfg = StationConfig()
    cfg.capture.keep = "none"
    result, data = demo(tmp_path, cfg)
    assert [d.event.decision for _, d in result.decided] == [Decision.PASS, Decision.DENY_FEVER]
    assert crop_rows(data / "events.sqlite3") == [] and not (data / CROPS_DIR).exists()


@pytest.mark.browser
@pytest.mark.slow
def test_the_alarm_card_shows_the_crop_in_the_browser_and_it_is_gone_after_expiry(rig: Rig) -> None:
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run installs it)")
    from playwright.sync_api import expect, sync_playwright

    from station.web.operator import OperatorServer

    fever = rig.decide(1, Decision.DENY_FEVER, alarm=True)
    written(rig, 1)
    desk = OperatorDesk(
        store=rig.store, gate=None, identity={"site": "gate-a", "id": "st-01", "lane": "entry"}, settings=DeskSettings(), devices=dict
    )
    server = OperatorServer(desk, None, "127.0.0.1", 0)
    server.start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                page.goto(server.url)
                card = page.locator(f'#alarm-list li[data-event-id="{fever.event_id}"]')
                expect(card).to_be_visible(timeout=15000)
                for kind in ("face", "thermal"):
                    img = card.locator(f'[data-testid="crop-{kind}"]')
                    expect(img).to_be_visible()
                    # Loaded (decoded) from the authenticated route, not a broken-image icon.
                    page.wait_for_function("(el) => el.complete && el.naturalWidth > 0", arg=img.element_handle(), timeout=10000)
                purge(rig.store, rig.data_dir, events_days=90, face_crops_days=7, now=time.time() + 8 * DAY_S)
                # The next status (heartbeat every 2 s) has no crops for the alarm: the pictures leave the card.
                expect(card.locator("img.crop")).to_have_count(0, timeout=10000)
                expect(card).to_be_visible()
            finally:
                browser.close()
    finally:
        server.stop()
