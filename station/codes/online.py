"""Online codes: a QR that carries only a token, looked up at the command centre over MQTT.

Payload: ``HCT1:`` + token (8–128 characters of ``[A-Za-z0-9_-]``). The station never sends the
token itself: the request carries its SHA-256, which the centre indexes its tokens by, so the raw
payload does not leave the box (docs/mqtt.md, *Code look-ups*).

Request/response follows the ``cmd/…`` conventions, in the other direction:

    station → ``<base>/lookup/code``         {"schema": 1, "id": "<correlation id>", "token_sha256": "…",
                                              "deadline": <unix s>, "station_id", "site", "ts"}
    centre  → ``<base>/lookup/code/result``  {"id": "<same id>", "ok": true,
                                              "result": {"found": true, "colour": "green", "expires": <unix s>,
                                                         "issuer": "…"},
                                              "station", "site", "token_sha256", "key_id", "by", "sig"}

The answer must be signed by a command-centre key (station.link.command_auth.sign_lookup_answer: the
request id, station, site, token hash and result are bound); an unsigned, forged or misaddressed
answer is ``unverifiable``/``online_unverified`` → ``manual_check``, never ``pass``.

A strict timeout (``codes.online_timeout_s``): no answer in time, no broker connection, or an
answer the station cannot read gives ``unverifiable`` → ``manual_check``, **never** ``pass``. A late
answer to a request that already timed out is dropped (its correlation id is forgotten).

Only MQTT is implemented; an HTTPS variant would sit behind the same class interface (not built).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import threading
import time
import uuid
from typing import Any

from station.domain.model import CodeColour, CodeStatus, CodeVerdict
from station.link.command_auth import CommandKeys, verify_lookup_answer

log = logging.getLogger("station.codes.online")

PREFIX = "HCT1:"
SOURCE = "online"
TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{8,128}$")
MAX_ANSWER_BYTES = 4096  # a look-up answer is a few hundred bytes; larger ones are dropped unread


def token_of(payload: bytes | str) -> str | None:
    """Return the token of an ``HCT1:`` payload (bytes or text of any kind), or None when it is not one."""
    if isinstance(payload, (bytes, bytearray, memoryview)):
        try:
            text = bytes(payload).decode("ascii").strip()
        except UnicodeDecodeError:
            return None
    elif isinstance(payload, str):
        text = payload.strip()
        if not text.isascii():
            return None
    else:
        return None
    if not text.startswith(PREFIX):
        return None
    return text[len(PREFIX) :]


def token_sha256(token: str) -> str:
    """Return the hex SHA-256 of a token: what a look-up request carries instead of the token."""
    return hashlib.sha256(token.encode("ascii")).hexdigest()


class OnlineVerifier:
    """MQTT look-up of ``HCT1:`` tokens. ``attach`` a connected publisher (the station's own link)."""

    name = "online"

    def __init__(
        self,
        base_topic: str,
        timeout_s: float = 1.5,
        identity: dict[str, str] | None = None,
        keys: CommandKeys | None = None,
        *,
        kind: str = "code",
        subject_field: str = "token_sha256",
    ) -> None:
        # kind "idcard" (station.codes.idcard): the same request/answer, on lookup/idcard, carrying
        # the ID number's keyed hash in ``subject_field``; the signed answer binds it as token_sha256.
        self.request_topic = f"{base_topic}/lookup/{kind}"
        self.subject_field = subject_field
        self.result_topic = f"{self.request_topic}/result"
        self.timeout_s = timeout_s
        self.identity = dict(identity or {})
        self.publisher: Any = None
        self._lock = threading.Lock()
        self._waiting: dict[str, tuple[threading.Event, list[Any]]] = {}
        self.keys = keys  # the centre's keys (station.link.command_auth); none = every answer is unverified
        self.counters = {"requests": 0, "answered": 0, "timeouts": 0, "no_network": 0, "late": 0, "unverified": 0}

    def trust_centre_keys(self, keys: CommandKeys) -> None:
        """Believe answers signed by these keys (the station's command key list, rotations included)."""
        self.keys = keys

    def attach(self, publisher: Any) -> None:
        """Send look-ups through ``publisher`` and subscribe to their answers."""
        self.publisher = publisher
        # A retained answer is never one to a request of ours; an oversized one is not read at all.
        publisher.subscribe(self.result_topic, self._on_result, accept_retained=False, max_bytes=MAX_ANSWER_BYTES)

    def _on_result(self, topic: str, payload: bytes) -> None:
        # paho's network thread: parse, hand over, return.
        if len(payload) > MAX_ANSWER_BYTES:  # also when attached to a publisher without intake caps
            log.warning("oversized code look-up result dropped bytes=%d", len(payload))
            return
        try:
            msg = json.loads(payload)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            log.warning("unreadable code look-up result bytes=%d", len(payload))
            return
        corr = msg.get("id") if isinstance(msg, dict) else None
        with self._lock:
            waiting = self._waiting.get(corr) if isinstance(corr, str) else None
        if waiting is None:
            self.counters["late"] += 1
            return
        waiting[1].append(msg)
        waiting[0].set()

    def verify(self, payload: bytes, now_wall: float) -> CodeVerdict:
        """Look a token up at the centre and judge the signed answer; no answer in time is never a pass."""
        token = token_of(payload)
        if token is None:
            return CodeVerdict(CodeStatus.INVALID, None, "unknown_format", SOURCE, None, {})
        if not TOKEN_RE.match(token):
            return CodeVerdict(CodeStatus.INVALID, None, "bad_token", SOURCE, None, {})
        return self.lookup(token_sha256(token), now_wall)

    def lookup(self, subject_hash: str, now_wall: float) -> CodeVerdict:
        """Ask the centre about one hash (a token's SHA-256, an ID number's keyed hash) and judge the signed answer."""
        pub = self.publisher
        if pub is None or not pub.connected():
            self.counters["no_network"] += 1
            return CodeVerdict(CodeStatus.UNVERIFIABLE, None, "online_unreachable", SOURCE, None, {})
        corr = uuid.uuid4().hex
        done = threading.Event()
        box: list[Any] = []
        with self._lock:
            self._waiting[corr] = (done, box)
        try:
            request = {
                "schema": 1,
                **self.identity,
                "ts": round(now_wall, 3),
                "id": corr,
                self.subject_field: subject_hash,
                "deadline": round(now_wall + self.timeout_s, 3),
            }
            self.counters["requests"] += 1
            t0 = time.monotonic()
            if not pub.publish_direct(self.request_topic, json.dumps(request).encode(), qos=1, retain=False):
                self.counters["no_network"] += 1
                return CodeVerdict(CodeStatus.UNVERIFIABLE, None, "online_unreachable", SOURCE, None, {})
            if not done.wait(self.timeout_s):
                self.counters["timeouts"] += 1
                log.warning("code look-up timed out id=%s timeout_s=%.2f", corr, self.timeout_s)
                return CodeVerdict(CodeStatus.UNVERIFIABLE, None, "online_timeout", SOURCE, None, {"timeout_s": self.timeout_s})
            self.counters["answered"] += 1
            return self._judge(box[0], now_wall, round((time.monotonic() - t0) * 1000.0, 1), corr, subject_hash)
        finally:
            with self._lock:
                self._waiting.pop(corr, None)

    def _judge(self, msg: dict[str, Any], now_wall: float, ms: float, corr: str = "", token_hash: str = "") -> CodeVerdict:
        # Only an answer signed by the centre for this very request may decide anything: an
        # unsigned "green" from any broker client must end in manual_check, never in pass.
        signed, why = verify_lookup_answer(
            msg,
            request_id=corr,
            station=self.identity.get("station_id", ""),
            site=self.identity.get("site", ""),
            token_sha256=token_hash,
            keys=self.keys,
        )
        if not signed:
            self.counters["unverified"] += 1
            log.warning("code look-up answer not trusted id=%s why=%s", corr, why)
            return CodeVerdict(CodeStatus.UNVERIFIABLE, None, "online_unverified", SOURCE, None, {"lookup_ms": ms, "answer_auth": why})
        result = msg.get("result")
        if msg.get("ok") is not True or not isinstance(result, dict):
            return CodeVerdict(CodeStatus.UNVERIFIABLE, None, "online_error", SOURCE, None, {"lookup_ms": ms})
        if result.get("found") is not True:
            return CodeVerdict(CodeStatus.INVALID, None, "unknown_token", SOURCE, None, {"lookup_ms": ms})
        try:
            colour = CodeColour(str(result.get("colour")))
        except ValueError:
            return CodeVerdict(CodeStatus.UNVERIFIABLE, None, "online_error", SOURCE, None, {"lookup_ms": ms})
        expires = result.get("expires")
        detail: dict[str, Any] = {"colour": colour.value, "issuer": str(result.get("issuer", ""))[:64], "lookup_ms": ms}
        if isinstance(expires, (int, float)) and not isinstance(expires, bool) and math.isfinite(expires):
            detail["expires"] = expires
            if expires < now_wall:
                return CodeVerdict(CodeStatus.EXPIRED, colour, "expired", SOURCE, None, detail)
        return CodeVerdict(CodeStatus.VALID, colour, "ok", SOURCE, None, detail)
