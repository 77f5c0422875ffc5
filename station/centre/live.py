"""The big screen's live pictures: each station's latest snapshot in memory, and the watch leases that speed them up.

Stations publish a small JPEG, faces already blurred by the station's own privacy settings, on the
retained ``<prefix>/<site>/<station>/snapshot`` (station/link/snapshots.py, docs/mqtt.md). Every
replica takes them with an ordinary (not shared) subscription — each replica serves pictures — and
keeps **only the newest one per station, in memory** (:class:`SnapshotStore`: bounded in stations
and bytes, the least recently updated evicted first, every verdict counted). Nothing of a picture
reaches PostgreSQL or the disk. The centre never decodes or alters the picture: it checks the
envelope and the JPEG markers and passes the station's bytes on, so what was blurred stays blurred.

:func:`parse_snapshot` is total: any topic and any bytes give a :class:`Picture` or a
:class:`Rejected` with its reason (``too_large``, ``not_json``, ``no_jpeg``, ``bad_base64``,
``not_jpeg``, ``sender_mismatch``, …), never an exception.

Watching (:class:`WatchLeases`, :class:`LiveHub`): while a page has a checkpoint's picture open it
renews a lease every few seconds (``POST /api/watch``); the replica sends the station a signed,
addressed, expiring ``watch`` command (station/link/handlers.py) when the station's lease is about to
run out, so one command covers several renewals. When the page goes away nobody renews: the
station's lease (at most ``lease_s``) runs out and it falls back to its idle rate by itself. Without
a command key the pictures still show, at the stations' idle rate.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from station.board import schema

log = logging.getLogger("station.centre.live")

MAX_SNAPSHOT_PAYLOAD = schema.MAX_PAYLOAD["snapshot"]  # 1 MiB, the board's limit
MAX_STATIONS = 5000
MAX_BYTES = 128 * 1024 * 1024
"""All pictures held by a replica: 2 000 stations at the stations' typical 10-25 kB are ~50 MB."""
JPEG_SOI = b"\xff\xd8\xff"
JPEG_EOI = b"\xff\xd9"
STALE_WINDOW_S = 60.0
"""An older picture than the one held is refused only if that one arrived this recently (a re-delivered
retained copy); after that an older time is taken as the station's clock stepped back."""


@dataclass(frozen=True, slots=True)
class Picture:
    """One station's snapshot as the centre keeps it: the station's JPEG bytes and what it said about them."""

    jpeg: bytes
    ts: float  # the station's time of the picture
    blur: str | None  # faces | all | off (the station's privacy setting at the time)
    faces_blurred: int | None
    width: int | None
    height: int | None
    received_at: float  # this replica's wall time of arrival

    def meta(self) -> dict[str, Any]:
        """Return everything but the bytes (for the page)."""
        return {
            "ts": self.ts,
            "blur": self.blur,
            "faces_blurred": self.faces_blurred,
            "width": self.width,
            "height": self.height,
            "bytes": len(self.jpeg),
            "received_at": round(self.received_at, 3),
        }


@dataclass(frozen=True, slots=True)
class Rejected:
    """A snapshot message counted and dropped; ``reason`` is a short label."""

    reason: str


def segment(v: Any) -> str | None:
    """Return ``v`` if it is a valid site or station topic segment; else None."""
    return v if isinstance(v, str) and schema.SEGMENT.fullmatch(v) else None


def split_snapshot_topic(prefix: str, topic: Any) -> tuple[str, str] | Rejected:
    """Return (site, station) of ``<prefix>/<site>/<station>/snapshot``, or why not."""
    if not isinstance(topic, str) or len(topic) > 512:
        return Rejected("bad_topic")
    head = prefix.rstrip("/") + "/"
    parts = topic[len(head) :].split("/") if topic.startswith(head) else []
    if len(parts) != 3 or parts[2] != "snapshot":
        return Rejected("bad_topic")
    site, station = segment(parts[0]), segment(parts[1])
    if site is None or station is None:
        return Rejected("bad_topic")
    return site, station


