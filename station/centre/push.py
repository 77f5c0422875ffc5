"""Signed pushes from the centre to stations (trust list, resident list, threshold, district key), each audited.

An admin signs one command per station with the centre's command key (``station.link.command_auth``:
addressed to that site and station, a fresh id, a 20 s deadline), publishes it on
``<prefix>/<site>/<station>/cmd/<name>`` and waits for the station's result. Each push, answered,
refused or unanswered, is written to ``centre_audit`` (action ``push.<name>``, the station, the
outcome) — with a summary of the arguments that holds no secret and no personal data: a version
and a count, never the key of a ``district-key`` push nor the plates of a ``resident-plates`` one.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from station.ops.mqtt_url import MqttEndpoint

log = logging.getLogger("station.centre.push")

PUSH_COMMANDS = ("trust-list", "resident-plates", "set-threshold", "district-key")
RESULT_WAIT_S = 10.0


@dataclass(frozen=True, slots=True)
class PushOutcome:
    """What one station answered (or that it did not)."""

    site: str
    station: str
    command_id: str
    ok: bool
    reason: str  # the station's reason, or "no_answer" / "not_sent"
    error: str | None
    result: Any


def args_summary(command: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """Return what the audit keeps of a push's arguments: versions and counts, never a key, plate or document."""
    out: dict[str, Any] = {}
    if isinstance(args.get("version"), int):
        out["version"] = args["version"]
    if command == "resident-plates" and isinstance(args.get("plates"), list):
        out["plates"] = len(args["plates"])
    if command == "trust-list" and isinstance(args.get("document"), dict):
        certs = args["document"].get("certificates")
        out["certificates"] = len(certs) if isinstance(certs, list) else None
    if command == "set-threshold":
        out["fever_threshold_c"] = args.get("fever_threshold_c")
    if command == "district-key":
        out["key_id"] = args.get("key_id")
    return out


def result_summary(command: str, result: Any) -> Any:
    """Return the parts of a station's result worth keeping: versions, counts, key ids (``command`` names the push)."""
    if not isinstance(result, dict):
        return None
    keep = ("version", "previous_version", "count", "signers", "key_id", "previous_key_id", "old", "new", "persisted", "applied")
    return {k: result[k] for k in keep if k in result}


def push(
    mqtt_url: str | MqttEndpoint,
    key: Any,
    targets: Sequence[tuple[str, str]],
    command: str,
    args: Mapping[str, Any],
    *,
    by: str,
    prefix: str = "checkpoint/v1",
    username: str | None = None,
    password: str | None = None,
    wait_s: float = RESULT_WAIT_S,
    tls_ca: str | None = None,
) -> list[PushOutcome]:
    """Sign and publish ``command`` to every target, wait for their results (up to ``wait_s`` in all); return one outcome each.

    ``mqtt_url`` is a URL or an already parsed endpoint (the screen passes its alarm mirror's).
    """
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

    from station.link.command_auth import sign_command
    from station.ops.mqtt_url import parse_mqtt_url

    if command not in PUSH_COMMANDS:
        raise ValueError(f"command {command!r}: one of {', '.join(PUSH_COMMANDS)}")
    p = prefix.rstrip("/")
    endpoint = (parse_mqtt_url(mqtt_url) if isinstance(mqtt_url, str) else mqtt_url).with_credentials(username, password)
    answers: dict[str, dict[str, Any]] = {}
    lock = threading.Lock()
    subscribed = threading.Event()
    connected = threading.Event()

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        try:
            body = json.loads(msg.payload)
        except (ValueError, RecursionError):
            return
        if isinstance(body, dict) and isinstance(body.get("id"), str):
            with lock:
                answers[body["id"]] = body

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"centre-push-{uuid.uuid4().hex[:12]}", protocol=MQTTProtocolVersion.MQTTv5)
    if endpoint.username is not None:
        client.username_pw_set(endpoint.username, endpoint.password)
    if endpoint.tls:
        client.tls_set(ca_certs=tls_ca)
    client.on_message = on_message
    client.on_connect = lambda c, u, f, rc, pr: connected.set() if not rc.is_failure else None
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect(endpoint.host, endpoint.port, keepalive=30)
    client.loop_start()
    sent: dict[str, tuple[str, str]] = {}
    try:
        if not connected.wait(10):
            raise ConnectionError(f"broker {endpoint.host}:{endpoint.port} did not accept the connection")
        client.subscribe(
            [(f"{p}/{site}/{station}/cmd/{command}/result", 1) for site, station in targets] or [(f"{p}/+/+/cmd/{command}/result", 1)]
        )
        subscribed.wait(5)
        for site, station in targets:
            body = sign_command(key, site=site, station=station, command=command, args=dict(args), by=by, ttl_s=20.0)
            info = client.publish(f"{p}/{site}/{station}/cmd/{command}", json.dumps(body), qos=1)
            info.wait_for_publish(5)
            sent[body["id"]] = (site, station)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            with lock:
                if all(i in answers for i in sent):
                    break
            time.sleep(0.05)
    finally:
        client.disconnect()
        client.loop_stop()
    out = []
    for cid, (site, station) in sent.items():
        a = answers.get(cid)
        if a is None:
            out.append(PushOutcome(site, station, cid, False, "no_answer", f"no result within {wait_s:g} s", None))
        else:
            err = a.get("error")
            out.append(
                PushOutcome(site, station, cid, a.get("ok") is True, str(a.get("reason")), str(err) if err else None, a.get("result"))
            )
    return out


def audit_pushes(
    conn: Any, actor: str, role: str | None, command: str, args: Mapping[str, Any], outcomes: Sequence[PushOutcome], reason: str | None
) -> None:
    """Write one ``centre_audit`` row per station pushed to, in one transaction."""
    from station.centre import db

    summary = args_summary(command, args)
    with conn.transaction():
        for o in outcomes:
            detail = {"id": o.command_id, "ok": o.ok, "reason": o.reason, "error": (o.error or "")[:300] or None, "args": summary}
            detail["result"] = result_summary(command, o.result)
            db.audit(conn, actor, role, f"push.{command}", f"{o.site}/{o.station}", detail, reason)
