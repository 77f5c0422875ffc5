"""Remote commands and retained states over a real mosquitto, with a real store and the real gate
driver on gpiozero's mock pins."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drivers.gate.gpio_gate import GpioGate
from drivers.publish.mqtt import MqttPublisher
from station.commands import CommandHandlers, StationLink
from station.store import SqliteEventStore
from tests.mosquitto import Broker, mosquitto_available
from tests.test_sync import Collector, wait_until

pytestmark = pytest.mark.skipif(not mosquitto_available(), reason="mosquitto not installed")

ROOT = Path(__file__).resolve().parents[1]
BASE = "checkpoint/v1/gate-a/st-01"


class Rig:
    def __init__(self, tmp_path: Path) -> None:
        self.broker = Broker(tmp_path / "broker")
        self.broker.start()
        self.config = tmp_path / "station.toml"
        shutil.copy(ROOT / "config" / "station.toml", self.config)
        self.store = SqliteEventStore(tmp_path / "events.db", station_id="st-01", site="gate-a")
        self.store.begin_session()
        self.gate = GpioGate(17, 27, 22, 23, 24, pin_factory="mock", open_s=0.2)
        self.publisher = MqttPublisher(self.broker.url, "station-st-01", f"{BASE}/status", b"offline", b"online")
        self.handlers = CommandHandlers(
            store=self.store, gate=self.gate, monotonic=time.monotonic, config_path=self.config,
            data_dir=tmp_path / "data", snapshot=lambda: {"lane_state": "idle"}, command_ttl_s=0.5,
        )
        self.outbox_state = {"pending": 0, "mqtt": "connected"}
        self.link = StationLink(
            self.publisher, BASE, {"station_id": "st-01", "site": "gate-a"},
            {"outbox": lambda: dict(self.outbox_state), "gate": lambda: {"state": "idle"}},
            lambda: {"events": 3}, self.handlers, stats_interval_s=0.3, poll_s=0.1,
        )
        self.publisher.start()
        self.link.start()
        wait_until(self.publisher.connected, 5, "connected")
        self.sub = Collector(self.broker.port, "centre", f"{BASE}/#", persistent=False)
        assert self.sub.subscribed.wait(5)

    def call(self, name: str, request: dict[str, Any] | bytes) -> dict[str, Any]:
        payload = request if isinstance(request, bytes) else json.dumps(request).encode()
        before = len(self.results(name))
        self.sub.client.publish(f"{BASE}/cmd/{name}", payload, qos=1)
        wait_until(lambda: len(self.results(name)) > before, 5, f"result of {name}")
        return self.results(name)[-1]

    def results(self, name: str) -> list[dict[str, Any]]:
        return [json.loads(p) for t, p, _ in self.sub.raw() if t == f"{BASE}/cmd/{name}/result"]

    def relay_on_count(self) -> int:
        return sum(1 for _, out, value in self.gate.history() if out == "relay" and value is True)

    def close(self) -> None:
        self.link.stop()
        self.publisher.stop()
        self.sub.close()
        self.gate.close()
        self.store.close()
        self.broker.kill()


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
    fresh = {"id": str(uuid.uuid4()), "deadline": time.time() + 5, "args": {"operator": "centre-7"}}
    reply = rig.call("open-gate", fresh)
    assert reply["ok"] and reply["result"]["executed"] is True, reply
    assert rig.relay_on_count() == 1
    audit = rig.store.gate_actions(f"cmd:{fresh['id']}")
    assert [(a["action"], a["executed"], a["reason"]) for a in audit] == [("open", True, "ok")]

    replay = rig.call("open-gate", fresh)  # the same message again, still before its deadline
    assert not replay["ok"] and "replay" in replay["error"]
    stale = {"id": str(uuid.uuid4()), "deadline": time.time() - 1}
    refused = rig.call("open-gate", stale)
    assert not refused["ok"] and "stale" in refused["error"]
    far = rig.call("open-gate", {"id": str(uuid.uuid4()), "deadline": time.time() + 3600})
    assert not far["ok"] and "ahead" in far["error"]
    no_deadline = rig.call("open-gate", {"id": str(uuid.uuid4())})
    assert not no_deadline["ok"] and "deadline" in no_deadline["error"]
    time.sleep(0.1)
    assert rig.relay_on_count() == 1, "no refused command touched the relay"
    assert [a["executed"] for a in rig.store.gate_actions(f"cmd:{fresh['id']}")] == [True, False]
    assert rig.store.gate_actions(f"cmd:{stale['id']}")[0]["reason"].startswith("refused: stale")
    # The audit also goes to the command centre through the outbox (durable, at-least-once).
    audits = [json.loads(r.payload) for r in rig.store.outbox_rows_after(0) if r.topic == f"{BASE}/events/audit"]
    assert [(a["audit_id"], a["executed"]) for a in audits[:2]] == [(f"cmd:{fresh['id']}", True), (f"cmd:{fresh['id']}", False)]
    assert len(audits) == 5 and all(a["kind"] == "remote_gate_action" for a in audits)
    assert audits[0]["command"]["args"] == {"operator": "centre-7"}


def test_set_threshold_persists_keeping_comments_and_reload_config_validates(rig: Rig) -> None:
    comments_before = [ln for ln in rig.config.read_text().splitlines() if "#" in ln]
    reply = rig.call("set-threshold", {"id": "t-1", "args": {"fever_threshold_c": 37.8}})
    assert reply["ok"], reply
    assert reply["result"]["new"] == 37.8 and reply["result"]["old"] == 37.3 and reply["result"]["applied"] is False
    text = rig.config.read_text()
    assert "fever_threshold_c = 37.8" in text
    assert len([ln for ln in text.splitlines() if "#" in ln]) == len(comments_before)
    assert (rig.config.parent / "station.toml.bak").exists()

    bad = rig.call("set-threshold", {"id": "t-2", "args": {"fever_threshold_c": 45.0}})
    assert not bad["ok"] and "fever_threshold_c" in bad["error"]
    assert "fever_threshold_c = 37.8" in rig.config.read_text(), "a refused value is not written"
    not_number = rig.call("set-threshold", {"id": "t-3", "args": {"fever_threshold_c": "hot"}})
    assert not not_number["ok"]

    ok = rig.call("reload-config", {"id": "r-1"})
    assert ok["ok"] and ok["result"]["valid"] and "restart required" in ok["result"]["note"]
    rig.config.write_text(rig.config.read_text().replace("fever_threshold_c = 37.8", "fever_threshold_c = \"x\""))
    broken = rig.call("reload-config", {"id": "r-2"})
    assert not broken["ok"] and "fever_threshold_c" in broken["error"]


def test_trust_list_without_a_configured_signer_is_refused_and_nothing_stored(rig: Rig, tmp_path: Path) -> None:
    # Signature checks, versions and live use of pushed lists: tests/test_trust_list_mqtt.py.
    doc = {"version": 1, "certificates": [], "signature": "AAAA"}
    reply = rig.call("trust-list", {"id": "l-1", "args": {"version": 1, "document": doc}})
    assert not reply["ok"] and "no trust-list signer configured" in reply["error"]
    assert not (tmp_path / "data" / "trust-list" / "current.json").exists()
    bad = rig.call("trust-list", {"id": "l-2", "args": {"version": 0, "document": doc}})
    assert not bad["ok"] and "version" in bad["error"]


def test_states_are_retained_republished_on_change_and_stats_are_periodic(rig: Rig) -> None:
    wait_until(lambda: any(t.endswith("/state/gate") for t, _, _ in rig.sub.raw()), 5, "states published")
    late = Collector(rig.broker.port, "late", f"{BASE}/state/#", persistent=False)
    try:
        wait_until(lambda: {t for t, _, r in late.raw() if r} >= {f"{BASE}/state/outbox", f"{BASE}/state/gate"},
                   5, "retained states for a late subscriber")
        rig.outbox_state = {"pending": 12, "mqtt": "connected"}
        wait_until(lambda: any(json.loads(p).get("pending") == 12 for t, p, _ in late.raw()
                               if t.endswith("/state/outbox")), 5, "the changed state")
        gate_msgs = [t for t, _, _ in late.raw() if t.endswith("/state/gate")]
        assert len(gate_msgs) == 1, "an unchanged state is not re-published"
        wait_until(lambda: sum(1 for t, _, _ in rig.sub.raw() if t == f"{BASE}/stats") >= 2, 5, "periodic stats")
        stats = [json.loads(p) for t, p, _ in rig.sub.raw() if t == f"{BASE}/stats"][-1]
        assert stats["events"] == 3 and stats["schema"] == 1
    finally:
        late.close()


def test_home_assistant_discovery_is_retained_and_resent_when_ha_comes_online(rig: Rig) -> None:
    from station.ha import HaDiscovery, discovery_configs

    configs = discovery_configs("homeassistant", BASE, "gate-a", "st-01", "1.0")
    ha = HaDiscovery(rig.publisher, "homeassistant", configs)
    rig.link.route("homeassistant/status", ha.on_ha_status)
    ha.announce()
    watcher = Collector(rig.broker.port, "home-assistant", "homeassistant/#", persistent=False)
    try:
        wait_until(lambda: len(watcher.raw()) >= len(configs), 5, "discovery configs")
        late = Collector(rig.broker.port, "late-home-assistant", "homeassistant/#", persistent=False)
        wait_until(lambda: len(late.raw()) >= len(configs), 5, "retained discovery configs")
        assert {t for t, _, r in late.raw() if r} == set(configs), "retained for a late Home Assistant"
        late.close()
        temp = next(json.loads(p) for t, p, _ in watcher.raw() if t.endswith("/last_temperature/config"))
        assert temp["state_topic"] == f"{BASE}/state/screening" and temp["unit_of_measurement"] == "°C"
        assert temp["unique_id"] == "checkpoint_gate_a_st_01_last_temperature"
        assert temp["device"]["identifiers"] == ["checkpoint_gate_a_st_01"]
        before = len(watcher.raw())
        watcher.client.publish("homeassistant/status", b"online", qos=1)  # HA's birth message
        wait_until(lambda: len([t for t, _, _ in watcher.raw() if t.endswith("/config")]) >= 2 * len(configs),
                   5, "discovery re-sent after HA came online")
        assert len(watcher.raw()) > before
        watcher.client.publish("homeassistant/status", b"offline", qos=1)
        time.sleep(0.3)
        assert len([t for t, _, _ in watcher.raw() if t.endswith("/config")]) == 2 * len(configs)
    finally:
        watcher.close()
