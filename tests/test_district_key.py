"""The district tracing key at the station: pushed by a signed, addressed command, rotated, kept 0600, never echoed.

The station's real command path (``StationLink.handle``: signature, address, replay, handler,
audit) with a real SQLite store; the code judge is the real HC1 verifier on a code signed by a
test issuer.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

from drivers.publish.mqtt import MqttPublisher
from sim.issuer import new_issuer
from station.codes.hc1 import Hc1Verifier
from station.codes.judge import holder_ref_fn
from station.codes.trace_key import DistrictKeys, key_id_of, trace_ref
from station.codes.trust_list import parse_certificates
from station.domain.model import CodeStatus
from station.domain.screening import RECORDED_CODE_DETAIL
from station.link.command_auth import CommandKeys, CommandVerifier, ReplayGuard, new_signing_key, public_pem, sign_command
from station.link.commands import StationLink
from station.link.handlers import CommandHandlers
from station.store.events import SqliteEventStore

SITE, STATION = "gate-a", "st-01"
KEY1 = bytes(range(32))
KEY2 = bytes(range(100, 132))


class Station:
    """One station's command path (never connected: ``handle`` is called as the link's worker would)."""

    def __init__(self, tmp: Path, centre_key: object, name: str = STATION) -> None:
        self.data = tmp / name
        self.data.mkdir(parents=True)
        keys_file = tmp / f"{name}-centre.pem"
        keys_file.write_text(public_pem(centre_key.public_key()))  # type: ignore[attr-defined]
        self.store = SqliteEventStore(self.data / "events.db", station_id=name, site=SITE)
        self.store.begin_session()
        self.district = DistrictKeys(self.data)
        verifier = CommandVerifier(CommandKeys(keys_file, self.data), ReplayGuard(self.data / "ids.db"), site=SITE, station=name)
        handlers = CommandHandlers(
            store=self.store,
            gate=None,
            monotonic=time.monotonic,
            config_path=None,
            data_dir=self.data,
            snapshot=dict,
            district_keys=self.district,
        )
        publisher = MqttPublisher("mqtt://127.0.0.1:9", name, f"x/{name}/status", b"offline", b"online")
        self.link = StationLink(
            publisher, f"checkpoint/v1/{SITE}/{name}", {"station_id": name, "site": SITE}, {}, dict, handlers, verifier=verifier
        )

    def push(self, body: dict[str, object]) -> dict[str, object]:
        return self.link.handle("district-key", json.dumps(body).encode())

    def audit_bodies(self) -> list[str]:
        with sqlite3.connect(self.data / "events.db") as conn:
            return [str(b) for (b,) in conn.execute("SELECT body FROM command_audit")]


def _signed(key: object, version: int, secret: bytes, station: str = STATION, **kw: object) -> dict[str, object]:
    args = {"version": version, "key": secret.hex(), **kw}
    return sign_command(key, site=SITE, station=station, command="district-key", args=args, by="key-officer")  # type: ignore[arg-type]


def test_a_signed_push_installs_the_key_0600_and_the_key_is_never_echoed_logged_or_audited(tmp_path: Path, caplog: object) -> None:
    centre = new_signing_key()
    st = Station(tmp_path, centre)
    reply = st.push(_signed(centre, 1, KEY1))
    assert reply["ok"] is True, reply
    assert reply["result"]["key_id"] == key_id_of(KEY1) and reply["result"]["version"] == 1  # type: ignore[index]
    path = st.data / "codes" / "district-key.json"
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert not path.with_name(path.name + ".bak").exists()
    assert KEY1.hex() not in json.dumps(reply)
    assert st.audit_bodies() and all(KEY1.hex() not in b for b in st.audit_bodies())
    assert KEY1.hex() not in caplog.text  # type: ignore[attr-defined]
    with sqlite3.connect(st.data / "events.db") as conn:  # the outbox (what goes to the centre) neither
        assert all(KEY1.hex() not in bytes(p).decode() for (p,) in conn.execute("SELECT payload FROM outbox"))
    assert DistrictKeys(st.data).status()["key_id"] == key_id_of(KEY1), "read back after a restart"


def test_unsigned_wrong_station_wrong_key_and_forged_id_pushes_are_refused_and_the_key_stays(tmp_path: Path) -> None:
    centre, rogue = new_signing_key(), new_signing_key()
    st = Station(tmp_path, centre)
    assert st.push(_signed(centre, 1, KEY1))["ok"] is True
    unsigned: dict[str, object] = {"id": "u-1", "args": {"version": 2, "key": KEY2.hex()}}
    assert st.push(unsigned)["reason"] == "unsigned"
    elsewhere = st.push(_signed(centre, 2, KEY2, station="st-99"))
    assert elsewhere["ok"] is False and "station" in str(elsewhere["reason"])
    assert st.push(_signed(rogue, 2, KEY2))["reason"] == "unknown_key"
    tampered = _signed(centre, 2, KEY2)
    tampered["args"] = {"version": 2, "key": bytes(32).hex()}  # the signature covered another key
    assert st.push(tampered)["reason"] == "bad_signature"
    forged = st.push(_signed(centre, 2, KEY2, key_id="0" * 16))
    assert forged["ok"] is False and "key_id" in str(forged["error"])
    short = st.push(_signed(centre, 2, b"x" * 8))
    assert short["ok"] is False and "bytes" in str(short["error"])
    assert st.district.status()["key_id"] == key_id_of(KEY1) and st.district.status()["version"] == 1


def test_rotation_takes_a_newer_version_only_and_new_references_carry_the_new_key_id(tmp_path: Path) -> None:
    centre = new_signing_key()
    st = Station(tmp_path, centre)
    assert st.district.holder_ref("H-1") is None, "no key: no reference"
    assert st.push(_signed(centre, 1, KEY1))["ok"] is True
    assert st.district.holder_ref("H-1") == (trace_ref(KEY1, "holder", "H-1"), key_id_of(KEY1))
    rotated = st.push(_signed(centre, 2, KEY2))
    assert rotated["ok"] is True and rotated["result"]["previous_key_id"] == key_id_of(KEY1)  # type: ignore[index]
    assert st.district.holder_ref("H-1") == (trace_ref(KEY2, "holder", "H-1"), key_id_of(KEY2))
    back = st.push(_signed(centre, 1, KEY1))  # a replayed older push (new id, same version) cannot undo the rotation
    assert back["ok"] is False and "not newer" in str(back["error"])
    assert st.district.status()["key_id"] == key_id_of(KEY2)
    assert json.loads((st.data / "codes" / "district-key.json").read_text())["key_id"] == key_id_of(KEY2)


def test_the_same_holder_at_two_stations_gets_one_trace_ref_and_different_station_refs(tmp_path: Path) -> None:
    centre = new_signing_key()
    issuer = new_issuer()
    trust = parse_certificates([issuer.trust_entry()], strict=True)
    now = time.time()
    code = issuer.issue("green", iat=now - 60, exp=now + 3600, holder="DEMO-HOLDER-0042")
    records = []
    for name in ("st-01", "st-02"):
        st = Station(tmp_path, centre, name)
        assert st.push(_signed(centre, 1, KEY1, station=name))["ok"] is True
        salt = os.urandom(32)
        verifier = Hc1Verifier(trust.get, holder_ref=holder_ref_fn(salt), trace_ref=st.district.holder_ref)
        verdict = verifier.verify(code, now)
        assert verdict.status is CodeStatus.VALID
        records.append({"subject_ref": verdict.subject_ref, **{k: verdict.detail[k] for k in RECORDED_CODE_DETAIL if k in verdict.detail}})
    assert records[0]["trace_ref"] == records[1]["trace_ref"] == trace_ref(KEY1, "holder", "DEMO-HOLDER-0042")
    assert records[0]["trace_key"] == key_id_of(KEY1)
    assert records[0]["subject_ref"] != records[1]["subject_ref"], "the station's own reference stays per station"
    assert "DEMO-HOLDER-0042" not in json.dumps(records)


def test_plates_are_referenced_in_one_normal_form_and_a_record_without_a_key_is_unchanged(tmp_path: Path) -> None:
    keys = DistrictKeys(tmp_path)
    assert keys.annotate_plate({"plate": "浙A12345"}) == {"plate": "浙A12345"}
    keys.install(1, KEY1.hex())
    a = keys.annotate_plate({"plate": "浙A·12345"})
    b = keys.annotate_plate({"plate": "浙a12345"})
    assert a["plate_ref"] == b["plate_ref"] == trace_ref(KEY1, "plate", "浙A12345") and a["trace_key"] == key_id_of(KEY1)
    assert keys.annotate_plate({"plate": None}) == {"plate": None}


def test_another_instance_in_the_process_picks_up_an_installed_key_and_a_corrupt_file_turns_tracing_off(tmp_path: Path) -> None:
    judge_side, command_side = DistrictKeys(tmp_path), DistrictKeys(tmp_path)
    judge_side.check_interval_s = 0.0
    command_side.install(1, KEY1.hex())
    assert judge_side.holder_ref("H") == (trace_ref(KEY1, "holder", "H"), key_id_of(KEY1))
    (tmp_path / "codes" / "district-key.json").write_text("{not json")
    assert judge_side.holder_ref("H") is not None and judge_side.load_error is not None, "the key in memory stays, the error is named"
    fresh = DistrictKeys(tmp_path)
    assert fresh.holder_ref("H") is None and "cannot read" in str(fresh.status()["error"])


def test_an_id_card_read_carries_the_id_numbers_district_reference_into_the_verdict_and_never_the_number(tmp_path: Path) -> None:
    from drivers.idcard.sam_protocol import decode_base_info, encode_base_info
    from station.codes.idcard import IdHasher, judge_card

    keys = DistrictKeys(tmp_path)
    keys.install(1, KEY1.hex())
    number = "11010519491231002X"
    data = encode_base_info(
        name="张三",
        sex="1",
        nation="01",
        birth="19491231",
        address="北京",
        id_number=number,
        authority="公安局",
        valid_from="20200101",
        valid_to="20400101",
    )
    hasher = IdHasher(bytes(16), "station")
    facts = decode_base_info(data, hasher, hasher.kind, lambda n: keys.ref("idcard", n))
    assert not isinstance(facts, str)
    assert (facts.trace_ref, facts.trace_key) == (trace_ref(KEY1, "idcard", number), key_id_of(KEY1))
    verdict = judge_card(facts, time.time(), None)
    recorded = {k: verdict.detail[k] for k in RECORDED_CODE_DETAIL if k in verdict.detail}
    assert recorded["trace_ref"] == facts.trace_ref and recorded["trace_key"] == key_id_of(KEY1)
    assert number not in json.dumps(recorded) and number.lower() not in json.dumps(recorded)
    untraced = decode_base_info(data, hasher, hasher.kind)
    assert (
        not isinstance(untraced, str) and untraced.trace_ref is None and "trace_ref" not in judge_card(untraced, time.time(), None).detail
    )


def test_a_registration_names_its_plate_by_the_district_reference_and_the_centre_keeps_only_that(tmp_path: Path) -> None:
    from station.centre.parse import EventRow, parse_message
    from station.codes.contact import PhoneHasher
    from station.domain.registration import RegistrationForm
    from station.web.registration import Registrar

    keys = DistrictKeys(tmp_path)
    keys.install(1, KEY1.hex())
    store = SqliteEventStore(tmp_path / "events.db", station_id=STATION, site=SITE)
    store.begin_session()
    registrar = Registrar(store, PhoneHasher.from_config("", tmp_path), annotate=keys.annotate_plate)
    registrar.register(RegistrationForm("浙A12345", "delivery", "3号楼", "13800138000"), "Zhao Min")
    store.close()
    with sqlite3.connect(tmp_path / "events.db") as conn:
        ((topic, payload),) = conn.execute("SELECT topic, payload FROM outbox WHERE topic LIKE '%registration'").fetchall()
    body = json.loads(payload)
    assert body["registration"]["plate_ref"] == trace_ref(KEY1, "plate", "浙A12345")
    row = parse_message("checkpoint/v1", topic, bytes(payload))
    assert isinstance(row, EventRow) and (row.kind, row.trace_ref, row.trace_key) == (
        "registration",
        trace_ref(KEY1, "plate", "浙A12345"),
        key_id_of(KEY1),
    )
    assert "浙A12345" not in repr(row) and "Zhao" not in repr(row) and "13800138000" not in repr(row)
