"""Mirror the centre's alarm handling to the station: a signed ``alarm-ack`` command on the station's ``cmd/`` topic.

When a tracer or admin acknowledges or closes an alarm on the big screen, the station that raised it
gets ``<prefix>/<site>/<station>/cmd/alarm-ack`` signed with the centre's command key (the same
envelope as every signed command, station/link/command_auth.py) with ``{"event_id", "state",
"operator", "note"}``; the station records it as its operator display's acknowledgement by
``centre:<operator>`` (station/link/handlers.py) and answers on ``…/cmd/alarm-ack/result``, which is
counted here and logged. Fire and forget at QoS 1: a station offline gets it when it reconnects
only while the broker keeps its session and the command's 60 s deadline has not passed — the
centre's own record (``centre_alarms``) is what counts; the mirror is for the people at the gate.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from pathlib import Path
from typing import Any

log = logging.getLogger("station.centre.mirror")

TTL_S = 60.0  # the most a station accepts (command_auth.MAX_WINDOW_S)


def load_command_key(key_path: Path) -> Any:
    """Return the centre's command signing key, or raise ValueError naming ``--command-key`` and why it is unusable."""
    from station.link.command_auth import load_private_key

    try:
        return load_private_key(Path(key_path))
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"--command-key {key_path}: not a usable signing key (Ed25519 or ECDSA P-256 PEM): {exc}") from None


class AlarmMirror:
    """One MQTT 5 client that publishes signed ``alarm-ack`` commands and counts the stations' answers."""

    def __init__(
        self,
        mqtt_url: str,
        key_path: Path,
        *,
        prefix: str = "checkpoint/v1",
        signer: str = "centre",
        username: str | None = None,
        password: str | None = None,
        tls_ca: str | None = None,
    ) -> None:
        from station.ops.mqtt_url import parse_mqtt_url

        self.key = load_command_key(key_path)  # refused here, before anything starts
        self.endpoint = parse_mqtt_url(mqtt_url).with_credentials(username, password)
        self.prefix = prefix.rstrip("/")
        self.signer = signer
        self.tls_ca = tls_ca
        self.client: Any = None
        self._lock = threading.Lock()
        self.counts = {"sent": 0, "ok": 0, "refused": 0, "publish_errors": 0}
        self.results: dict[str, dict[str, Any]] = {}  # command id → the station's answer (the last 200)

    def start(self) -> None:
        """Connect (in the background; paho reconnects by itself) and subscribe to the answers."""
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"centre-mirror-{uuid.uuid4().hex[:12]}", protocol=MQTTProtocolVersion.MQTTv5
        )
        if self.endpoint.username is not None:
            client.username_pw_set(self.endpoint.username, self.endpoint.password)
        if self.endpoint.tls:
            client.tls_set(ca_certs=self.tls_ca)
        topic = f"{self.prefix}/+/+/cmd/alarm-ack/result"
        client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1) if not rc.is_failure else None
        client.on_message = self._on_result
        client.connect_async(self.endpoint.host, self.endpoint.port, keepalive=30)
        client.loop_start()
        self.client = client

    def _on_result(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            body = json.loads(msg.payload)
        except (ValueError, RecursionError):
            return
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            return
        ok = body.get("ok") is True
        with self._lock:
            self.counts["ok" if ok else "refused"] += 1
            self.results[body["id"][:128]] = {"ok": ok, "reason": str(body.get("reason"))[:80], "error": str(body.get("error") or "")[:200]}
            while len(self.results) > 200:
                self.results.pop(next(iter(self.results)))
        if ok:
            log.info("alarm mirrored to the station topic=%s id=%s", msg.topic[:200], body["id"][:64])
        else:
            log.warning(
                "station refused the alarm mirror topic=%s reason=%s error=%s", msg.topic[:200], body.get("reason"), body.get("error")
            )

    def send(self, site: str, station: str, event_id: str, state: str, operator: str, note: str | None = None) -> str | None:
        """Sign and publish one ``alarm-ack``; return its command id, or None when it could not be queued."""
        from station.link.command_auth import sign_command

        args: dict[str, Any] = {"event_id": event_id, "state": state, "operator": operator}
        if note:
            args["note"] = note
        body = sign_command(self.key, site=site, station=station, command="alarm-ack", args=args, by=self.signer, ttl_s=TTL_S)
        if self.client is None:
            return None
        info = self.client.publish(f"{self.prefix}/{site}/{station}/cmd/alarm-ack", json.dumps(body, ensure_ascii=False), qos=1)
        with self._lock:
            if info.rc == 0:
                self.counts["sent"] += 1
            else:
                self.counts["publish_errors"] += 1
        return str(body["id"]) if info.rc == 0 else None

    def result(self, command_id: str) -> dict[str, Any] | None:
        """Return the station's answer to ``command_id`` if it came."""
        with self._lock:
            return self.results.get(command_id)

    def stats(self) -> dict[str, int]:
        """Return the counters (sent, ok, refused, publish_errors)."""
        with self._lock:
            return dict(self.counts)

    def stop(self) -> None:
        """Disconnect."""
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()
            self.client = None