def parse_snapshot(site: str, station: str, payload: Any, received_at: float) -> Picture | Rejected:
    """Return the picture in a ``snapshot`` payload sent under ``site``/``station``, or why it is refused (total)."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        return Rejected("not_bytes")
    raw = bytes(payload)
    if len(raw) > MAX_SNAPSHOT_PAYLOAD:
        return Rejected("too_large")
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return Rejected("not_json")
    if not isinstance(body, dict):
        return Rejected("not_object")
    b64 = body.get("jpeg_b64")
    if not isinstance(b64, str) or not b64:
        return Rejected("no_jpeg")
    try:
        jpeg = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        return Rejected("bad_base64")
    if not (jpeg.startswith(JPEG_SOI) and jpeg.endswith(JPEG_EOI)) or len(jpeg) < 64:
        return Rejected("not_jpeg")
    if body.get("station_id") != station or body.get("site") != site:
        return Rejected("sender_mismatch")
    meta = schema.clean_snapshot_meta(body)
    if meta["ts"] is None:
        return Rejected("bad_ts")
    return Picture(jpeg, meta["ts"], meta["blur"], meta["faces_blurred"], meta["width"], meta["height"], received_at)


class SnapshotStore:
    """The newest picture of each station, bounded in stations and bytes; every offer's verdict counted.

    Thread-safe: paho's network thread offers, the web handlers read.
    """

    def __init__(self, max_stations: int = MAX_STATIONS, max_bytes: int = MAX_BYTES) -> None:
        self.max_stations = max_stations
        self.max_bytes = max_bytes
        self._pictures: OrderedDict[tuple[str, str], Picture] = OrderedDict()  # least recently updated first
        self._bytes = 0
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def offer(self, site: str, station: str, picture: Picture | Rejected) -> str:
        """Keep ``picture`` as the station's newest unless it is older than the one held; return the verdict."""
        if isinstance(picture, Rejected):
            verdict = picture.reason
        elif len(picture.jpeg) > self.max_bytes:
            verdict = "too_large"
        else:
            key = (site, station)
            with self._lock:
                held = self._pictures.get(key)
                if held is not None and picture.ts < held.ts and picture.received_at - held.received_at < STALE_WINDOW_S:
                    verdict = "stale"  # a retained copy re-delivered after a newer live one
                else:
                    if held is not None:
                        self._bytes -= len(held.jpeg)
                        del self._pictures[key]
                    self._pictures[key] = picture
                    self._bytes += len(picture.jpeg)
                    verdict = "stored"
                    while len(self._pictures) > self.max_stations or self._bytes > self.max_bytes:
                        _, old = self._pictures.popitem(last=False)
                        self._bytes -= len(old.jpeg)
                        self.counts["evicted"] += 1
        with self._lock:
            self.counts[verdict] += 1
        if verdict not in ("stored", "stale"):
            n = self.counts[verdict]
            if n in (1, 10, 100, 1000) or n % 10000 == 0:
                log.warning("snapshot dropped site=%s station=%s reason=%s count=%d", site, station, verdict, n)
        return verdict

    def remove(self, site: str, station: str) -> bool:
        """Forget a station's picture (its retained snapshot was cleared); return whether one was held."""
        with self._lock:
            held = self._pictures.pop((site, station), None)
            if held is not None:
                self._bytes -= len(held.jpeg)
                self.counts["cleared"] += 1
            return held is not None

    def get(self, site: str, station: str) -> Picture | None:
        """Return the station's newest picture, or None."""
        with self._lock:
            return self._pictures.get((site, station))

    def stats(self) -> dict[str, Any]:
        """Return the pictures held, their bytes and the verdict counters."""
        with self._lock:
            return {"stations": len(self._pictures), "bytes": self._bytes, "max_bytes": self.max_bytes, "counts": dict(self.counts)}


@dataclass
class _Lease:
    page_until: float = 0.0  # a page renewed until then
    station_until: float = 0.0  # the lease the station was last sent runs until then
    sent_at: float = float("-inf")


