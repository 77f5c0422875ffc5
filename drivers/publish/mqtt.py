"""MQTT adapter for :class:`station.ports.Publisher` (paho-mqtt 2.x).

The outbox (``station.store.outbox``) is the source of truth for what must be delivered; this adapter
only moves a small window of it to the broker and reports PUBACKs. Consequently, and unlike
paho's defaults:

* It does **not** queue while disconnected: :meth:`MqttPublisher.publish` raises
  :class:`NotConnectedError`. paho's in-memory queue is unbounded and lost on restart anyway.
* On every (re)connect it **drops** what paho still holds from the previous connection
  (``Client.drop_out_messages``) instead of letting paho re-send it, then tells the
  ``on_connected`` hooks, which re-send from the outbox. One copy per reconnect, not two.
* The availability topic is retained: ``online`` is published on every connect, the Will says
  ``offline`` if the connection dies, and ``stopped`` is published before a clean disconnect
  (a Will is not sent on a clean DISCONNECT).
* A CONNACK with ``reason_code != 0`` is *not* a connection (Frigate had that bug).
* Exceptions in callbacks are logged and suppressed; an escaping one would kill paho's thread.
* Reconnects back off exponentially with random jitter (a district's stations must not all
  reconnect in the same second after a broker restart). A CONNACK saying the credentials are bad
  or not authorised stops reconnecting: :attr:`MqttPublisher.state` becomes ``auth_failed``,
  logged once; hammering the broker cannot fix a password (Home Assistant does the same).
* Subscriptions (:meth:`MqttPublisher.subscribe`) are renewed on every connect.
* ``protocol="auto"`` (the default) connects with MQTT 5 and falls back to MQTT 3.1.1 when the
  broker refuses the version (MQTT 5 CONNACK 0x84, or the 3.1.1 CONNACK return code 1 that paho
  reads as 0x84) or closes the connection after CONNECT without any CONNACK (what some old
  brokers do). paho fixes the protocol when a client is built, so the fallback builds a new paho
  client with the same will, credentials, TLS and callbacks (:meth:`MqttPublisher._make_client`).
  A CONNACK that is not about the version (bad password, not authorised) is *not* a protocol
  problem: it keeps its own handling. See :meth:`MqttPublisher._closed_without_connack` for how a
  close without CONNACK is told apart from other failures.

Threading: paho runs its network loop in its own thread (``loop_start``); callbacks run there.
``_conn_lock`` makes "check connected + client.publish" atomic with respect to the reconnect
bookkeeping in ``_on_connect``/``_on_disconnect`` — without it a publish racing a reconnect could
be dropped by ``drop_out_messages`` after being counted in paho's in-flight window, leaking a slot.
``_mid_lock`` (never held while calling paho) resolves the PUBACK-before-mid race.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from station.ops.backoff import Backoff
from station.ops.mqtt_url import parse_mqtt_url

# Defined with the Publisher port, so the outbox pump catches them whatever the adapter.
from station.ports import NotConnectedError, PublishError

__all__ = ["MqttPublisher", "NotConnectedError", "PublishError"]

log = logging.getLogger("station.mqtt")

# Client.drop_out_messages() is public API from paho-mqtt 2.2. Without it paho re-sends its own
# unacknowledged copies after a reconnect on top of the outbox's re-send: duplicates, not loss.
_HAS_DROP = hasattr(mqtt.Client, "drop_out_messages")

# An early PUBACK is normally claimed microseconds later; one never claimed (a message paho
# re-sent itself) must not linger until the mid counter wraps and match an unrelated publish.
_EARLY_TTL_S = 10.0

ProtocolName = Literal["auto", "5", "3.1.1"]

# MQTT 5 CONNACK "Unsupported protocol version". paho also maps a 3.1.1-style CONNACK with return
# code 1 ("unacceptable protocol version"), which an old broker sends to an MQTT 5 CONNECT, to it.
_UNSUPPORTED_PROTOCOL = 0x84

# CONNACK reason codes that a retry cannot fix (MQTT 5 names; paho maps 3.1.1 codes 4 and 5 to
# the first two).
_AUTH_FAILURES = frozenset({"Bad user name or password", "Not authorized", "Bad authentication method", "Banned"})

MessageHandler = Callable[[str, bytes], None]


class _RefusedConnectFilter(logging.Filter):
    """Drop paho's "Client is not connected" ERROR line, logged after every refused TCP connect.

    With a broker down for hours that is one error line per back-off step. The failure is already
    recorded (state, last_error, on_connect_fail at DEBUG).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Return False for the line to drop."""
        return not str(record.msg).startswith("Client is not connected")


_PAHO_LOG = logging.getLogger("station.mqtt.paho")
_PAHO_LOG.addFilter(_RefusedConnectFilter())


def reconnect_backoff(min_delay: float, max_delay: float) -> Backoff:
    """Return the reconnect back-off: doubling with "equal jitter" (half fixed, half random).

    Equal jitter never more than doubles a delay, which paho requires (it caps each wait at twice the
    last one); the random part is what spreads a fleet's reconnects after a broker restart.
    """
    return Backoff(min_delay, max_delay, factor=2.0, jitter="equal")


def jittered_delay(previous: float | None, min_delay: float, max_delay: float) -> float:
    """Return the reconnect delay that follows ``previous`` (None: the first one)."""
    backoff = reconnect_backoff(min_delay, max_delay)
    if previous is not None:
        backoff.resume(previous)
    return backoff.next()


class MqttPublisher:
    """Publish through a paho client with availability (birth/Will/stopped) and exactly-once ack reporting.

    ``url`` is ``mqtt://[user[:password]@]host[:port]`` (port 1883) or ``mqtts://…`` (TLS,
    port 8883; server verified against ``tls_ca`` or the system store), read by
    :func:`station.ops.mqtt_url.parse_mqtt_url`; ``username``/``password`` override the URL's. ``client_id`` must be
    unique per station: a second client with the same id makes the broker disconnect the first.

    Ack contract (:meth:`set_ack_handler`): the handler is called exactly once for each mid
    returned by :meth:`publish` that the broker acknowledged successfully on the connection it
    was sent on — never for unknown mids, never for the availability messages. Normally on
    paho's network thread; if the PUBACK won the race against :meth:`publish` returning, on the
    publishing thread just before :meth:`publish` returns. Either way it must be quick and must
    not call back into the publisher (queue the mid and return).
    """

    def __init__(
        self,
        url: str,
        client_id: str,
        status_topic: str,
        will_payload: bytes,
        online_payload: bytes,
        keepalive: int = 30,
        *,
        stopped_payload: bytes = b"stopped",
        protocol: ProtocolName = "auto",
        username: str | None = None,
        password: str | None = None,
        tls_ca: str | None = None,
        tls_certfile: str | None = None,
        tls_keyfile: str | None = None,
        reconnect_min_delay: float = 1.0,
        reconnect_max_delay: float = 30.0,
        max_inflight: int = 20,
    ) -> None:
        endpoint = parse_mqtt_url(url).with_credentials(username, password)
        self.host = endpoint.host
        self.port = endpoint.port
        self.tls = endpoint.tls
        self.client_id = client_id
        self.status_topic = status_topic
        self.keepalive = keepalive
        self._online_payload = online_payload
        self._stopped_payload = stopped_payload
        if protocol not in ("auto", "5", "3.1.1"):
            raise ValueError(f"protocol must be 'auto', '5' or '3.1.1', not {protocol!r}")
        self.protocol_setting: ProtocolName = protocol
        self._auto = protocol == "auto"
        self._v5 = protocol != "3.1.1"  # "auto" starts with MQTT 5
        # auto: True once the broker has shown which version it speaks (any CONNACK in the format
        # of the version sent). After that a close without CONNACK is a broker/network problem,
        # not a version problem, and no longer switches the protocol.
        self._protocol_known = not self._auto
        self._fallback_reason: str | None = None
        self._announced_protocol = False  # "MQTT protocol in use" is logged once per publisher
        self._heuristic_logged = False
        # Per connection attempt: reset in on_pre_connect.
        self._attempt_socket_open = False
        self._attempt_connack = False
        # A protocol switch in progress: the retiring client's callbacks are ignored until the
        # new client is installed by the switch thread.
        self._switching = False
        self._switch_thread: threading.Thread | None = None
        self._stop_event = threading.Event()
        self._max_inflight = max_inflight
        self._will_payload = will_payload
        self._tls_files = (tls_ca, tls_certfile, tls_keyfile)

        self.on_connected: list[Callable[[], None]] = []
        """Called (on paho's thread, after the online message) each time a connection is up."""

        self._conn_lock = threading.RLock()
        self._mid_lock = threading.Lock()
        self._connected = False
        self._started = False
        self._ack_handler: Callable[[int], None] | None = None
        self._returned: set[int] = set()  # mids handed to callers, PUBACK not yet seen
        self._early: dict[int, float] = {}  # mid → monotonic time of a PUBACK that beat publish()
        self._internal: set[int] = set()  # availability messages: never reported
        self.connects = 0
        self.disconnects = 0
        self.connect_attempts = 0
        self.last_error: str | None = None
        self.state = "idle"
        """idle | connecting | connected | reconnecting | auth_failed | stopped"""
        self.on_state_change: list[Callable[[str], None]] = []
        """Called (on paho's thread, quickly) with the new :attr:`state` when it changes."""
        self._reconnect_min = float(reconnect_min_delay)
        self._reconnect_max = float(reconnect_max_delay)
        self._backoff = reconnect_backoff(self._reconnect_min, self._reconnect_max)
        self._subscriptions: dict[str, tuple[int, MessageHandler]] = {}
        self._intake: dict[str, tuple[bool, int | None]] = {}  # filter → (accept_retained, max_bytes)
        self._intake_drops: dict[str, dict[str, int]] = {}  # filter → {"retained": n, "oversize": n}

        if not _HAS_DROP:
            log.warning(
                "this paho-mqtt has no Client.drop_out_messages() (needs >= 2.2): each reconnect will re-send the in-flight window twice"
            )
        self._user = endpoint.username
        self._password = endpoint.password
        self._client = self._make_client(self._v5)

    def _make_client(self, v5: bool) -> mqtt.Client:
        """Return a paho client for one protocol version with everything else this publisher needs.

        Called once per protocol: paho fixes the protocol version at construction.
        """
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            # The outbox re-sends after a reconnect, so no broker session is needed (Sparkplug
            # also mandates clean sessions). For v5 clean_start is passed to connect_async.
            clean_session=None if v5 else True,
        )
        client.suppress_exceptions = True  # belt and braces: every callback also catches
        client.enable_logger(_PAHO_LOG)
        if self._user is not None:
            client.username_pw_set(self._user, self._password)
        if self.tls:
            tls_ca, tls_certfile, tls_keyfile = self._tls_files
            client.tls_set(
                ca_certs=tls_ca,
                certfile=tls_certfile,
                keyfile=tls_keyfile,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        client.will_set(self.status_topic, self._will_payload, qos=1, retain=True)
        first = jittered_delay(None, self._reconnect_min, self._reconnect_max)
        client.reconnect_delay_set(first, first)  # type: ignore[arg-type]  # paho accepts floats
        client.max_inflight_messages_set(self._max_inflight)
        client.on_pre_connect = self._on_pre_connect
        client.on_socket_open = self._on_socket_open
        client.on_message = self._on_message
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        return client

    def _connect_async(self, client: mqtt.Client, v5: bool) -> None:
        if v5:
            client.connect_async(self.host, self.port, self.keepalive, clean_start=True)
        else:
            client.connect_async(self.host, self.port, self.keepalive)
        client.loop_start()

    @property
    def protocol(self) -> str:
        """Return the MQTT version of the current client: ``"5"`` or ``"3.1.1"`` (negotiated in auto)."""
        return "5" if self._v5 else "3.1.1"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Begin connecting in the background and return at once (a down broker is retried)."""
        if self._started:
            return
        self._started = True
        self._stop_event.clear()
        self._set_state("connecting")
        auto = ", 3.1.1 if the broker lacks 5" if self._auto and not self._protocol_known else ""
        log.info(
            "MQTT connecting to %s:%d as %s (MQTT %s%s%s)",
            self.host,
            self.port,
            self.client_id,
            self.protocol,
            auto,
            ", TLS" if self.tls else "",
        )
        with self._conn_lock:
            self._connect_async(self._client, self._v5)

    def stop(self, timeout: float = 5.0) -> None:
        """Publish ``stopped`` (retained) if connected, disconnect cleanly, stop the loop thread."""
        if not self._started:
            return
        # A protocol switch in progress must not start its new client after this stop.
        self._stop_event.set()
        switch = self._switch_thread
        if switch is not None and switch is not threading.current_thread():
            switch.join(timeout)
            if switch.is_alive():
                log.warning("MQTT protocol switch still running after %.1f s", timeout)
        self._switching = False
        info: mqtt.MQTTMessageInfo | None = None
        with self._conn_lock:
            if self._connected:
                info = self._publish_internal(self._stopped_payload)
        if info is not None:
            try:
                info.wait_for_publish(timeout)  # never called on paho's thread
            except (RuntimeError, ValueError) as exc:
                log.warning("could not publish the stopped status: %s", exc)
            if not info.is_published():
                log.warning("stopped status not acknowledged within %.1f s", timeout)
        self._set_state("stopped")
        if info is not None:
            self._client.disconnect()  # clean DISCONNECT: the broker discards the Will
        # Not connected: stopping the loop is enough (paho logs an error for a disconnect()
        # without a connection).
        self._client.loop_stop()
        with self._conn_lock:
            self._connected = False
        self._started = False
        self._set_state("stopped")
        log.info("MQTT client %s stopped", self.client_id)

    # ------------------------------------------------------------------ Publisher port

    def connected(self) -> bool:
        """Return whether a connection is up (a CONNACK accepted it)."""
        return self._connected

    def set_ack_handler(self, on_ack: Callable[[int], None]) -> None:
        """Set the handler told each acknowledged mid (the ack contract in the class docstring)."""
        self._ack_handler = on_ack

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool = False) -> int:
        """Hand one message to paho and return its mid; raise :class:`NotConnectedError` when not connected.

        Raise :class:`PublishError` when paho refuses the message for another reason.
        """
        with self._conn_lock:
            if not self._connected:
                raise NotConnectedError(f"not connected to {self.host}:{self.port}")
            info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            # NO_CONN here means the link died a moment ago; paho keeps the message, but the
            # next connect drops it, so the caller must treat it as not sent.
            if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
                raise NotConnectedError(f"connection to {self.host}:{self.port} lost")
            raise PublishError(f"paho refused the publish: {mqtt.error_string(info.rc)}")
        self._claim(info.mid, report=True)
        return info.mid

    def publish_direct(self, topic: str, payload: bytes, qos: int = 1, retain: bool = True) -> bool:
        """Publish a message that is *not* from the outbox (state, stats, command results).

        Its PUBACK is never reported to the ack handler. Return False when not connected: such
        messages describe the present and are re-published on the next connect, not queued.
        """
        with self._conn_lock:
            if not self._connected:
                return False
            info = self._client.publish(topic, payload, qos=qos, retain=retain)
            # Also for QoS 0: paho calls on_publish for it too, and an unclaimed mid would sit in
            # the early-PUBACK map where it could match an outbox publish.
            self._claim(info.mid, report=False)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            log.warning("MQTT publish to %s failed: %s", topic, mqtt.error_string(info.rc))
            return False
        return True

    def subscribe(
        self, topic_filter: str, handler: MessageHandler, qos: int = 1, *, accept_retained: bool = True, max_bytes: int | None = None
    ) -> None:
        """Deliver messages matching ``topic_filter`` to ``handler(topic, payload)``.

        Renewed on every connect. The handler runs on paho's network thread: it must be quick and
        must not wait for a PUBACK (queue the work instead). ``accept_retained=False`` drops
        retained messages (a command kept by the broker must not run again at every connect);
        ``max_bytes`` drops larger payloads unread. Drops are counted (:meth:`intake_drops`) and
        never reach the handler.
        """
        with self._conn_lock:
            self._intake[topic_filter] = (accept_retained, max_bytes)
            self._subscriptions[topic_filter] = (qos, handler)
            if self._connected:
                self._client.subscribe(topic_filter, qos=qos)

    # ------------------------------------------------------------------ internals

    def _set_state(self, state: str) -> None:
        if state == self.state:
            return
        self.state = state
        for hook in list(self.on_state_change):
            try:
                hook(state)
            except Exception:  # logged: an exception would kill paho's network thread
                log.exception("MQTT state hook %r failed", hook)

    def _schedule_backoff(self) -> None:
        """Set paho's next reconnect wait to our jittered exponential delay."""
        delay = self._backoff.next()
        self._client.reconnect_delay_set(delay, delay)  # type: ignore[arg-type]
        log.debug("MQTT reconnect to %s:%d in about %.2f s", self.host, self.port, delay)

    def _retired(self, client: mqtt.Client) -> bool:
        """Return whether ``client`` is being replaced by a protocol switch (its callbacks are ignored)."""
        return client is not self._client or self._switching

    def _on_pre_connect(self, client: mqtt.Client, userdata: Any) -> None:
        self.connect_attempts += 1
        self._attempt_socket_open = False
        self._attempt_connack = False

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._attempt_socket_open = True  # paho sends CONNECT right after this
        # paho leaves Nagle's algorithm on: with a window of small QoS 1 PUBLISHes each one waits
        # for the previous segment's TCP ACK, which caps a catch-up far below what the disk allows.
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError) as exc:  # not a TCP socket (unix socket, websocket proxy)
            log.debug("TCP_NODELAY not set: %s", exc)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if self._retired(client):
            return
        try:
            handlers = [(f, h) for f, (_, h) in list(self._subscriptions.items()) if mqtt.topic_matches_sub(f, msg.topic)]
            for topic_filter, handler in handlers:
                accept_retained, max_bytes = self._intake.get(topic_filter, (True, None))
                drop = (
                    "retained"
                    if msg.retain and not accept_retained
                    else "oversize"
                    if max_bytes is not None and len(msg.payload) > max_bytes
                    else None
                )
                if drop is not None:
                    counts = self._intake_drops.setdefault(topic_filter, {"retained": 0, "oversize": 0})
                    counts[drop] += 1
                    n = counts[drop]
                    if n & (n - 1) == 0:  # 1st, 2nd, 4th, 8th, …: a flood cannot flood the journal
                        log.warning(
                            "MQTT message dropped unread why=%s topic=%s bytes=%d total=%d", drop, msg.topic[:200], len(msg.payload), n
                        )
                    continue
                handler(msg.topic, bytes(msg.payload))
        except Exception:  # logged: an exception would kill paho's network thread
            log.exception("MQTT message handler failed topic=%s", msg.topic)

    def _publish_internal(self, payload: bytes) -> mqtt.MQTTMessageInfo:
        """Publish on the status topic (retained, QoS 1); its PUBACK is not reported."""
        info = self._client.publish(self.status_topic, payload, qos=1, retain=True)
        self._claim(info.mid, report=False)
        return info

    def _claim(self, mid: int, *, report: bool) -> None:
        """Register a mid just returned by paho; deliver its ack now if it already arrived."""
        with self._mid_lock:
            early = self._early.pop(mid, None) is not None
            if not early:
                (self._returned if report else self._internal).add(mid)
        if early and report:
            self._deliver(mid)

    def _deliver(self, mid: int) -> None:
        handler = self._ack_handler
        if handler is None:
            return
        try:
            handler(mid)
        except Exception:  # logged: an exception would kill paho's network thread
            log.exception("ack handler failed for mid %d", mid)

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if self._retired(client):
            log.debug("MQTT CONNACK %s from a retired client ignored", reason_code)
            return
        self._attempt_connack = True
        try:
            if reason_code != 0 and self._auto and self._v5 and reason_code.value == _UNSUPPORTED_PROTOCOL:
                # The broker said so itself: no doubt, switch at once (no back-off: it answered).
                self.last_error = str(reason_code)
                self._fallback(client, f"the broker refused MQTT 5: {reason_code}", delay=0.0)
                return
            # A CONNACK in the format of the version sent: the broker speaks it.
            self._protocol_known = True
            if reason_code != 0:  # a refused CONNACK is not a connection
                self.last_error = str(reason_code)
                if str(reason_code) in _AUTH_FAILURES:
                    # Once, and no retry: only a new configuration can fix credentials.
                    log.error(
                        "MQTT broker %s:%d refused the credentials: %s; not retrying until "
                        "the configuration changes and the station restarts state=auth_failed",
                        self.host,
                        self.port,
                        reason_code,
                    )
                    self._set_state("auth_failed")
                    client.disconnect()  # ends paho's loop: no reconnect
                    return
                log.error("MQTT broker %s:%d refused the connection: %s", self.host, self.port, reason_code)
                self._schedule_backoff()
                return
            with self._conn_lock:
                dropped = client.drop_out_messages() if _HAS_DROP else []
                with self._mid_lock:
                    for m in dropped:
                        self._returned.discard(m.mid)
                        self._internal.discard(m.mid)
                    self._early.clear()
                self._publish_internal(self._online_payload)
                self._connected = True
                self.connects += 1
                for topic_filter, (qos, _) in self._subscriptions.items():
                    client.subscribe(topic_filter, qos=qos)
            self._backoff.reset()  # paho also resets its delay after a CONNACK
            first = jittered_delay(None, self._reconnect_min, self._reconnect_max)
            client.reconnect_delay_set(first, first)  # type: ignore[arg-type]
            self._set_state("connected")
            if self._auto and not self._announced_protocol:
                self._announced_protocol = True
                if self._v5:
                    log.info("MQTT protocol in use with %s:%d: MQTT 5", self.host, self.port)
                else:
                    log.warning("MQTT protocol in use with %s:%d: MQTT 3.1.1 (fallback: %s)", self.host, self.port, self._fallback_reason)
            log.info(
                "MQTT connected to %s:%d with MQTT %s (%d unacknowledged message(s) from the previous connection left to the outbox)",
                self.host,
                self.port,
                self.protocol,
                len(dropped),
            )
        except Exception:  # logged: an exception would kill paho's network thread
            log.exception("MQTT on_connect failed")
            return
        for hook in list(self.on_connected):
            try:
                hook()
            except Exception:  # logged; the other hooks still run
                log.exception("on_connected hook %r failed", hook)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        if self._retired(client):
            return
        self.last_error = "connection failed (broker unreachable)"
        try:
            self._schedule_backoff()
        except Exception:  # logged: an exception would kill paho's network thread
            log.exception("MQTT on_connect_fail failed")
        log.debug("MQTT connection attempt to %s:%d failed; retrying", self.host, self.port)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if self._retired(client):
            log.debug("MQTT disconnect %s of a retired client ignored", reason_code)
            return
        try:
            with self._conn_lock:
                was = self._connected
                self._connected = False
            if self.state not in ("auth_failed", "stopped") and self._started:
                self._set_state("reconnecting")
                self._schedule_backoff()
            if not was and not self._attempt_connack and self.state not in ("auth_failed", "stopped"):
                # e.g. a TLS alert after the handshake (no client certificate): paho logs the
                # cause at ERROR; keep a short reason for stats and stationctl. After a refused
                # CONNACK its own reason code stays in last_error.
                self.last_error = f"connection closed before CONNACK: {reason_code}"
            if was:
                self.disconnects += 1
                if reason_code == 0:
                    log.info("MQTT disconnected from %s:%d", self.host, self.port)
                else:
                    self.last_error = str(reason_code)
                    log.warning("MQTT connection to %s:%d lost: %s; reconnecting", self.host, self.port, reason_code)
            if (
                self._auto
                and not self._protocol_known
                and not was
                and self._attempt_socket_open
                and not self._attempt_connack
                and self._started
                and self.state not in ("auth_failed", "stopped")
            ):
                self._closed_without_connack(client)
        except Exception:  # logged: an exception would kill paho's network thread
            log.exception("MQTT on_disconnect failed")

    def _closed_without_connack(self, client: mqtt.Client) -> None:
        """Switch protocol after a close without CONNACK (auto, version not known yet).

        The socket opened, CONNECT went out, no CONNACK came back.

        Old brokers close on an MQTT 5 CONNECT, but a TLS alert (missing client certificate) or a
        broker starting up looks the same. So this only alternates: MQTT 5 closed → MQTT 3.1.1
        at once; 3.1.1 closed as well → the close was not about the version, back to MQTT 5 after
        the usual back-off. The first CONNACK of either version ends the alternation, and one
        that refuses the credentials still gives ``auth_failed``.
        """
        if self._v5:
            msg = (
                "MQTT broker %s:%d closed the connection after an MQTT 5 CONNECT without a CONNACK (old brokers do that); trying MQTT 3.1.1"
            )
            if self._heuristic_logged:
                log.debug(msg, self.host, self.port)
            else:
                self._heuristic_logged = True
                log.info(msg, self.host, self.port)
            self._switch(client, v5=False, delay=0.0, reason="the broker closed the connection after an MQTT 5 CONNECT")
        else:
            log.debug(
                "MQTT 3.1.1 CONNECT to %s:%d closed without a CONNACK as well; MQTT 5 again in %.2f s",
                self.host,
                self.port,
                self._backoff.last or 0.0,
            )
            self._switch(client, v5=True, delay=self._backoff.last or 0.0, reason=None)

    def _fallback(self, client: mqtt.Client, reason: str, delay: float) -> None:
        """Settle on MQTT 3.1.1 for good: the broker answered an MQTT 5 CONNECT with 0x84."""
        self._protocol_known = True
        log.info("MQTT broker %s:%d: %s; switching to MQTT 3.1.1", self.host, self.port, reason)
        self._switch(client, v5=False, delay=delay, reason=reason)

    def _switch(self, client: mqtt.Client, *, v5: bool, delay: float, reason: str | None) -> None:
        """Retire ``client`` (on its own network thread) and start a client for the other version.

        Runs in a paho callback: ``loop_stop`` on paho's own thread only asks the loop to end once
        this callback returns (it cannot join itself), so a helper thread waits for that, builds
        the new client and connects it.
        """
        self._switching = True
        self._fallback_reason = reason if not v5 else None
        client.loop_stop()
        thread = threading.Thread(target=self._finish_switch, args=(client, v5, delay), name="mqtt-protocol-switch", daemon=True)
        self._switch_thread = thread
        thread.start()

    def _finish_switch(self, old: mqtt.Client, v5: bool, delay: float) -> None:
        try:
            old.loop_stop()  # joins the old network thread: never two loops for one client id
            if delay > 0 and self._stop_event.wait(delay):
                log.debug("MQTT protocol switch: stopped during the back-off")
            with self._conn_lock:
                self._client = self._make_client(v5)
                self._v5 = v5
                self._switching = False
                if self._stop_event.is_set() or not self._started:
                    return  # stop() won: the new client is kept for a later start()
                log.debug("MQTT reconnecting to %s:%d with MQTT %s", self.host, self.port, self.protocol)
                self._connect_async(self._client, v5)
        except Exception:  # logged: nothing else would see this helper thread fail
            log.exception("MQTT protocol switch failed")

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if self._retired(client):
            return  # its messages were never reported as sent on the new connection
        try:
            if reason_code.is_failure:
                # MQTT 5 broker refused the message (not authorised, quota, …). Not an ack: the
                # row stays in the outbox and is retried after the pump's ack timeout.
                with self._mid_lock:
                    self._returned.discard(mid)
                    self._internal.discard(mid)
                log.warning("broker rejected message mid %d: %s", mid, reason_code)
                return
            with self._mid_lock:
                if mid in self._returned:
                    self._returned.discard(mid)
                    report = True
                elif mid in self._internal:
                    self._internal.discard(mid)
                    report = False
                else:
                    now = time.monotonic()  # publish() has not registered it yet
                    self._early = {m: t for m, t in self._early.items() if now - t < _EARLY_TTL_S}
                    self._early[mid] = now
                    report = False
            if report:
                self._deliver(mid)
        except Exception:  # logged: an exception would kill paho's network thread
            log.exception("MQTT on_publish failed for mid %d", mid)

    def intake_drops(self, topic_filter: str) -> dict[str, int]:
        """Return how many messages on ``topic_filter`` were dropped unread: ``retained`` and ``oversize``."""
        return dict(self._intake_drops.get(topic_filter, {"retained": 0, "oversize": 0}))

    def stats(self) -> dict[str, Any]:
        """Return the connection state, counters and protocol in use."""
        with self._mid_lock:
            unacked = len(self._returned)
        return {
            "connected": self._connected,
            "connects": self.connects,
            "disconnects": self.disconnects,
            "unacked": unacked,
            "last_error": self.last_error,
            "state": self.state,
            "connect_attempts": self.connect_attempts,
            "protocol": self.protocol,  # in use; with "auto" the negotiated one
            "protocol_setting": self.protocol_setting,
        }
