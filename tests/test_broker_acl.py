"""The broker access rules we ship (systemd/mosquitto/) on a real mosquitto: the shipped ACL file as
is, the shipped TLS listener options with a CA and server certificate made here, a password file from
mosquitto_passwd. A station publishes and reads only its own subtree; the centre commands; a board
only reads; anonymous clients and wrong passwords are refused.

"Never arrives" is shown with a later message that is allowed on the same path: once it has
arrived, the forbidden one (sent and acknowledged before it) would have arrived first.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from station.config import StationConfig
from station.link.sync import publisher_from_config
from tests.support.broker import Broker, mosquitto_available
from tests.support.pki import make_pki
from tests.support.waiting import wait_until

pytestmark = pytest.mark.skipif(not mosquitto_available(), reason="mosquitto not installed")

SHIPPED = Path(__file__).resolve().parents[1] / "systemd" / "mosquitto"
A, B, C = "gate-a/st-01", "gate-a/st-02", "gate-b/st-01"  # C: a station of another site
CENTRE, BOARD = "centre.district", "board.district"  # the user names the shipped ACL names
PASSWORDS = {A: "pw-a-1", B: "pw-b-2", C: "pw-c-3", CENTRE: "pw-centre-4", BOARD: "pw-board-5"}
NOT_AUTHORIZED = 0x87
BAD_CREDENTIALS = 0x86
TIMEOUT = 10.0
_ids = itertools.count()


def tree(user: str) -> str:
    return f"checkpoint/v1/{user}"


def shipped_config() -> tuple[dict[str, str], list[tuple[str, str]]]:
    """The shipped checkpoint.conf: its global options, and its one listener's options in order."""
    global_opts: dict[str, str] = {}
    listener: list[tuple[str, str]] = []
    seen_listener = False
    for raw in (SHIPPED / "checkpoint.conf").read_text().splitlines():
        if not raw.strip() or raw.startswith("#"):
            continue
        key, _, value = raw.strip().partition(" ")
        if key == "listener":
            assert not seen_listener, "one listener only"
            seen_listener = True
            listener.append((key, value))
        elif seen_listener:
            listener.append((key, value))
        else:
            global_opts[key] = value
    return global_opts, listener


# -- clients -------------------------------------------------------------------------------------------


class Client:
    """A paho MQTT 5 client over TLS that records CONNACK, SUBACK, PUBACK reason codes and messages."""

    def __init__(self, port: int, ca: Path, user: str | None, password: str | None = None) -> None:
        self.user = user
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"acl-test-{next(_ids)}", protocol=MQTTProtocolVersion.MQTTv5)
        self.client.tls_set(ca_certs=str(ca))
        if user is not None:
            self.client.username_pw_set(user, password)
        self.cond = threading.Condition()
        self.connack: Any = None
        self.messages: list[tuple[str, bytes]] = []
        self.subacks: dict[int, list[Any]] = {}
        self.pubacks: dict[int, Any] = {}
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish
        self.client.connect_async("127.0.0.1", port, keepalive=30)
        self.client.loop_start()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        with self.cond:
            if self.connack is None:
                self.connack = reason
            self.cond.notify_all()
        if reason.is_failure:
            client.disconnect()  # no retry loop against a refusal

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self.cond:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self.cond.notify_all()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        with self.cond:
            self.subacks[mid] = list(reasons)
            self.cond.notify_all()

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        with self.cond:
            self.pubacks[mid] = reason
            self.cond.notify_all()

    def _wait(self, predicate: Any, what: str, timeout: float = TIMEOUT) -> None:
        with self.cond:
            if not self.cond.wait_for(predicate, timeout):
                raise AssertionError(f"{self.user}: timed out after {timeout} s waiting for {what}")

    def wait_connack(self) -> Any:
        self._wait(lambda: self.connack is not None, "CONNACK")
        return self.connack

    def connected(self) -> Client:
        reason = self.wait_connack()
        assert not reason.is_failure, f"{self.user} refused: {reason}"
        return self

    def subscribe(self, *filters: str) -> list[Any]:
        result, mid = self.client.subscribe([(f, 1) for f in filters])
        assert result == mqtt.MQTT_ERR_SUCCESS and mid is not None
        self._wait(lambda: mid in self.subacks, f"SUBACK for {filters}")
        return self.subacks[mid]

    def publish(self, topic: str, payload: bytes) -> Any:
        """QoS 1; returns once the broker has acknowledged it (so it has been routed or dropped)."""
        info = self.client.publish(topic, payload, qos=1)
        self._wait(lambda: info.mid in self.pubacks, f"PUBACK for {topic}")
        return self.pubacks[info.mid]

    def wait_for(self, topic: str, payload: bytes) -> int:
        """Index of ``(topic, payload)`` in the messages received, once it is there."""
        self._wait(lambda: (topic, payload) in self.messages, f"{payload!r} on {topic}")
        with self.cond:
            return self.messages.index((topic, payload))

    def wait_topic(self, topic: str) -> bytes:
        """The first payload received on ``topic``, once there is one."""
        self._wait(lambda: any(t == topic for t, _ in self.messages), f"a message on {topic}")
        with self.cond:
            return next(p for t, p in self.messages if t == topic)

    def received(self) -> list[tuple[str, bytes]]:
        with self.cond:
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, Path]]:
    work = tmp_path_factory.mktemp("acl-broker")
    pki = make_pki(work)
    global_opts, listener = shipped_config()
    # The parts of the shipped config this test stands in for: its own port, files and accounts.
    assert global_opts["allow_anonymous"] == "false"
    assert {"password_file", "acl_file"} <= global_opts.keys()
    assert listener[0] == ("listener", "8883")
    keys = [k for k, _ in listener]
    assert {"cafile", "certfile", "keyfile"} <= set(keys)
    files = {"cafile": pki.ca, "certfile": pki.cert, "keyfile": pki.key}
    listener_options = [f"{k} {files.get(k, v)}" for k, v in listener[1:]]  # the shipped TLS options, our paths
    server = Broker(
        work / "broker", allow_anonymous=False, users=PASSWORDS, acl_file=SHIPPED / "checkpoint.acl", listener_options=listener_options
    )
    server.start()
    try:
        yield server, pki.ca
    finally:
        server.kill()