class WatchLeases:
    """Which stations someone is watching, and when the station must be told again (pure: the clock is passed in).

    A page renewal holds the watch for ``page_lease_s``; the station is sent a lease of ``lease_s``
    when the one it holds has less than ``renew_margin_s`` left, and never more often than every
    ``min_send_interval_s`` per station. At most ``max_watched`` stations are watched at once.
    """

    def __init__(
        self,
        lease_s: float = 45.0,
        renew_margin_s: float = 20.0,
        page_lease_s: float = 25.0,
        min_send_interval_s: float = 5.0,
        max_watched: int = 32,
    ) -> None:
        if not 0 < renew_margin_s < lease_s:
            raise ValueError(f"renew_margin_s {renew_margin_s}: expected 0 < renew_margin_s < lease_s ({lease_s})")
        self.lease_s, self.renew_margin_s, self.page_lease_s = lease_s, renew_margin_s, page_lease_s
        self.min_send_interval_s, self.max_watched = min_send_interval_s, max_watched
        self._leases: dict[tuple[str, str], _Lease] = {}

    def renew(self, key: tuple[str, str], now: float) -> tuple[bool, str]:
        """Record a page's renewal; return (send a ``watch`` now, why)."""
        for k in [k for k, v in self._leases.items() if v.page_until <= now and v.station_until <= now]:
            del self._leases[k]
        lease = self._leases.get(key)
        if lease is None:
            if len(self._leases) >= self.max_watched:
                return False, "too_many_watched"
            lease = self._leases[key] = _Lease()
        lease.page_until = now + self.page_lease_s
        if lease.station_until - now >= self.renew_margin_s:
            return False, "station_lease_running"
        if now - lease.sent_at < self.min_send_interval_s:
            return False, "sent_recently"
        return True, "due"

    def sent(self, key: tuple[str, str], now: float) -> None:
        """Record that a lease of ``lease_s`` went to the station at ``now``."""
        lease = self._leases.setdefault(key, _Lease())
        lease.sent_at = now
        lease.station_until = now + self.lease_s

    def watched(self, now: float) -> list[tuple[str, str]]:
        """Return the stations a page is watching now."""
        return sorted(k for k, v in self._leases.items() if v.page_until > now)

    def station_until(self, key: tuple[str, str]) -> float | None:
        """Return when the lease last sent to the station runs out (None: never sent)."""
        lease = self._leases.get(key)
        return lease.station_until if lease is not None and lease.sent_at > float("-inf") else None


