"""Signed remote commands: who can open the gate over MQTT, and what happens to everyone else.

Real mosquitto, real SQLite store, the real gate driver on gpiozero's mock pins (the relay's
history is what the barrier would have done), and the real link; the "command centre" signs with
an Ed25519 key the station trusts. Pure checks of the envelope (every reason, ECDSA keys, replay
across restarts, totality) need no broker.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from station.link.command_auth import (
    CommandKeys,
    ReplayGuard,
    key_id_of,
    new_signing_key,
    public_pem,
    sign_command,
    sign_lookup_answer,
    verify_command,
    verify_lookup_answer,
)
from tests.support.broker import mosquitto_available
from tests.support.command_rig import BASE, SITE, STATION, Rig, write_public_keys
from tests.support.waiting import wait_until

needs_broker = pytest.mark.skipif(not mosquitto_available(), reason="mosquitto not installed")


@pytest.fixture()
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    r.close()


# ---------------------------------------------------------------------------------- on the wire


@needs_broker
@pytest.mark.slow  # about a second: kept out of the fast loop
def test_every_bad_open_gate_is_refused_with_its_own_reason_and_the_relay_never_moves(rig: Rig) -> None:
    forged_key = new_signing_key()
    good = rig.signed("open-gate", {"note": "lane blocked"})
    tampered = dict(rig.signed("open-gate", {"note": "x"}), args={"note": "y"})
    cases: dict[str, dict[str, Any] | bytes] = {
        "unsigned": {"id": "u-1", "deadline": time.time() + 10, "args": {"operator": "centre-7"}},
        "unknown_key": rig.signed("open-gate", key=forged_key),
        "bad_signature": tampered,
        "expired": rig.signed("open-gate", now=time.time() - 30, ttl_s=10),
        "deadline_too_far": rig.signed("open-gate", ttl_s=600),
        "wrong_station": rig.signed("open-gate", station="st-02"),
        "wrong_site": rig.signed("open-gate", site="gate-b"),
        "wrong_command": rig.signed("set-threshold", {"fever_threshold_c": 37.5}),  # replayed onto open-gate
        "malformed": b"\xff\xfe not json",
    }
    # A forged signature carried over from a good body onto other fields is a bad signature too.
    cases_extra = {"bad_signature": dict(good, by="someone else")}
    for reason, body in list(cases.items()) + list(cases_extra.items()):
        reply = rig.call("open-gate", body)
        assert not reply["ok"] and reply["reason"] == reason, (reason, reply)
        assert reply["error"].startswith(f"refused: {reason}")
    time.sleep(0.2)  # a late relay step would show here: a wait for nothing to happen
    assert rig.relay_on_count() == 0, "no refused command touched the relay"
    assert rig.link.stats()["refused"] == {**{r: 1 for r in cases}, "bad_signature": 2}
    # Nothing refused reached the gate handler, so no gate row; each refusal is in the command audit.
    rows = rig.store.command_audit()
    assert sorted(r["reason"] for r in rows) == sorted([*cases, "bad_signature"])
    assert all(not r["ok"] and r["command"] == "open-gate" for r in rows)
    named = {r["reason"]: r["signer"] for r in rows}
    assert named["unsigned"] is None and named["unknown_key"] is None, "an unverified sender is never named"
    assert named["wrong_station"] == f"duty-officer (key {good['key_id']})", "a verified one is"

    # The good one opens once; the same body again is a replay.
    first = rig.call("open-gate", good)
    assert first["ok"] and first["result"]["executed"] is True and first["id"] == good["id"], first
    wait_until(lambda: rig.relay_on_count() == 1, 2, "the relay energised")
    again = rig.call("open-gate", good)
    assert not again["ok"] and again["reason"] == "replay"
    time.sleep(0.2)  # the replay must not pulse the relay late: a wait for nothing to happen
    assert rig.relay_on_count() == 1
    (ok_row,) = [r for r in rig.store.command_audit() if r["ok"]]  # signed and carried out: always audited
    assert (ok_row["ok"], ok_row["reason"], ok_row["signer"]) == (True, "ok", f"duty-officer (key {good['key_id']})")
    gate_rows = rig.store.gate_actions(f"cmd:{good['id']}")
    assert [(g["executed"], g["reason"]) for g in gate_rows] == [(True, "ok")]


@needs_broker
@pytest.mark.slow  # about a second: kept out of the fast loop
def test_read_only_commands_stay_unsigned_and_a_station_without_keys_refuses_the_rest(tmp_path: Path) -> None:
    rig = Rig(tmp_path, keys=False)
    try:
        assert rig.call("ping", {"id": "p-1"})["ok"]
        assert rig.call("snapshot", {"id": "s-1"})["ok"]
        for name in ("open-gate", "set-threshold", "resident-plates", "reload-config", "trust-list", "command-keys"):
            reply = rig.call(name, rig.signed(name, {}))
            assert not reply["ok"] and reply["reason"] == "no_keys_configured", (name, reply)
        assert rig.relay_on_count() == 0
        assert "fever_threshold_c = 37.3" in rig.config.read_text()
    finally:
        rig.close()


@needs_broker
def test_a_retained_command_is_not_run_on_connect(tmp_path: Path) -> None:
    rig = Rig(tmp_path, start=False)
    try:
        body = rig.signed("open-gate", ttl_s=30)
        rig.sub.client.publish(f"{BASE}/cmd/open-gate", json.dumps(body).encode(), qos=1, retain=True).wait_for_publish(5)
        rig.start()  # the station connects and subscribes: the broker hands it the retained command
        wait_until(lambda: rig.publisher.intake_drops(rig.link.cmd_filter)["retained"] == 1, 5, "retained dropped")
        time.sleep(0.3)  # the dropped command must not run late: a wait for nothing to happen
        assert rig.relay_on_count() == 0 and rig.results("open-gate") == []
        assert rig.link.stats()["retained_dropped"] == 1
        # The same body sent live (not retained) is a fresh request, carried out once.
        reply = rig.call("open-gate", body)
        assert reply["ok"], reply
        assert rig.relay_on_count() == 1
    finally:
        rig.close()


@needs_broker
def test_an_oversized_body_is_dropped_unread_and_counted(tmp_path: Path) -> None:
    rig = Rig(tmp_path, max_command_bytes=8192)
    try:
        plates = [f"浙A{n:05d}" for n in range(2000)]  # ~30 KiB of JSON
        big = rig.signed("resident-plates", {"plates": plates})
        rig.sub.client.publish(f"{BASE}/cmd/resident-plates", json.dumps(big).encode(), qos=1)
        wait_until(lambda: rig.link.stats()["oversize_dropped"] == 1, 5, "oversize drop counted")
        assert rig.call("ping", {"id": "after"})["ok"], "the link goes on"
        assert rig.results("resident-plates") == [], "never parsed, never answered"
        small = rig.call("resident-plates", rig.signed("resident-plates", {"plates": plates[:10]}))
        assert small["ok"] and small["result"]["count"] == 10
    finally:
        rig.close()


@needs_broker
def test_key_rotation_is_signed_versioned_survives_a_restart_and_retires_the_old_key(rig: Rig) -> None:
    new_key, stranger = new_signing_key(), new_signing_key()
    new_pem = public_pem(new_key.public_key())
    # Not signed by a trusted key: refused, nothing stored.
    forged = rig.call("command-keys", rig.signed("command-keys", {"version": 2, "keys": [new_pem]}, key=stranger))
    assert forged["reason"] == "unknown_key" and not (rig.data / CommandKeys.FILE).exists()
    bad = rig.call("command-keys", rig.signed("command-keys", {"version": 2, "keys": ["not a key"]}))
    assert not bad["ok"] and bad["reason"] == "command_error" and "old keys stay" in bad["error"]
    rotated = rig.call("command-keys", rig.signed("command-keys", {"version": 2, "keys": [new_pem]}))
    assert rotated["ok"], rotated
    assert rotated["result"] == {"version": 2, "previous_version": 0, "key_ids": [key_id_of(new_key.public_key())]}
    # From now on only the new key opens the gate; the old one is unknown.
    old = rig.call("open-gate", rig.signed("open-gate"))
    assert not old["ok"] and old["reason"] == "unknown_key"
    assert rig.call("open-gate", rig.signed("open-gate", key=new_key))["ok"]
    assert rig.relay_on_count() == 1
    # A replayed older (or equal) version cannot bring the old key back, even signed by the new key.
    back = rig.call("command-keys", rig.signed("command-keys", {"version": 2, "keys": [public_pem(rig.key.public_key())]}, key=new_key))
    assert not back["ok"] and "not newer" in back["error"]
    # A restart reads the rotated list, not the configured file.
    after_restart = CommandKeys(rig.keys_file, rig.data)
    assert (after_restart.source, after_restart.version) == ("rotated", 2)
    assert after_restart.key_ids() == [key_id_of(new_key.public_key())]


@needs_broker
def test_signed_set_threshold_audits_the_signer_not_a_claimed_operator(rig: Rig) -> None:
    body = rig.signed("set-threshold", {"fever_threshold_c": 37.9, "operator": "Mallory"}, by="Li Wei")
    reply = rig.call("set-threshold", body)
    assert reply["ok"], reply
    row = rig.store.command_audit(limit=1)[0]
    assert row["signer"] == f"Li Wei (key {body['key_id']})" and row["request_id"] == body["id"]
    assert json.loads(row["body"])["args"]["operator"] == "Mallory", "the body is kept, but it names nobody"


@needs_broker
@pytest.mark.slow
def test_refusal_audit_rows_are_rate_limited_and_bodies_capped(tmp_path: Path) -> None:
    rig = Rig(tmp_path, refused_audit_per_min=3)
    try:
        pad = "x" * 10_000
        for n in range(8):
            reply = rig.call("set-threshold", {"id": f"flood-{n}", "args": {"pad": pad}})
            assert reply["reason"] == "unsigned"
        rows = rig.store.command_audit()
        assert len(rows) == 3 and all(len(r["body"]) <= 2048 for r in rows)
        stats = rig.link.stats()
        assert stats["refused"] == {"unsigned": 8} and stats["audit_suppressed"] == 5
        # Refusals go out at ordinary priority (the outbox bounds may drop them), never as alarms.
        audits = [r for r in rig.store.outbox_rows_after(0) if r.topic == f"{BASE}/events/audit"]
        assert len(audits) == 3 and all(r.priority == 5 for r in audits)
    finally:
        rig.close()


@needs_broker
def test_the_technician_workflow_keygen_sign_publish_opens_the_gate(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from station.cli.stationctl import main

    runner = CliRunner()
    made = runner.invoke(main, ["cmd", "keygen", "--out", str(tmp_path / "centre")])
    assert made.exit_code == 0, made.output
    paths = json.loads(made.output)
    assert Path(paths["private_key"]).stat().st_mode & 0o777 == 0o600
    assert runner.invoke(main, ["cmd", "keygen", "--out", str(tmp_path / "centre")]).exit_code == 1, "never overwrites"
    rig = Rig(tmp_path / "station", keys_file=Path(paths["public_key"]))
    try:
        signed = runner.invoke(
            main,
            [
                "cmd",
                "sign",
                "--key",
                paths["private_key"],
                "--site",
                SITE,
                "--station",
                STATION,
                "--command",
                "open-gate",
                "--args",
                '{"reason": "ambulance"}',
                "--by",
                "Li Wei",
            ],
        )
        assert signed.exit_code == 0, signed.output
        body = signed.output.strip().encode()  # what `mosquitto_pub -m "$(stationctl cmd sign …)"` sends
        reply = rig.call("open-gate", body)
        assert reply["ok"] and reply["result"]["executed"], reply
        assert rig.relay_on_count() == 1
        assert rig.store.command_audit(limit=1)[0]["signer"] == f"Li Wei (key {paths['key_id']})"
        for bad in (["--args", "[1]"], ["--site", "a/b"], ["--by", ""]):
            argv = [
                "cmd",
                "sign",
                "--key",
                paths["private_key"],
                "--site",
                SITE,
                "--station",
                STATION,
                "--command",
                "open-gate",
                "--by",
                "x",
                *bad,
            ]
            assert runner.invoke(main, argv).exit_code == 1, bad
    finally:
        rig.close()


# ------------------------------------------------------------------------------ the envelope alone


def _keys(tmp_path: Path, *private: Any) -> CommandKeys:
    return CommandKeys(write_public_keys(tmp_path / "keys.pem", *private), tmp_path / "data")


def test_ecdsa_p256_keys_sign_and_verify_too_and_other_curves_are_refused(tmp_path: Path) -> None:
    p256 = ec.generate_private_key(ec.SECP256R1())
    keys = _keys(tmp_path, p256, new_signing_key())
    assert len(keys) == 2
    body = sign_command(p256, site=SITE, station=STATION, command="open-gate", args={}, by="ops")
    now = time.time()
    v = verify_command(body, command="open-gate", station=STATION, site=SITE, keys=keys, now=now, replay=None)
    assert (v.ok, v.reason) == (True, "ok")
    p384 = tmp_path / "p384.pem"
    p384.write_text(public_pem(ec.generate_private_key(ec.SECP384R1()).public_key()))
    refused = CommandKeys(p384, None)
    assert len(refused) == 0 and "Ed25519 or ECDSA P-256" in (refused.problem or "")


def test_replayed_ids_are_remembered_across_a_restart_and_forgotten_after_their_deadline(tmp_path: Path) -> None:
    key = new_signing_key()
    keys = _keys(tmp_path, key)
    path = tmp_path / "data" / "ids.sqlite3"
    now = 1_800_000_000.0
    body = sign_command(key, site=SITE, station=STATION, command="open-gate", args={}, by="ops", ttl_s=30, now=now)

    def judge(guard: ReplayGuard, at: float) -> str:
        return verify_command(body, command="open-gate", station=STATION, site=SITE, keys=keys, now=at, replay=guard).reason

    guard = ReplayGuard(path)
    assert judge(guard, now) == "ok"
    guard.close()
    guard = ReplayGuard(path)  # a restart
    assert judge(guard, now + 1) == "replay"
    assert judge(guard, now + 31) == "expired", "after its deadline a command is refused for that reason"
    # Ids are dropped some time after their deadline: the table stays bounded.
    assert guard.claim("other", now + 10, now + 10 + 700) is True
    assert guard._db.execute("SELECT count(*) FROM ids").fetchone()[0] == 1
    full = ReplayGuard(None, max_ids=2)
    assert full.claim("a", now + 5, now) and full.claim("b", now + 5, now)
    assert full.claim("c", now + 5, now) is None, "a full store refuses rather than forgets"


def test_lookup_answers_bind_request_station_site_and_token(tmp_path: Path) -> None:
    key = new_signing_key()
    keys = _keys(tmp_path, key)
    answer = sign_lookup_answer(
        key, request_id="r-1", station=STATION, site=SITE, token_sha256="ab" * 32, result={"found": True, "colour": "green"}
    )
    expect = {"request_id": "r-1", "station": STATION, "site": SITE, "token_sha256": "ab" * 32}
    assert verify_lookup_answer(answer, keys=keys, **expect) == (True, "ok")
    assert verify_lookup_answer(answer, keys=keys, **{**expect, "request_id": "r-2"}) == (False, "wrong_request")
    assert verify_lookup_answer(answer, keys=keys, **{**expect, "token_sha256": "cd" * 32}) == (False, "wrong_token")
    assert verify_lookup_answer(answer, keys=None, **expect) == (False, "no_keys_configured")
    # A signed command is not a look-up answer (another domain tag), even with the same fields.
    command = sign_command(key, site=SITE, station=STATION, command="open-gate", args={}, by="ops")
    assert verify_lookup_answer(command, keys=keys, **expect)[1] == "malformed"


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
FIELDS = ("id", "deadline", "site", "station", "command", "args", "key_id", "by", "sig")


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(FIELDS), value=JSON, drop=st.booleans())
@pytest.mark.slow
def test_verify_is_total_and_only_the_untouched_body_passes(tmp_path_factory: Any, field: str, value: Any, drop: bool) -> None:
    tmp = tmp_path_factory.mktemp("keys")
    key = new_signing_key()
    keys = _keys(tmp, key)
    now = time.time()
    body = sign_command(key, site=SITE, station=STATION, command="open-gate", args={"a": 1}, by="ops", now=now)
    mutated = dict(body)
    if drop:
        del mutated[field]
    else:
        mutated[field] = value
    v = verify_command(mutated, command="open-gate", station=STATION, site=SITE, keys=keys, now=now, replay=None)
    assert v.reason in ("unsigned", "malformed", "unknown_key", "bad_signature", "ok")
    assert v.ok == (mutated == body)


def test_the_command_queue_is_bounded_and_paho_never_blocks(tmp_path: Path) -> None:
    """Commands arriving faster than they are served: the overflow is dropped and counted at once."""
    from drivers.publish.mqtt import MqttPublisher
    from station.link.commands import StationLink
    from station.link.handlers import CommandHandlers

    publisher = MqttPublisher("mqtt://127.0.0.1:9", "bounded", f"{BASE}/status", b"offline", b"online")  # never started
    handlers = CommandHandlers(store=None, gate=None, monotonic=time.monotonic, config_path=None, data_dir=tmp_path, snapshot=dict)
    link = StationLink(publisher, BASE, {"station_id": STATION, "site": SITE}, {}, dict, handlers, queue_size=4)
    t0 = time.monotonic()
    for n in range(10):  # the worker is not running: nothing is taken off the queue
        link._on_command(f"{BASE}/cmd/ping", json.dumps({"id": f"p-{n}"}).encode())
    assert time.monotonic() - t0 < 0.5
    stats = link.stats()
    assert (stats["queue_depth"], stats["queue_dropped"]) == (4, 6)
    assert (stats["retained_dropped"], stats["oversize_dropped"]) == (0, 0)
