"""``mqtt.protocol = "auto"``: MQTT 5, falling back to 3.1.1 when the broker lacks 5 (issue 6).

An old broker is simulated by a tiny MQTT server on a real socket (:class:`OldBroker`): it speaks
just enough 3.1.1 for a publisher (CONNECT/CONNACK, QoS 1 PUBLISH/PUBACK, PINGREQ, DISCONNECT)
and answers an MQTT 5 CONNECT the way old brokers do — a 3.1.1 CONNACK "unacceptable protocol
version" or just closing the socket. The real mosquitto shows that "auto" stays on MQTT 5.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.publish.mqtt import MqttPublisher
from tests.support.broker import Broker, mosquitto_available
from tests.support.sync_rig import STATUS
from tests.support.waiting import wait_until

CONNACK_OK = b"\x20\x02\x00\x00"
CONNACK_BAD_VERSION = b"\x20\x02\x00\x01"  # 3.1.1 return code 1: unacceptable protocol version
CONNACK_V5_BAD_PASSWORD = b"\x20\x03\x00\x86\x00"  # MQTT 5: 0x86 bad user name or password


class OldBroker:
    """An MQTT 3.1.1-only broker on 127.0.0.1 (free port).

    ``on_v5``: ``"connack"`` answers an MQTT 5 CONNECT with :data:`CONNACK_BAD_VERSION` and
    closes; ``"close"`` closes without any CONNACK; any other bytes are sent as the CONNACK (to
    play a broker that does speak MQTT 5). ``levels`` records the protocol level of every CONNECT.
    """

    def __init__(self, on_v5: str | bytes) -> None:
        self.on_v5 = on_v5
        self.levels: list[int] = []
        self.published: list[tuple[str, bytes, int]] = []
        self._clients: list[socket.socket] = []
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self._closed = False
        self._accept_thread = threading.Thread(target=self._accept, name="old-broker", daemon=True)
        self._accept_thread.start()

    def close(self) -> None:
        self._closed = True
        # shutdown wakes the accept thread's accept(); close alone leaves it blocked until the join times out.
        try:
            self._server.shutdown(socket.SHUT_RDWR)
        except OSError as exc:
            logging.getLogger(__name__).debug("shutdown: %s", exc)
        self._server.close()
        self.drop_clients()
        self._accept_thread.join(2)
        assert not self._accept_thread.is_alive(), "the old broker's accept thread did not end"

    def drop_clients(self) -> None:
        """Close every client connection (a broker restart, as the client sees it)."""
        with self._lock:
            clients, self._clients = self._clients, []
        for conn in clients:
            # shutdown wakes the serving thread's recv; close alone would leave it blocked.
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError as exc:  # the client closed it first
                logging.getLogger(__name__).debug("shutdown: %s", exc)
            conn.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._server.accept()
            except OSError:  # the listening socket was closed by close(): the test is over
                return
            with self._lock:
                self._clients.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _read_exact(conn: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise ConnectionError("client closed")
            data += chunk
        return data

    def _read_packet(self, conn: socket.socket) -> tuple[int, bytes]:
        header = self._read_exact(conn, 1)[0]
        length, shift = 0, 0
        while True:  # "remaining length" variable byte integer
            byte = self._read_exact(conn, 1)[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        return header, self._read_exact(conn, length)

    def _serve(self, conn: socket.socket) -> None:
        try:
            while True:
                header, body = self._read_packet(conn)
                kind = header >> 4
                if kind == 1:  # CONNECT: protocol name (length-prefixed), then the level byte
                    name_len = int.from_bytes(body[:2], "big")
                    level = body[2 + name_len]
                    self.levels.append(level)
                    if level == 4:
                        conn.sendall(CONNACK_OK)
                        continue
                    if self.on_v5 == "connack":
                        conn.sendall(CONNACK_BAD_VERSION)
                    elif isinstance(self.on_v5, bytes):
                        conn.sendall(self.on_v5)
                        if self.on_v5[3] == 0:
                            continue  # accepted: this broker speaks MQTT 5 (not used for PUBLISH)
                    return  # an old broker hangs up on a version it does not know
                if kind == 3:  # PUBLISH
                    qos = (header >> 1) & 3
                    topic_len = int.from_bytes(body[:2], "big")
                    topic = body[2 : 2 + topic_len].decode()
                    rest = body[2 + topic_len :]
                    if qos:
                        packet_id, rest = rest[:2], rest[2:]
                        conn.sendall(b"\x40\x02" + packet_id)  # PUBACK
                    self.published.append((topic, rest, qos))
                elif kind == 12:  # PINGREQ
                    conn.sendall(b"\xd0\x00")
                elif kind == 14:  # DISCONNECT
                    return
        except (ConnectionError, OSError) as exc:  # the client or drop_clients() closed it
            logging.getLogger(__name__).debug("old broker connection ended: %s", exc)
        finally:
            conn.close()


@pytest.fixture()
def old_broker(request: pytest.FixtureRequest) -> Iterator[OldBroker]:
    broker = OldBroker(request.param)
    yield broker
    broker.close()


def _publisher(url: str) -> MqttPublisher:
    # protocol is left at its default: "auto" is what a station gets out of the box.
    return MqttPublisher(url, "station-fallback", STATUS, b"offline", b"online", reconnect_min_delay=0.05, reconnect_max_delay=0.2)


@pytest.mark.parametrize("old_broker", ["connack", "close"], indirect=True)
def test_auto_falls_back_to_3_1_1_and_stays_there(old_broker: OldBroker, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="station.mqtt")
    pub = _publisher(old_broker.url)
    acks: list[int] = []
    pub.set_ack_handler(acks.append)
    connected_hooks: list[str] = []
    pub.on_connected.append(lambda: connected_hooks.append(pub.protocol))
    assert pub.protocol == "5" and pub.stats()["protocol_setting"] == "auto"
    pub.start()
    try:
        wait_until(pub.connected, 5, "connected after falling back to MQTT 3.1.1")
        assert pub.state == "connected"
        assert pub.protocol == "3.1.1" and pub.stats()["protocol"] == "3.1.1"
        assert old_broker.levels == [5, 4]
        assert connected_hooks == ["3.1.1"], "the on_connected hooks survive the new paho client"

        mid = pub.publish("checkpoint/v1/test/events", b'{"n": 1}', qos=1)
        wait_until(lambda: mid in acks, 5, "PUBACK of a QoS 1 publish over MQTT 3.1.1")
        assert acks == [mid]

        # A reconnect keeps the negotiated version: no new MQTT 5 attempt.
        old_broker.drop_clients()
        wait_until(lambda: pub.connects == 2 and pub.connected(), 5, "reconnected")
        assert old_broker.levels == [5, 4, 4]
        assert pub.protocol == "3.1.1" and connected_hooks == ["3.1.1", "3.1.1"]
        mid2 = pub.publish("checkpoint/v1/test/events", b'{"n": 2}', qos=1)
        wait_until(lambda: mid2 in acks, 5, "PUBACK after the reconnect")
        assert acks == [mid, mid2]
    finally:
        pub.stop()
    assert pub.state == "stopped"
    assert (STATUS, b"stopped", 1) in old_broker.published, "the stopped status went out on 3.1.1"

    in_use = [r for r in caplog.records if "MQTT protocol in use" in r.getMessage()]
    assert len(in_use) == 1, "the version in use is logged once, not on every reconnect"
    assert "MQTT 3.1.1 (fallback" in in_use[0].getMessage()
    switches = [
        r for r in caplog.records if "MQTT 3.1.1" in r.getMessage() and ("switching to" in r.getMessage() or "trying" in r.getMessage())
    ]
    assert len(switches) == 1


@pytest.mark.parametrize("old_broker", [CONNACK_V5_BAD_PASSWORD], indirect=True)
def test_a_wrong_password_is_not_taken_for_a_protocol_problem(old_broker: OldBroker) -> None:
    pub = MqttPublisher(
        old_broker.url,
        "station-fallback",
        STATUS,
        b"offline",
        b"online",
        username="st-01",
        password="wrong",
        reconnect_min_delay=0.05,
        reconnect_max_delay=0.2,
    )
    pub.start()
    try:
        wait_until(lambda: pub.state == "auth_failed", 5, "auth_failed")
        assert old_broker.levels == [5], "no MQTT 3.1.1 retry for bad credentials"
        assert pub.protocol == "5" and pub.last_error == "Bad user name or password"
    finally:
        pub.stop()


def test_forced_5_does_not_fall_back() -> None:
    broker = OldBroker("connack")
    pub = MqttPublisher(
        broker.url, "station-fallback", STATUS, b"offline", b"online", protocol="5", reconnect_min_delay=0.05, reconnect_max_delay=0.1
    )
    pub.start()
    try:
        wait_until(lambda: len(broker.levels) >= 3, 5, "retries")
        assert set(broker.levels) == {5} and not pub.connected()
        assert pub.last_error == "Unsupported protocol version"
    finally:
        pub.stop()
        broker.close()


@pytest.mark.skipif(not mosquitto_available(), reason="mosquitto not installed")
def test_auto_stays_on_mqtt_5_with_mosquitto(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="station.mqtt")
    broker = Broker(tmp_path / "broker")
    broker.start()
    pub = _publisher(broker.url)
    acks: list[int] = []
    pub.set_ack_handler(acks.append)
    pub.start()
    try:
        wait_until(pub.connected, 5, "connected to mosquitto")
        assert pub.protocol == "5" and pub.stats()["protocol"] == "5"
        mid = pub.publish("checkpoint/v1/test/events", b"{}", qos=1)
        wait_until(lambda: mid in acks, 5, "PUBACK from mosquitto")
    finally:
        pub.stop()
        broker.kill()
    in_use = [r.getMessage() for r in caplog.records if "MQTT protocol in use" in r.getMessage()]
    assert in_use == [f"MQTT protocol in use with 127.0.0.1:{broker.port}: MQTT 5"]
    assert "switching to MQTT 3.1.1" not in caplog.text and "trying MQTT 3.1.1" not in caplog.text
