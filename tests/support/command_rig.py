"""A station's command link on a real mosquitto, for the command tests (not a test module itself).

Real store (SQLite file), the real gate driver on gpiozero's mock pins, the real MQTT publisher and
``StationLink``; the "command centre" is a plain paho client holding an Ed25519 signing key that
the station trusts (``centre.command_keys_file`` written to a PEM file).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from drivers.gate.gpio_gate import GpioGate
from drivers.publish.mqtt import MqttPublisher
from station.link.command_auth import (
    CommandKeys,
    CommandVerifier,
    PrivateKey,
    ReplayGuard,
    new_signing_key,
    public_pem,
    sign_command,
)
from station.link.commands import COMMAND_IDS_FILE, StationLink
from station.link.handlers import CommandHandlers
from station.store.events import SqliteEventStore
from tests.support.broker import Broker
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
SITE, STATION = "gate-a", "st-01"
BASE = f"checkpoint/v1/{SITE}/{STATION}"


class Centre:
    """A paho client that records every message under ``topic`` and can publish."""

    def __init__(self, port: int, client_id: str, topic: str) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv311, clean_session=True
        )
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1) if rc == 0 else None
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.connect_async("127.0.0.1", port, 30)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def raw(self) -> list[tuple[str, bytes, bool]]:
        with self.lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()  # first: the network thread then ends at once instead of within select()'s 1 s
        self.client.loop_stop()


def write_public_keys(path: Path, *keys: PrivateKey) -> Path:
    path.write_text("".join(public_pem(k.public_key()) for k in keys))
    return path


class Rig:
    """Station link + centre on one broker; ``keys=False`` provisions no centre key at all."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        keys: bool = True,
        keys_file: Path | None = None,
        trust_list_signer: Path | None = None,
        max_command_bytes: int = 262144,
        refused_audit_per_min: int = 10,
        start: bool = True,
    ) -> None:
        self.tmp = tmp_path
        self.broker = Broker(tmp_path / "broker")
        self.broker.start()
        self.config = tmp_path / "station.toml"
        shutil.copy(ROOT / "config" / "station.toml", self.config)
        self.data = tmp_path / "data"
        self.key = new_signing_key()
        self.keys_file = keys_file or (write_public_keys(tmp_path / "centre-keys.pem", self.key) if keys else None)
        self.store = SqliteEventStore(tmp_path / "events.db", station_id=STATION, site=SITE)
        self.store.begin_session()
        self.gate = GpioGate(17, 27, 22, 23, 24, pin_factory="mock", open_s=0.2)
        self.publisher = MqttPublisher(self.broker.url, f"station-{STATION}", f"{BASE}/status", b"offline", b"online")
        self.command_keys = CommandKeys(self.keys_file, self.data)
        self.replay = ReplayGuard(self.data / COMMAND_IDS_FILE)
        self.verifier = CommandVerifier(self.command_keys, self.replay, site=SITE, station=STATION)
        self.handlers = CommandHandlers(
            store=self.store,
            gate=self.gate,
            monotonic=time.monotonic,
            config_path=self.config,
            data_dir=self.data,
            snapshot=lambda: {"lane_state": "idle"},
            command_ttl_s=0.5,
            trust_list_signer=trust_list_signer,
            command_keys=self.command_keys,
        )
        self.outbox_state = {"pending": 0, "mqtt": "connected"}
        self.link = StationLink(
            self.publisher,
            BASE,
            {"station_id": STATION, "site": SITE},
            {"outbox": lambda: dict(self.outbox_state), "gate": lambda: {"state": "idle"}},
            lambda: {"events": 3},
            self.handlers,
            verifier=self.verifier,
            stats_interval_s=0.3,
            poll_s=0.1,
            max_command_bytes=max_command_bytes,
            refused_audit_per_min=refused_audit_per_min,
        )
        self.sub = Centre(self.broker.port, "centre", f"{BASE}/#")
        assert self.sub.subscribed.wait(5)
        if start:
            self.start()

    def start(self) -> None:
        self.publisher.start()
        self.link.start()
        wait_until(self.publisher.connected, 5, "station connected")
        # Connected is not subscribed: a command sent before the broker has the station's SUBSCRIBE
        # is lost. A read-only ping answered proves the command path is live.
        for _ in range(10):
            self.sub.client.publish(f"{BASE}/cmd/ping", b'{"id": "rig-ready"}', qos=1)
            with contextlib.suppress(AssertionError):
                wait_until(lambda: bool(self.results("ping")), 1.0, "ping")
                return
        raise AssertionError("the station never answered a ping")

    def signed(
        self,
        name: str,
        args: dict[str, Any] | None = None,
        *,
        key: PrivateKey | None = None,
        ttl_s: float = 20.0,
        by: str = "duty-officer",
        **fields: Any,
    ) -> dict[str, Any]:
        """A command signed by the centre key (``fields`` override site/station/command/now/command_id)."""
        kw: dict[str, Any] = {"site": SITE, "station": STATION, "command": name, **fields}
        return sign_command(key or self.key, args=args or {}, by=by, ttl_s=ttl_s, **kw)

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
        self.replay.close()
        self.broker.kill()
