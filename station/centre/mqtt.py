"""The centre's MQTT subscriber: every station's ``events/#`` through an MQTT 5 shared subscription, acknowledged by hand.

``$share/<group>/<prefix>/+/+/events/#`` at QoS 1: N replicas in the same group each get a share of
the stream (mosquitto 2, EMQX, VerneMQ, HiveMQ). Unlike the board (``station.board.mqtt``), whose
handler commits before paho's automatic PUBACK, the centre commits in batches on another thread: paho's
manual acknowledgement (``manual_ack_set(True)``) lets it send each PUBACK only after the batch holding
the message is committed in PostgreSQL. A replica killed with a batch in memory never acknowledged
it; the broker keeps those messages in the replica's persistent session and sends them again when
it comes back (same client id), and ``ON CONFLICT DO NOTHING`` makes a second copy harmless.

The client's MQTT 5 *Receive Maximum* bounds the unacknowledged messages the broker sends: while
PostgreSQL is unreachable the centre stops taking new ones instead of filling its memory.

Packet ids belong to one connection: a message received before a reconnect is never acknowledged on
the new connection (the id may by then name another message); the broker re-sends it instead.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from station.ops.mqtt_url import parse_mqtt_url

log = logging.getLogger("station.centre.mqtt")

RECV_CHUNK = 64 * 1024  # one socket read serves many ~1 kB PUBLISH packets (paho alone reads each in 4-5 calls)
MAX_PACKET = 256 * 1024  # the largest events payload taken is 64 KiB (station.board.schema.MAX_PAYLOAD)


def events_filter(prefix: str, share_group: str | None) -> str:
    """Return the topic filter of every station's events, shared by ``share_group`` when given."""
    events = f"{prefix.rstrip('/')}/+/+/events/#"
    return f"$share/{share_group}/{events}" if share_group else events


class _CentreClient(mqtt.Client):
    """paho's client with reads ahead and a short decode of the PUBLISH packets the centre lives on (QoS 1, no properties).

    Why: paho builds an MQTT 5 ``Properties`` object (27 names, each cleared through ``hasattr``) and
    an ``MQTTMessage`` for every PUBLISH, then walks its topic matcher: about a third of a replica's
    CPU per event at the bench's rate. Stations publish their events without properties, so for
    those the topic, packet id and payload are cut from the packet here and handed straight to
    ``fast_deliver``; anything else (QoS 0 or 2, any property, a packet too short to hold its own
    fields) goes through paho's own decode and ``on_message``. Relies on paho 2.x internals
    (``_in_packet``, ``_handle_publish``); pinned ``paho-mqtt>=2.2,<3`` and checked by a test
    against paho's own decode over a real broker.
    """

    fast_deliver: Callable[[str, bytes, int], None] | None = None
    _rbuf = b""  # bytes read from the socket ahead of paho's reads, and where paho has got to in them
    _rpos = 0
    cut_short = 0  # PUBLISH packets decoded here rather than by paho

    def _sock_recv(self, bufsize: int) -> bytes:
        """Serve paho's reads (1 byte of header, 1 per length byte, then the rest) from one 64 KiB read."""
        if self._rpos >= len(self._rbuf):
            data = super()._sock_recv(RECV_CHUNK)
            if len(data) <= bufsize:  # b"" when the broker closed the connection
                return data
            self._rbuf, self._rpos = data, 0
        start = self._rpos
        self._rpos = min(start + bufsize, len(self._rbuf))
        return self._rbuf[start : self._rpos]

    def _sock_close(self) -> None:
        self._rbuf, self._rpos = b"", 0
        super()._sock_close()

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        rc = super().loop_read(max_packets)
        # Packets already read ahead are invisible to select(): take them now, not when the socket next has a byte.
        while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and self._sock is not None and self._rpos < len(self._rbuf):
            rc = super().loop_read(1)
        return rc

    def _handle_publish(self) -> MQTTErrorCode:
        deliver = self.fast_deliver
        header, packet = self._in_packet["command"], self._in_packet["packet"]
        if deliver is None or (header & 0x06) != 0x02 or not self._manual_ack or self._protocol != MQTTProtocolVersion.MQTTv5:
            return super()._handle_publish()
        topic_end = 2 + int.from_bytes(packet[0:2], "big")
        if len(packet) <= topic_end + 2 or packet[topic_end + 2] != 0:  # too short, or it carries properties
            return super()._handle_publish()
        try:
            topic = bytes(packet[2:topic_end]).decode("utf-8")
        except UnicodeDecodeError:  # paho's path keeps the bytes and logs them; this one has nothing to add
            return super()._handle_publish()
        self.cut_short += 1
        deliver(topic, bytes(packet[topic_end + 3 :]), int.from_bytes(packet[topic_end : topic_end + 2], "big"))
        return MQTTErrorCode.MQTT_ERR_SUCCESS


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message as the batcher takes it: what to parse, and what to acknowledge once it is committed."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    generation: int  # the connection it came on
    received_wall: float
    received_mono: float