@pytest.fixture
def connect(broker: tuple[Broker, Path]) -> Iterator[Any]:
    server, ca = broker
    made: list[Client] = []

    def make(user: str | None, password: str | None = None) -> Client:
        client = Client(server.port, ca, user, PASSWORDS.get(user or "") if password is None else password)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def test_anonymous_clients_and_wrong_passwords_are_refused(connect: Any) -> None:
    anonymous = connect(None).wait_connack()
    assert anonymous.is_failure and anonymous.value in (NOT_AUTHORIZED, BAD_CREDENTIALS), anonymous
    wrong = connect(A, "pw-b-2").wait_connack()  # B's password for A's name
    assert wrong.is_failure and wrong.value in (NOT_AUTHORIZED, BAD_CREDENTIALS), wrong
    unknown = connect("gate-a/st-99", "anything").wait_connack()
    assert unknown.is_failure, unknown
    connect(A).connected()  # and the right one gets in over the same TLS listener


def test_a_station_cannot_publish_into_another_stations_tree(connect: Any) -> None:
    a, b, centre = connect(A).connected(), connect(B).connected(), connect(CENTRE).connected()
    b.subscribe(f"{tree(B)}/cmd/+", f"{tree(B)}/lookup/code/result")
    centre.subscribe("checkpoint/v1/#")
    forged = [
        (f"{tree(B)}/cmd/open-gate", b'{"id":"forged-1","deadline":9999999999}'),
        (f"{tree(B)}/lookup/code/result", b'{"id":"x","colour":"green","forged":true}'),
        (f"{tree(B)}/events/screening", b'{"forged":"event"}'),
        (f"{tree(B)}/status", b"forged-offline"),
        (f"{tree(C)}/cmd/open-gate", b'{"forged":"other site"}'),
        (f"{tree(A)}/cmd/open-gate", b'{"forged":"own gate, not from the centre"}'),
        (f"{tree(A)}/lookup/code/result", b'{"forged":"own green"}'),
    ]
    for topic, payload in forged:
        reason = a.publish(topic, payload)
        assert reason.value == NOT_AUTHORIZED, (topic, reason)  # mosquitto 2 says so in the MQTT 5 PUBACK
    # Markers that are allowed, sent after the forged ones were acknowledged (so routed or dropped).
    assert not a.publish(f"{tree(A)}/events/screening", b"a-marker").is_failure
    assert not centre.publish(f"{tree(B)}/cmd/ping", b"centre-cmd-marker").is_failure
    assert not centre.publish(f"{tree(B)}/lookup/code/result", b"centre-answer-marker").is_failure
    centre.wait_for(f"{tree(A)}/events/screening", b"a-marker")
    b.wait_for(f"{tree(B)}/cmd/ping", b"centre-cmd-marker")
    b.wait_for(f"{tree(B)}/lookup/code/result", b"centre-answer-marker")
    seen = b.received() + centre.received()
    assert not [m for m in seen if m in forged], "a forged message got through"
    assert b.received() == [(f"{tree(B)}/cmd/ping", b"centre-cmd-marker"), (f"{tree(B)}/lookup/code/result", b"centre-answer-marker")]


