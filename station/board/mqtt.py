"""The board's MQTT subscriber (paho-mqtt 2.x, MQTT 5).

Two kinds of subscription (docs/board.md):

* the **event stream** ``<prefix>/+/+/events/#`` (QoS 1) — with ``share_group`` as the MQTT 5
  shared subscription ``$share/<group>/<prefix>/+/+/events/#``, so that several board replicas on a
  clustered broker (EMQX, VerneMQ, HiveMQ; mosquitto 2 too) each get a share of it instead of all of
  it. The replicas write into one history, so each still shows every station's counts.
* the **present**: ``status``, ``state/+`` and ``snapshot`` of every station, always as an ordinary
  subscription. They are retained, and brokers do not deliver retained messages on shared
  subscriptions (MQTT 5 §4.8.2), so a replica that subscribed to them only through ``$share`` would
  start blind and stay blind for a station that does not change; each replica also needs every
  station's live picture and online state to draw the page. They are small and infrequent.

Messages are handled on paho's network thread *before* paho acknowledges them (QoS 1 PUBACK is sent
after ``on_message`` returns), so an event is committed to the history before the broker forgets
it: a board killed mid-stream gets the unacknowledged messages again (persistent session) and the
history's de-duplication makes that harmless. A message whose handling fails (a full disk, say) is
logged and counted (``errors``, ``/healthz``) and still acknowledged by paho: that event is then
missing from the board's count, never from the station's records.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from station.ops.mqtt_url import parse_mqtt_url

log = logging.getLogger("station.board.mqtt")

MAX_PACKET = 2 * 1024 * 1024


def board_filters(prefix: str, share_group: str | None) -> dict[str, int]:
    """Return topic filter → QoS for the board's subscriptions."""
    prefix = prefix.rstrip("/")
    events = f"{prefix}/+/+/events/#"
    if share_group:
        events = f"$share/{share_group}/{events}"
    return {
        events: 1,
        f"{prefix}/+/+/status": 1,
        f"{prefix}/+/+/state/+": 1,
        f"{prefix}/+/+/snapshot": 0,
    }


class BoardSubscriber:
    """Subscribe to every station's events and present state; hand each message to ``on_message``.

    ``url`` is read by :func:`station.ops.mqtt_url.parse_mqtt_url`; ``username``/``password``
    override the URL's user information. ``mqtts://`` verifies the broker against ``tls_ca`` or the
    system store. ``on_message(topic, payload)`` runs on paho's thread before the PUBACK.
    """

    def __init__(
        self,
        url: str,
        on_message: Callable[[str, bytes], object],
        *,
        prefix: str = "checkpoint/v1",
        share_group: str | None = None,
        client_id: str | None = None,
        session_expiry_s: int = 3600,
        username: str | None = None,
        password: str | None = None,
        tls_ca: str | None = None,
    ) -> None:
        endpoint = parse_mqtt_url(url).with_credentials(username, password)
        self.host = endpoint.host
        self.port = endpoint.port
        self.filters = board_filters(prefix, share_group)
        self.share_group = share_group
        # Stable per replica (a persistent session survives a restart) and distinct between replicas.
        self.client_id = client_id or f"checkpoint-board-{share_group or 'solo'}-{socket.gethostname()}-{os.getpid()}"
        self.session_expiry_s = session_expiry_s
        self._handler = on_message
        self.connected = threading.Event()
        self.state = "idle"
        self.connects = 0
        self.errors = 0
        self.last_error: str | None = None
        self.subscribed = threading.Event()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=MQTTProtocolVersion.MQTTv5)
        self._client.suppress_exceptions = True
        if endpoint.username is not None:
            self._client.username_pw_set(endpoint.username, endpoint.password)
        if endpoint.tls:
            self._client.tls_set(ca_certs=tls_ca, cert_reqs=ssl.CERT_REQUIRED)
        self._client.reconnect_delay_set(1, 30)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe

    def start(self) -> None:
        """Connect in the background (paho reconnects on its own) and subscribe on every connect."""
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho's class is unannotated
        props.SessionExpiryInterval = self.session_expiry_s
        # The broker must not hand us anything bigger (MQTT 5 drops it for this client): the largest
        # payload the board reads is a 1 MiB snapshot (station/board/schema.py), the rest is far smaller.
        props.MaximumPacketSize = MAX_PACKET
        self.state = "connecting"
        self._client.connect_async(self.host, self.port, keepalive=30, clean_start=self.session_expiry_s == 0, properties=props)
        self._client.loop_start()

    def stop(self) -> None:
        """Disconnect cleanly and stop paho's thread."""
        self._client.disconnect()
        self._client.loop_stop()
        self.state = "stopped"

    def stats(self) -> dict[str, Any]:
        """Return the connection state and counters (``/healthz``)."""
        return {
            "state": self.state,
            "connects": self.connects,
            "errors": self.errors,
            "last_error": self.last_error,
            "client_id": self.client_id,
            "share_group": self.share_group,
            "filters": sorted(self.filters),
        }

    # paho's thread ---------------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self.state, self.last_error = "refused", str(reason)
            log.error("board: broker refused the connection reason=%s", reason)
            return
        self.connects += 1
        self.state = "connected"
        self.connected.set()
        log.info("board connected to %s:%d session_present=%s", self.host, self.port, getattr(flags, "session_present", None))
        client.subscribe([(f, SubscribeOptions(qos=q)) for f, q in self.filters.items()])

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        failed = [str(r) for r in reasons if r.is_failure]
        if failed:
            self.last_error = f"subscription refused: {', '.join(failed)}"
            log.error("board: %s (filters %s)", self.last_error, sorted(self.filters))
        self.subscribed.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self.connected.clear()
        if self.state != "stopped":
            self.state = "reconnecting"
            log.warning("board lost the broker reason=%s; reconnecting", reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self._handler(msg.topic, bytes(msg.payload))
        except Exception as exc:  # logged and counted; one bad message must not stop the board
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("board: handling a message failed topic=%s", msg.topic)