class CentreSubscriber:
    """Subscribe to the events filter with manual acknowledgement; hand each message to ``on_delivery``.

    ``on_delivery`` runs on paho's thread and must only enqueue. :meth:`ack` may be called from any
    thread once the message is safely stored.
    """

    def __init__(
        self,
        url: str,
        on_delivery: Callable[[Delivery], None],
        *,
        prefix: str = "checkpoint/v1",
        share_group: str | None = None,
        client_id: str | None = None,
        session_expiry_s: int = 3600,
        receive_maximum: int = 2000,
        username: str | None = None,
        password: str | None = None,
        tls_ca: str | None = None,
    ) -> None:
        endpoint = parse_mqtt_url(url).with_credentials(username, password)
        self.host, self.port = endpoint.host, endpoint.port
        self.filter = events_filter(prefix, share_group)
        self.share_group = share_group
        self.client_id = client_id or f"checkpoint-centre-{share_group or 'solo'}-{socket.gethostname()}-{os.getpid()}"
        self.session_expiry_s = session_expiry_s
        self.receive_maximum = receive_maximum
        self._deliver = on_delivery
        self.generation = 0
        self.state = "idle"
        self.connects = 0
        self.last_error: str | None = None
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.acks = 0
        self.acks_skipped = 0  # messages of an earlier connection: the broker re-sends them
        self._client = _CentreClient(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=MQTTProtocolVersion.MQTTv5)
        self._client.fast_deliver = self._on_qos1_publish
        self._client.suppress_exceptions = True
        self._client.manual_ack_set(True)
        if endpoint.username is not None:
            self._client.username_pw_set(endpoint.username, endpoint.password)
        if endpoint.tls:
            self._client.tls_set(ca_certs=tls_ca, cert_reqs=ssl.CERT_REQUIRED)
        self._client.reconnect_delay_set(1, 15)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe

    def start(self) -> None:
        """Connect in the background; paho reconnects on its own and every connect subscribes again."""
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho's class is unannotated
        props.SessionExpiryInterval = self.session_expiry_s
        props.MaximumPacketSize = MAX_PACKET
        props.ReceiveMaximum = self.receive_maximum
        self.state = "connecting"
        self._client.connect_async(self.host, self.port, keepalive=30, clean_start=self.session_expiry_s == 0, properties=props)
        self._client.loop_start()

    def stop(self) -> None:
        """Disconnect (unacknowledged messages stay in the broker's session) and stop paho's thread."""
        self.state = "stopped"
        self._client.disconnect()
        self._client.loop_stop()

    def ack(self, delivery: Delivery) -> bool:
        """Acknowledge one stored message on its own connection; return False when that connection is gone."""
        if delivery.qos == 0:
            return True
        if delivery.generation != self.generation or not self.connected.is_set():
            self.acks_skipped += 1
            return False
        self._client.ack(delivery.mid, delivery.qos)
        self.acks += 1
        return True

    def stats(self) -> dict[str, Any]:
        """Return the connection state and counters (``/healthz``)."""
        return {
            "state": self.state,
            "connects": self.connects,
            "last_error": self.last_error,
            "client_id": self.client_id,
            "filter": self.filter,
            "acks": self.acks,
            "acks_skipped": self.acks_skipped,
            "publishes_cut_short": self._client.cut_short,
        }

    # paho's thread ---------------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self.state, self.last_error = "refused", str(reason)
            log.error("centre: broker refused the connection reason=%s", reason)
            return
        self.generation += 1
        self.connects += 1
        self.state = "connected"
        self.connected.set()
        log.info(
            "centre connected to %s:%d session_present=%s filter=%s",
            self.host,
            self.port,
            getattr(flags, "session_present", None),
            self.filter,
        )
        client.subscribe([(self.filter, SubscribeOptions(qos=1))])

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        failed = [str(r) for r in reasons if r.is_failure]
        if failed:
            self.last_error = f"subscription refused: {', '.join(failed)}"
            log.error("centre: %s (filter %s)", self.last_error, self.filter)
            return
        self.subscribed.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self.connected.clear()
        if self.state != "stopped":
            self.state = "reconnecting"
            log.warning("centre lost the broker reason=%s; reconnecting", reason)

    def _on_qos1_publish(self, topic: str, payload: bytes, mid: int) -> None:
        self._offer(topic, payload, mid, 1)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:  # not a UTF-8 topic (a broker should refuse it): parsed as not ours, still acknowledged
            topic = ""
        self._offer(topic, bytes(msg.payload), msg.mid, msg.qos)

    def _offer(self, topic: str, payload: bytes, mid: int, qos: int) -> None:
        now_wall, now_mono = time.time(), time.monotonic()
        self._deliver(Delivery(topic, payload, mid, qos, self.generation, received_wall=now_wall, received_mono=now_mono))