def test_a_station_cannot_read_another_stations_commands_or_answers(connect: Any) -> None:
    a, b, centre = connect(A).connected(), connect(B).connected(), connect(CENTRE).connected()
    b.subscribe(f"{tree(B)}/cmd/+", f"{tree(B)}/lookup/code/result")
    centre.subscribe(f"{tree(B)}/events/#")
    # A asks for B's commands every way it can; the broker may grant the filters, it delivers nothing of B's.
    a.subscribe(f"{tree(B)}/cmd/#", f"{tree(B)}/lookup/code/result", "checkpoint/v1/+/+/cmd/+", "#", f"{tree(A)}/cmd/+")
    for topic, payload in (
        (f"{tree(B)}/cmd/open-gate", b"for-b-only"),
        (f"{tree(B)}/lookup/code/result", b"b-answer-only"),
        (f"{tree(C)}/cmd/set-threshold", b"for-c-only"),
    ):
        assert not centre.publish(topic, payload).is_failure
    b.wait_for(f"{tree(B)}/cmd/open-gate", b"for-b-only")
    b.wait_for(f"{tree(B)}/lookup/code/result", b"b-answer-only")
    # B's station-side traffic too: its events and state are not A's business.
    assert not b.publish(f"{tree(B)}/events/screening", b"b-event").is_failure
    centre.wait_for(f"{tree(B)}/events/screening", b"b-event")
    assert not centre.publish(f"{tree(A)}/cmd/ping", b"a-own-cmd").is_failure
    index = a.wait_for(f"{tree(A)}/cmd/ping", b"a-own-cmd")
    got = a.received()
    own = {f"{tree(A)}/cmd/ping", f"{tree(A)}/lookup/code/result", "homeassistant/status"}
    assert all(topic in own for topic, _ in got), got  # with "#" subscribed: only what A may read
    assert index == 0 or all(topic in own for topic, _ in got[:index])


def test_the_station_works_in_its_own_tree_with_its_real_client(connect: Any, broker: tuple[Broker, Path], tmp_path: Path) -> None:
    server, ca = broker
    centre = connect(CENTRE).connected()
    centre.subscribe("checkpoint/v1/#")
    board = connect(BOARD).connected()
    board.subscribe("$share/boards/checkpoint/v1/+/+/events/#", "checkpoint/v1/+/+/status")
    (tmp_path / "mqtt-password").write_text(PASSWORDS[A] + "\n")
    (tmp_path / "mqtt-password").chmod(0o600)
    cfg = StationConfig()
    cfg.station.site, cfg.station.id = A.split("/")
    cfg.mqtt.url = f"mqtts://127.0.0.1:{server.port}"
    cfg.mqtt.username = A
    cfg.mqtt.password_file = str(tmp_path / "mqtt-password")
    cfg.mqtt.tls_ca_file = str(ca)
    station = publisher_from_config(cfg, session=7)
    commands: list[tuple[str, bytes]] = []
    answers: list[tuple[str, bytes]] = []
    station.subscribe(f"{tree(A)}/cmd/+", lambda t, p: commands.append((t, p)))
    station.subscribe(f"{tree(A)}/lookup/code/result", lambda t, p: answers.append((t, p)))
    station.start()
    try:
        wait_until(station.connected, TIMEOUT, "station connected")
        assert b'"online"' in centre.wait_topic(f"{tree(A)}/status")  # its birth message (and Will) are allowed
        # Every topic docs/mqtt.md has the station send.
        sends = [
            "events/screening",
            "events/alarm",
            "events/audit",
            "events/vehicle",
            "state/screening",
            "state/outbox",
            "state/flush",
            "stats",
            "snapshot",
            "cmd/ping/result",
            "lookup/code",
        ]
        for suffix in sends:
            assert station.publish_direct(f"{tree(A)}/{suffix}", f"from-a:{suffix}".encode(), qos=1, retain=False)
        for suffix in sends:
            centre.wait_for(f"{tree(A)}/{suffix}", f"from-a:{suffix}".encode())
        board.wait_for(f"{tree(A)}/events/screening", b"from-a:events/screening")
        # What the station reads.
        assert not centre.publish(f"{tree(A)}/cmd/ping", b'{"id":"p1"}').is_failure
        assert not centre.publish(f"{tree(A)}/lookup/code/result", b'{"id":"l1"}').is_failure
        wait_until(lambda: commands and answers, TIMEOUT, "a command and a look-up answer")
        assert commands == [(f"{tree(A)}/cmd/ping", b'{"id":"p1"}')]
        assert answers == [(f"{tree(A)}/lookup/code/result", b'{"id":"l1"}')]
    finally:
        station.stop()


def test_a_board_reads_but_cannot_command(connect: Any) -> None:
    board, b, centre = connect(BOARD).connected(), connect(B).connected(), connect(CENTRE).connected()
    b.subscribe(f"{tree(B)}/cmd/+", f"{tree(B)}/lookup/code/result")
    board.subscribe(f"{tree(B)}/cmd/+")
    assert board.publish(f"{tree(B)}/cmd/open-gate", b"board-forged").value == NOT_AUTHORIZED
    assert board.publish(f"{tree(B)}/lookup/code/result", b"board-green").value == NOT_AUTHORIZED
    assert board.publish(f"{tree(B)}/events/screening", b"board-event").value == NOT_AUTHORIZED
    assert not centre.publish(f"{tree(B)}/cmd/ping", b"centre-marker").is_failure
    b.wait_for(f"{tree(B)}/cmd/ping", b"centre-marker")
    assert b.received() == [(f"{tree(B)}/cmd/ping", b"centre-marker")]
    assert board.received() == []  # commands are not on the board's list either
