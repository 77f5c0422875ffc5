"""Outsider vehicle registration (外来车辆登记) over the operator page's API, on a real SQLite store.

``POST /api/registrations`` with the plate (pre-filled from the outsider the lane just read), a
reason from the short list, the destination, the contact phone and the operator's PIN. Checked:
every field is hostile input (refused with the field named, nothing stored); the PIN and the
override budget guard it and refusals are audited; what is stored and sent is the phone's keyed
hash and last four digits only (the number is nowhere in the database file); the row, its
``events/registration`` message and the audit row; the page's status offers the outsider's plate.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from station.codes.contact import PhoneHasher
from station.codes.judge import station_salt
from station.domain.registration import REASONS, FormError, RegistrationForm, check_form
from station.store.events import SqliteEventStore
from station.web.desk import DeskSettings, OperatorDesk
from station.web.operator import create_app
from station.web.pin import hash_pin
from station.web.registration import Registrar

PIN = "482916"
PHONE = "138 0013 8000"
URL = "/api/registrations"


class Desk:
    def __init__(self, tmp_path: Path, *, registrar: bool = True, key_file: str = "", **settings: Any) -> None:
        self.db = tmp_path / "events.sqlite3"
        self.store = SqliteEventStore(self.db, station_id="st-01", site="gate-a")
        self.store.begin_session()
        self.hasher = PhoneHasher.from_config(key_file, tmp_path)
        opts = {"pin_hash": hash_pin(PIN, iterations=2000), "pin_max_failures": 3, "pin_lock_s": 600.0, "overrides_per_min": 3, **settings}
        self.desk = OperatorDesk(
            store=self.store,
            gate=None,
            identity={"site": "gate-a", "id": "st-01", "lane": "entry"},
            settings=DeskSettings(**opts),
            devices=dict,
            registrar=Registrar(self.store, self.hasher, valid_h=24.0) if registrar else None,
        )
        self.client = TestClient(create_app(self.desk), base_url="http://127.0.0.1:8080")

    def post(self, **body: Any) -> Any:
        form = {"plate": "鲁L88888", "reason": "delivery", "destination": "3号楼 物业", "phone": PHONE, "operator": "Wang Li", "pin": PIN}
        return self.client.post(URL, json={**form, **body})

    def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.db)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    def close(self) -> None:
        self.client.close()
        self.store.close()


@pytest.fixture()
def desk(tmp_path: Path) -> Iterator[Desk]:
    d = Desk(tmp_path)
    yield d
    d.close()


def test_a_registration_is_stored_and_synced_with_the_phone_as_keyed_hash_and_last_four(desk: Desk, tmp_path: Path) -> None:
    desk.store.record_vehicle({"vehicle_id": "veh-1", "ts": time.time(), "type": "outsider_vehicle", "plate": "鲁L88888"})
    status = desk.client.get("/api/status").json()
    assert status["registration"]["outsider"]["plate"] == "鲁L88888"  # the page pre-fills it
    assert status["ui"]["registration_reasons"] == list(REASONS)

    r = desk.post(plate="鲁l·88888")  # edited by hand, separators and case as people type them
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["plate"], out["reason"], out["destination"], out["phone_last4"], out["vehicle_id"]) == (
        "鲁L88888",
        "delivery",
        "3号楼 物业",
        "8000",
        "veh-1",
    )
    assert "phone_hash" not in out and "phone" not in out

    [(rid, plate, phash, last4, operator)] = desk.rows(
        "SELECT registration_id, plate, phone_hash, phone_last4, operator FROM registrations"
    )
    expected = hmac.new(station_salt(tmp_path), b"phone:13800138000", hashlib.sha256).hexdigest()
    assert (rid, plate, phash, last4, operator) == (out["registration_id"], "鲁L88888", expected, "8000", "Wang Li")

    [(topic, payload)] = [(t, json.loads(p)) for t, p in desk.rows("SELECT topic, payload FROM outbox") if t.endswith("/registration")]
    assert topic == "checkpoint/v1/gate-a/st-01/events/registration"
    reg = payload["registration"]
    assert (reg["registration_id"], reg["phone_hash"], reg["phone_hash_key"], reg["phone_last4"]) == (rid, expected, "station", "8000")
    assert reg["valid_until"] == pytest.approx(reg["ts"] + 24 * 3600.0)

    [(action, who, ok, detail)] = desk.rows("SELECT action, operator, ok, detail FROM operator_actions")
    assert (action, who, ok, json.loads(detail)) == ("register_outsider", "Wang Li", 1, {"registration_id": rid, "reason": "delivery"})

    # The number itself is in no file of the store (database, WAL), in any usual spelling.
    desk.store.close()
    blob = b"".join(p.read_bytes() for p in tmp_path.glob("events.sqlite3*"))
    for spelling in ("13800138000", "138 0013 8000", "1380013"):
        assert spelling.encode() not in blob


def test_the_status_lists_todays_registrations_without_the_hash(desk: Desk) -> None:
    desk.post()
    [shown] = desk.client.get("/api/status").json()["registration"]["recent"]
    assert shown["plate"] == "鲁L88888" and shown["phone_last4"] == "8000" and "phone_hash" not in shown


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("plate", "<script>alert(1)</script>", "bad_plate"),
        ("plate", "浙A1234567890", "bad_plate"),
        ("plate", "浙A\u202e12345", "bad_plate"),
        ("plate", ["浙A12345"], "missing"),
        ("plate", "x" * 300, "too_long"),
        ("reason", "smuggling", "bad_reason"),
        ("reason", None, "bad_reason"),
        ("destination", "", "bad_destination"),
        ("destination", "3号楼\u202e", "bad_destination"),
        ("destination", "a\x00b", "bad_destination"),
        ("destination", "楼" * 41, "bad_destination"),
        ("phone", "１３８００１３８０００", "bad_phone"),  # full-width digits
        ("phone", "1380013800²", "bad_phone"),
        ("phone", "12345", "bad_phone"),
        ("phone", 13800138000, "missing"),
    ],
)
def test_every_field_is_checked_and_a_bad_one_is_refused_naming_it(desk: Desk, field: str, value: Any, reason: str) -> None:
    r = desk.post(**{field: value})
    assert r.status_code == 400 and r.json()["reason"] == reason and r.json()["field"] == field
    if field == "reason":
        assert r.json()["allowed"] == list(REASONS)
    assert desk.rows("SELECT count(*) FROM registrations") == [(0,)]
    assert desk.rows("SELECT count(*) FROM outbox") == [(0,)]


def test_wrong_pin_and_budget_are_refused_and_audited(desk: Desk) -> None:
    r = desk.post(pin="000000")
    assert r.status_code == 403 and r.json()["reason"] == "wrong_pin"
    assert desk.rows("SELECT count(*) FROM registrations") == [(0,)]
    for _ in range(3):
        assert desk.post().status_code == 200
    r = desk.post()  # the fourth within a minute: over the override budget
    assert r.status_code == 429 and r.json()["reason"] == "rate_limited"
    assert desk.rows("SELECT count(*) FROM registrations") == [(3,)]
    audit = desk.rows("SELECT action, ok, reason FROM operator_actions ORDER BY id")
    refused = [("register_outsider", 0, "wrong_pin")], [("register_outsider", 0, "rate_limited")]
    assert audit == refused[0] + [("register_outsider", 1, "ok")] * 3 + refused[1]


def test_a_station_without_a_vehicle_lane_has_nothing_to_register(tmp_path: Path) -> None:
    d = Desk(tmp_path, registrar=False)
    try:
        r = d.post()
        assert r.status_code == 503 and r.json()["reason"] == "no_vehicle_lane"
        status = d.client.get("/api/status").json()
        assert status["registration"] is None and status["ui"]["registration_reasons"] == []
    finally:
        d.close()


def test_with_the_centre_key_the_phone_is_hashed_under_it(tmp_path: Path) -> None:
    key = bytes(range(16))
    (tmp_path / "idcard.key").write_text(key.hex())
    d = Desk(tmp_path, key_file=str(tmp_path / "idcard.key"))
    try:
        assert d.post(phone="+86 010-6512 3456").status_code == 200
        [(phash,)] = d.rows("SELECT phone_hash FROM registrations")
    finally:
        d.close()
    assert phash == hmac.new(key, b"phone:01065123456", hashlib.sha256).hexdigest()
    assert repr(PhoneHasher(key, "centre")) == "PhoneHasher(kind=centre)"


def test_the_form_never_shows_the_phone_in_its_repr() -> None:
    form = check_form("浙A12345", "visit", "A", "13800138000")
    assert isinstance(form, RegistrationForm) and "13800138000" not in repr(form) and form.phone_last4 == "8000"


_ANY = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=300), st.lists(st.text(max_size=5), max_size=3))


@settings(max_examples=300, deadline=None)
@given(plate=_ANY, reason=st.one_of(_ANY, st.sampled_from(REASONS)), destination=_ANY, phone=_ANY)
def test_the_form_check_is_total(plate: Any, reason: Any, destination: Any, phone: Any) -> None:
    try:
        form = check_form(plate, reason, destination, phone)
    except FormError as exc:
        assert exc.field in ("plate", "reason", "destination", "phone") and str(exc)
        return
    assert form.phone.isascii() and form.phone.isdigit() and form.reason in REASONS and 1 <= len(form.destination) <= 40