class LiveHub:
    """One MQTT client per replica: takes every station's snapshot into a :class:`SnapshotStore`, sends signed ``watch`` leases."""

    def __init__(
        self,
        mqtt_url: str,
        *,
        prefix: str = "checkpoint/v1",
        key_path: Path | None = None,
        signer: str = "centre",
        username: str | None = None,
        password: str | None = None,
        tls_ca: str | None = None,
        store: SnapshotStore | None = None,
        leases: WatchLeases | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        from station.ops.mqtt_url import parse_mqtt_url

        self.key: Any = None
        if key_path is not None:
            from station.centre.mirror import load_command_key

            self.key = load_command_key(key_path)
        self.endpoint = parse_mqtt_url(mqtt_url).with_credentials(username, password)
        self.prefix = prefix.rstrip("/")
        self.signer = signer
        self.tls_ca = tls_ca
        self.store = store or SnapshotStore()
        self.leases = leases or WatchLeases()
        self.monotonic, self.wall = monotonic, wall
        self.client: Any = None
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.answers: dict[tuple[str, str], dict[str, Any]] = {}  # the station's last answer to a watch

    def start(self) -> None:
        """Connect in the background (paho reconnects by itself); subscribe to the snapshots and the watch answers."""
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"centre-live-{uuid.uuid4().hex[:12]}", protocol=MQTTProtocolVersion.MQTTv5
        )
        if self.endpoint.username is not None:
            client.username_pw_set(self.endpoint.username, self.endpoint.password)
        if self.endpoint.tls:
            client.tls_set(ca_certs=self.tls_ca)
        topics = [(f"{self.prefix}/+/+/snapshot", 0), (f"{self.prefix}/+/+/cmd/watch/result", 1)]
        client.on_connect = lambda c, u, f, rc, p: c.subscribe(topics) if not rc.is_failure else None
        client.on_message = self._on_message
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        from station.board.mqtt import MAX_PACKET

        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho's class is unannotated
        # The broker must drop anything bigger for this client (MQTT 5) rather than make us read it:
        # the largest message taken here is a 1 MiB snapshot, as on the board.
        props.MaximumPacketSize = MAX_PACKET
        client.reconnect_delay_set(1, 30)
        client.connect_async(self.endpoint.host, self.endpoint.port, keepalive=30, properties=props)
        client.loop_start()
        self.client = client

    def connected(self) -> bool:
        """Return whether the broker link is up."""
        return self.client is not None and bool(self.client.is_connected())

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            if msg.topic.endswith("/cmd/watch/result"):
                self._on_answer(msg.topic, msg.payload)
                return
            where = split_snapshot_topic(self.prefix, msg.topic)
            if isinstance(where, Rejected):
                self.store.offer("?", "?", where)
                return
            if not msg.payload:  # an empty retained message clears the station's picture
                self.store.remove(*where)
                return
            self.store.offer(*where, parse_snapshot(*where, msg.payload, self.wall()))
        except Exception:  # never kill paho's thread; counted, logged
            self.counts["handler_errors"] += 1
            log.exception("live message failed topic=%s", str(getattr(msg, "topic", "?"))[:200])

    def _on_answer(self, topic: str, payload: bytes) -> None:
        parts = topic[len(self.prefix) + 1 :].split("/")
        site, station = (segment(parts[0]), segment(parts[1])) if len(parts) == 5 else (None, None)
        try:
            body = json.loads(payload)
        except (ValueError, RecursionError):
            body = None
        if site is None or station is None or not isinstance(body, dict):
            self.counts["bad_answers"] += 1
            return
        ok = body.get("ok") is True
        with self._lock:
            self.counts["answers_ok" if ok else "answers_refused"] += 1
            self.answers[(site, station)] = {
                "ok": ok,
                "reason": schema.token(body.get("reason")),
                "error": schema.text(body.get("error")),
                "at": round(self.wall(), 3),
            }
            while len(self.answers) > 1000:
                self.answers.pop(next(iter(self.answers)))
        if not ok:
            log.warning("station refused watch site=%s station=%s reason=%s", site, station, body.get("reason"))

    def watch(self, site: str, station: str) -> dict[str, Any]:
        """Renew a page's watch of one station; send the station a signed lease when due. Return the watch's state."""
        key = (site, station)
        now = self.monotonic()
        with self._lock:
            due, why = self.leases.renew(key, now)
            if due and self.key is None:
                due, why = False, "no_command_key"
            if due and not self.connected():
                due, why = False, "broker_unreachable"
            if due:
                self.leases.sent(key, now)  # before the publish: two renewals at once send one command
        sent = False
        if due:
            sent = self._send(site, station)
            if not sent:
                why = "publish_failed"
        with self._lock:
            self.counts[f"renew_{why}"] += 1
            until = self.leases.station_until(key)
            answer = self.answers.get(key)
        return {
            "sent": sent,
            "why": why,
            "station_lease_s": round(max(0.0, until - now), 1) if until is not None else None,
            "station_answer": answer,
        }

    def _send(self, site: str, station: str) -> bool:
        from station.link.command_auth import sign_command

        body = sign_command(
            self.key, site=site, station=station, command="watch", args={"lease_s": self.leases.lease_s}, by=self.signer, ttl_s=30.0
        )
        client = self.client
        if client is None:
            return False
        info = client.publish(f"{self.prefix}/{site}/{station}/cmd/watch", json.dumps(body), qos=1)
        with self._lock:
            self.counts["watch_sent" if info.rc == 0 else "publish_errors"] += 1
        log.info("watch lease sent site=%s station=%s lease_s=%.0f id=%s rc=%s", site, station, self.leases.lease_s, body["id"], info.rc)
        return bool(info.rc == 0)

    def stats(self) -> dict[str, Any]:
        """Return the store's and the watches' counters."""
        with self._lock:
            watched = self.leases.watched(self.monotonic())
            counts = dict(self.counts)
        return {
            "connected": self.connected(),
            "signing": self.key is not None,
            "pictures": self.store.stats(),
            "watched": len(watched),
            "counts": counts,
        }

    def stop(self) -> None:
        """Disconnect."""
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()
            self.client = None
