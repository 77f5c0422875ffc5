"""Trust-list pushes over a real mosquitto: verified, versioned, used without a restart.

The station side is the real command link (station.link.commands) with a real store; the verifier is
the real HC1 verifier over a TrustStore on the same data dir, created once before any push (as in
the running daemon). The "command centre" signs lists with its trust-list key, and each push as a
command with its command key (a trust list is a command that changes the station).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from drivers.gate.gpio_gate import GpioGate
from drivers.publish.mqtt import MqttPublisher
from sim.issuer import new_issuer, trust_list_document
from station.codes.hc1 import Hc1Verifier
from station.codes.trust_list import TrustStore, sign_document
from station.domain.model import CodeStatus
from station.link.command_auth import (
    CommandKeys,
    CommandVerifier,
    new_signing_key,
    public_pem,
    sign_command,
)
from station.link.commands import StationLink
from station.link.handlers import CommandHandlers
from station.store.events import SqliteEventStore
from tests.support.broker import Broker, mosquitto_available
from tests.support.command_rig import Centre
from tests.support.waiting import wait_until

pytestmark = pytest.mark.skipif(not mosquitto_available(), reason="mosquitto not installed")

ROOT = Path(__file__).resolve().parents[1]
BASE = "checkpoint/v1/gate-a/st-01"


class Rig:
    def __init__(self, tmp_path: Path) -> None:
        self.data = tmp_path / "data"
        self.centre_key = ec.generate_private_key(ec.SECP256R1())
        signer_pem = tmp_path / "trust-signer.pem"
        signer_pem.write_bytes(
            self.centre_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        self.old_signer, self.new_signer = new_issuer("ES256", "OLD"), new_issuer("PS256", "NEW")
        provisioned = tmp_path / "trust.json"
        provisioned.write_text(json.dumps(trust_list_document([self.old_signer])))
        self.verifier = Hc1Verifier(TrustStore(self.data, provisioned, check_s=0.0))
        self.broker = Broker(tmp_path / "broker")
        self.broker.start()
        config = tmp_path / "station.toml"
        shutil.copy(ROOT / "config" / "station.toml", config)
        self.store = SqliteEventStore(tmp_path / "events.db", station_id="st-01", site="gate-a")
        self.store.begin_session()
        self.gate = GpioGate(17, 27, 22, 23, 24, pin_factory="mock", open_s=0.2)
        self.publisher = MqttPublisher(self.broker.url, "station-st-01", f"{BASE}/status", b"offline", b"online")
        handlers = CommandHandlers(
            store=self.store,
            gate=self.gate,
            monotonic=time.monotonic,
            config_path=config,
            data_dir=self.data,
            snapshot=dict,
            trust_list_signer=signer_pem,
        )
        self.command_key = new_signing_key()
        keys_pem = tmp_path / "centre-keys.pem"
        keys_pem.write_text(public_pem(self.command_key.public_key()))
        verifier = CommandVerifier(CommandKeys(keys_pem, self.data), None, site="gate-a", station="st-01")
        self.link = StationLink(
            self.publisher,
            BASE,
            {"station_id": "st-01", "site": "gate-a"},
            {},
            dict,
            handlers,
            verifier=verifier,
            stats_interval_s=0,
            poll_s=0.1,
        )
        self.publisher.start()
        self.link.start()
        wait_until(self.publisher.connected, 5, "connected")
        self.sub = Centre(self.broker.port, "centre", f"{BASE}/cmd/#")
        assert self.sub.subscribed.wait(5)

    def push(self, corr: str, document: dict[str, Any], version: int | None = None) -> dict[str, Any]:
        args = {"version": version if version is not None else document.get("version"), "document": document}
        request = sign_command(
            self.command_key, site="gate-a", station="st-01", command="trust-list", args=args, by="trust-list desk", command_id=corr
        )
        self.sub.client.publish(f"{BASE}/cmd/trust-list", json.dumps(request).encode(), qos=1)
        topic = f"{BASE}/cmd/trust-list/result"
        wait_until(lambda: any(json.loads(p).get("id") == corr for t, p, _ in self.sub.raw() if t == topic), 5, corr)
        return next(json.loads(p) for t, p, _ in self.sub.raw() if t == topic and json.loads(p).get("id") == corr)

    def signed(self, issuers: list[Any], version: int, key: Any = None) -> dict[str, Any]:
        return sign_document([i.trust_entry() for i in issuers], version, key or self.centre_key)

    def close(self) -> None:
        self.sub.client.disconnect()  # before loop_stop(): paho's thread then ends at once, not after 1 s
        self.sub.client.loop_stop()
        self.link.stop()
        self.publisher.stop()
        self.gate.close()
        self.store.close()
        self.broker.stop()


@pytest.fixture
def rig(tmp_path: Path):
    r = Rig(tmp_path)
    try:
        yield r
    finally:
        r.close()


def _judge(rig: Rig, issuer: Any) -> tuple[CodeStatus, str]:
    now = time.time()
    v = rig.verifier.verify(issuer.issue("green", iat=now - 10, exp=now + 600).encode(), now)
    return v.status, v.reason


def test_a_new_signer_becomes_valid_without_restart_and_a_removed_one_stops(rig: Rig) -> None:
    assert _judge(rig, rig.old_signer) == (CodeStatus.VALID, "ok")
    assert _judge(rig, rig.new_signer) == (CodeStatus.UNVERIFIABLE, "unknown_kid")
    reply = rig.push("tl-1", rig.signed([rig.old_signer, rig.new_signer], 1))
    assert reply["ok"], reply
    assert reply["result"]["signature_verified"] is True and reply["result"]["version"] == 1
    assert _judge(rig, rig.new_signer) == (CodeStatus.VALID, "ok")  # same verifier object, no restart
    reply = rig.push("tl-2", rig.signed([rig.new_signer], 2))
    assert reply["ok"], reply
    assert _judge(rig, rig.old_signer) == (CodeStatus.UNVERIFIABLE, "unknown_kid")  # revoked by the centre
    stored = json.loads((rig.data / "trust-list" / "current.json").read_text())
    assert stored["version"] == 2 and stored["signature_verified"] is True


def test_bad_lists_are_rejected_and_the_old_list_is_kept(rig: Rig) -> None:
    assert rig.push("tl-1", rig.signed([rig.old_signer], 1))["ok"]
    before = (rig.data / "trust-list" / "current.json").read_bytes()
    forged_key = ec.generate_private_key(ec.SECP256R1())
    bad = {
        "tl-forged": rig.signed([rig.old_signer, rig.new_signer], 2, key=forged_key),  # wrong signing key
        "tl-tampered": dict(rig.signed([rig.old_signer], 3), certificates=[rig.new_signer.trust_entry()]),
        "tl-unsigned": {"version": 4, "certificates": [rig.new_signer.trust_entry()]},
        "tl-downgrade": rig.signed([rig.old_signer, rig.new_signer], 1),  # replay of an old version number
        # Properly signed, but one certificate does not parse: the whole list is refused.
        "tl-bad-cert": sign_document([rig.old_signer.trust_entry(), dict(rig.new_signer.trust_entry(), der="AAAA")], 5, rig.centre_key),
    }
    for corr, doc in bad.items():
        reply = rig.push(corr, doc)
        assert not reply["ok"] and "old list is kept" in reply["error"], (corr, reply)
    mismatch = rig.push("tl-mismatch", rig.signed([rig.new_signer], 6), version=7)
    assert not mismatch["ok"]
    assert (rig.data / "trust-list" / "current.json").read_bytes() == before
    assert _judge(rig, rig.old_signer) == (CodeStatus.VALID, "ok")
    assert _judge(rig, rig.new_signer) == (CodeStatus.UNVERIFIABLE, "unknown_kid")
