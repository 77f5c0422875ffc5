"""Remote commands and retained states over a real mosquitto, with a real store and the real gate
driver on gpiozero's mock pins; commands that change anything are signed by the centre's key
(the refusals of unsigned and badly signed ones: tests/test_signed_commands.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.broker import mosquitto_available
from tests.support.command_rig import BASE, Centre, Rig
from tests.support.waiting import wait_until

pytestmark = pytest.mark.skipif(not mosquitto_available(), reason="mosquitto not installed")


@pytest.fixture()
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    r.close()


def test_ping_unknown_and_malformed_commands_all_get_a_result(rig: Rig) -> None:
    reply = rig.call("ping", {"id": "c-1"})
    assert reply["ok"] and reply["id"] == "c-1" and reply["result"]["pong"] is True
    assert reply["schema"] == 1 and reply["station_id"] == "st-01" and reply["command"] == "ping"
    unknown = rig.call("self-destruct", {"id": "c-2"})
    assert not unknown["ok"] and unknown["id"] == "c-2" and "unknown command" in unknown["error"]
    assert "open-gate" in unknown["error"], "the error lists the known commands"
    bad = rig.call("ping", b"{not json")
    assert not bad["ok"] and bad["id"] is None
    stale = rig.call("ping", {"id": "c-3", "deadline": time.time() - 5})
    assert not stale["ok"] and "stale" in stale["error"]
    snap = rig.call("snapshot", {"id": "c-4"})
    assert snap["ok"] and snap["result"] == {"lane_state": "idle"}


def test_open_gate_is_audited_and_never_opens_for_a_stale_or_replayed_command(rig: Rig) -> None:
    assert rig.relay_on_count() == 0
    fresh = rig.signed("open-gate", {"operator": "centre-7"}, ttl_s=5)
    reply = rig.call("open-gate", fresh)
    assert reply["ok"] and reply["result"]["executed"] is True and reply["reason"] == "ok", reply
    assert rig.relay_on_count() == 1
    audit = rig.store.gate_actions(f"cmd:{fresh['id']}")
    assert [(a["action"], a["executed"], a["reason"]) for a in audit] == [("open", True, "ok")]

    replay = rig.call("open-gate", fresh)  # the same message again, still before its deadline
    assert not replay["ok"] and replay["reason"] == "replay" and "replay" in replay["error"]
    stale = rig.signed("open-gate", now=time.time() - 30, ttl_s=20)  # signed properly, deadline 10 s ago
    refused = rig.call("open-gate", stale)
    assert not refused["ok"] and refused["reason"] == "expired" and "deadline passed" in refused["error"]
    far = rig.call("open-gate", rig.signed("open-gate", ttl_s=3600))
    assert not far["ok"] and far["reason"] == "deadline_too_far" and "ahead" in far["error"]
    no_deadline = {k: v for k, v in rig.signed("open-gate").items() if k != "deadline"}
    refused_shape = rig.call("open-gate", no_deadline)
    assert not refused_shape["ok"] and refused_shape["reason"] == "malformed" and "deadline" in refused_shape["error"]
    time.sleep(0.1)  # a late relay step would show here: a wait for nothing to happen
    assert rig.relay_on_count() == 1, "no refused command touched the relay"
    # Refused before the gate handler: no gate row, but each one is in the command audit.
    assert [a["executed"] for a in rig.store.gate_actions(f"cmd:{fresh['id']}")] == [True]
    rows = rig.store.command_audit()
    assert [(r["command"], r["ok"], r["reason"]) for r in reversed(rows)] == [
        ("open-gate", True, "ok"),
        ("open-gate", False, "replay"),
        ("open-gate", False, "expired"),
        ("open-gate", False, "deadline_too_far"),
        ("open-gate", False, "malformed"),
    ]
    key_id = fresh["key_id"]
    assert rows[-1]["signer"] == f"duty-officer (key {key_id})" and rows[-1]["request_id"] == fresh["id"]
    assert rows[-2]["signer"] == f"duty-officer (key {key_id})", "a replay's signature did verify: it is named"
    assert rows[0]["signer"] is None, "a malformed body names nobody"
    # The audit also goes to the command centre through the outbox (durable, at-least-once).
    audits = [json.loads(r.payload) for r in rig.store.outbox_rows_after(0) if r.topic == f"{BASE}/events/audit"]
    gate_audits = [a for a in audits if a["kind"] == "remote_gate_action"]
    assert [(a["audit_id"], a["executed"]) for a in gate_audits] == [(f"cmd:{fresh['id']}", True)]
    assert gate_audits[0]["command"]["args"] == {"operator": "centre-7"}
    assert gate_audits[0]["command"]["signed_by"] == f"duty-officer (key {key_id})", "the operator is the signer"
    assert [a["reason"] for a in audits if a["kind"] == "remote_command"] == ["ok", "replay", "expired", "deadline_too_far", "malformed"]


def test_set_threshold_persists_keeping_comments_and_reload_config_validates(rig: Rig) -> None:
    comments_before = [ln for ln in rig.config.read_text().splitlines() if "#" in ln]
    reply = rig.call("set-threshold", rig.signed("set-threshold", {"fever_threshold_c": 37.8}))
    assert reply["ok"], reply
    assert reply["result"]["new"] == 37.8 and reply["result"]["old"] == 37.3 and reply["result"]["applied"] is False
    text = rig.config.read_text()
    assert "fever_threshold_c = 37.8" in text
    assert len([ln for ln in text.splitlines() if "#" in ln]) == len(comments_before)
    assert (rig.config.parent / "station.toml.bak").exists()

    bad = rig.call("set-threshold", rig.signed("set-threshold", {"fever_threshold_c": 45.0}))
    assert not bad["ok"] and "fever_threshold_c" in bad["error"]
    assert "fever_threshold_c = 37.8" in rig.config.read_text(), "a refused value is not written"
    not_number = rig.call("set-threshold", rig.signed("set-threshold", {"fever_threshold_c": "hot"}))
    assert not not_number["ok"]

    ok = rig.call("reload-config", rig.signed("reload-config"))
    assert ok["ok"] and ok["result"]["valid"] and "restart required" in ok["result"]["note"]
    rig.config.write_text(rig.config.read_text().replace("fever_threshold_c = 37.8", 'fever_threshold_c = "x"'))
    broken = rig.call("reload-config", rig.signed("reload-config"))
    assert not broken["ok"] and "fever_threshold_c" in broken["error"]


def test_trust_list_without_a_configured_signer_is_refused_and_nothing_stored(rig: Rig, tmp_path: Path) -> None:
    # Signature checks, versions and live use of pushed lists: tests/test_trust_list_mqtt.py.
    doc = {"version": 1, "certificates": [], "signature": "AAAA"}
    reply = rig.call("trust-list", rig.signed("trust-list", {"version": 1, "document": doc}))
    assert not reply["ok"] and "no trust-list signer configured" in reply["error"]
    assert not (tmp_path / "data" / "trust-list" / "current.json").exists()
    bad = rig.call("trust-list", rig.signed("trust-list", {"version": 0, "document": doc}))
    assert not bad["ok"] and "version" in bad["error"]


def test_states_are_retained_republished_on_change_and_stats_are_periodic(rig: Rig) -> None:
    wait_until(lambda: any(t.endswith("/state/gate") for t, _, _ in rig.sub.raw()), 5, "states published")
    late = Centre(rig.broker.port, "late", f"{BASE}/state/#")
    try:
        wait_until(
            lambda: {t for t, _, r in late.raw() if r} >= {f"{BASE}/state/outbox", f"{BASE}/state/gate"},
            5,
            "retained states for a late subscriber",
        )
        rig.outbox_state = {"pending": 12, "mqtt": "connected"}
        wait_until(
            lambda: any(json.loads(p).get("pending") == 12 for t, p, _ in late.raw() if t.endswith("/state/outbox")), 5, "the changed state"
        )
        gate_msgs = [t for t, _, _ in late.raw() if t.endswith("/state/gate")]
        assert len(gate_msgs) == 1, "an unchanged state is not re-published"
        wait_until(lambda: sum(1 for t, _, _ in rig.sub.raw() if t == f"{BASE}/stats") >= 2, 5, "periodic stats")
        stats = [json.loads(p) for t, p, _ in rig.sub.raw() if t == f"{BASE}/stats"][-1]
        assert stats["events"] == 3 and stats["schema"] == 1
    finally:
        late.close()


@pytest.mark.slow
def test_home_assistant_discovery_is_retained_and_resent_when_ha_comes_online(rig: Rig) -> None:
    from station.link.ha import HaDiscovery, discovery_configs

    configs = discovery_configs("homeassistant", BASE, "gate-a", "st-01", "1.0")
    ha = HaDiscovery(rig.publisher, "homeassistant", configs)
    rig.link.route("homeassistant/status", ha.on_ha_status)
    ha.announce()
    watcher = Centre(rig.broker.port, "home-assistant", "homeassistant/#")
    try:
        wait_until(lambda: len(watcher.raw()) >= len(configs), 5, "discovery configs")
        late = Centre(rig.broker.port, "late-home-assistant", "homeassistant/#")
        wait_until(lambda: len(late.raw()) >= len(configs), 5, "retained discovery configs")
        assert {t for t, _, r in late.raw() if r} == set(configs), "retained for a late Home Assistant"
        late.close()
        temp = next(json.loads(p) for t, p, _ in watcher.raw() if t.endswith("/last_temperature/config"))
        assert temp["state_topic"] == f"{BASE}/state/screening" and temp["unit_of_measurement"] == "°C"
        assert temp["unique_id"] == "checkpoint_gate_a_st_01_last_temperature"
        assert temp["device"]["identifiers"] == ["checkpoint_gate_a_st_01"]
        before = len(watcher.raw())
        watcher.client.publish("homeassistant/status", b"online", qos=1)  # HA's birth message
        wait_until(
            lambda: len([t for t, _, _ in watcher.raw() if t.endswith("/config")]) >= 2 * len(configs),
            5,
            "discovery re-sent after HA came online",
        )
        assert len(watcher.raw()) > before
        watcher.client.publish("homeassistant/status", b"offline", qos=1)
        time.sleep(0.3)  # HA going offline must not trigger a re-send: a wait for nothing to happen
        assert len([t for t, _, _ in watcher.raw() if t.endswith("/config")]) == 2 * len(configs)
    finally:
        watcher.close()


@pytest.mark.slow
def test_a_state_source_that_always_fails_is_counted_and_logged_once_a_minute(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    import logging

    r = Rig(tmp_path, start=False)
    calls = {"n": 0}

    def broken() -> dict:
        calls["n"] += 1
        raise RuntimeError("sensor table gone")

    r.link.states["broken"] = broken
    try:
        with caplog.at_level(logging.ERROR, logger="station.link.commands"):
            r.start()
            wait_until(lambda: calls["n"] >= 10, 20, "ten polls of the broken state source")
            assert r.call("ping", {"id": "still-serving"})["ok"], "the link goes on serving commands"
        assert r.link.stats()["failures"]["state:broken:RuntimeError"] >= 10
        lines = [rec.getMessage() for rec in caplog.records if "state:broken" in rec.getMessage()]
        assert len(lines) == 1, lines
        wait_until(
            lambda: any(json.loads(p).get("state") == "unknown" for t, p, _ in r.sub.raw() if t == f"{BASE}/state/broken"),
            10,
            "the unknown state published",
        )
    finally:
        r.close()
