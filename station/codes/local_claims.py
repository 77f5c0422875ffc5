"""Health codes carried as plain claims: ``HCODE1:`` + base64url(JSON).

This is the station's first code format: the colour, the validity window and an opaque holder
reference, judged offline on the box. It is **not signed**, so it proves nothing about who issued
it — a forged green code passes it. Every decision made with it records ``source =
"local_unsigned"`` so the command centre can tell. Signed offline codes (HC1 / COSE) and online
look-ups are separate verifiers behind the same port (``station.ports.CodeVerifier``).

Claims: ``v`` (format version, 1), ``col`` ("green" | "yellow" | "red"), ``iat`` (issued, UNIX s),
``exp`` (expires, UNIX s), ``sub`` (opaque holder id; only its hash is kept), ``iss`` (issuer name).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from typing import Any

from station.domain.model import CodeColour, CodeStatus, CodeVerdict

PREFIX = b"HCODE1:"
SOURCE = "local_unsigned"
REQUIRED = ("v", "col", "iat", "exp", "sub")
MAX_PAYLOAD = 4096  # a QR holds < 3 kB
MAX_TIME = 2**40
_COLOURS = frozenset(c.value for c in CodeColour)


def encode_claims(colour: CodeColour, issued_at: int, expires_at: int, subject: str, issuer: str = "demo-issuer") -> bytes:
    """Return the payload a phone would show for these claims."""
    claims = {"v": 1, "col": colour.value, "iat": int(issued_at), "exp": int(expires_at), "sub": subject, "iss": issuer}
    body = json.dumps(claims, separators=(",", ":"), sort_keys=True).encode()
    return PREFIX + base64.urlsafe_b64encode(body).rstrip(b"=")


def subject_ref(subject: str) -> str:
    """Return a stable, non-reversible reference to the holder (the raw id never leaves the verifier)."""
    return hashlib.sha256(b"checkpoint-subject:" + subject.encode()).hexdigest()[:16]


def _is_time(value: Any) -> bool:
    """Return whether ``value`` is a UNIX time a clock can reach: a finite, non-negative number.

    NaN compares false to everything, so an ``exp`` of NaN would never be expired.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) and 0 <= value <= MAX_TIME


def _invalid(reason: str, **detail: Any) -> CodeVerdict:
    return CodeVerdict(CodeStatus.INVALID, None, reason, SOURCE, None, dict(detail))


class LocalClaimsVerifier:
    """Judges ``HCODE1:`` payloads offline: structure, colour, validity window with clock skew."""

    name = "local-claims"

    def __init__(self, max_clock_skew_s: float = 300.0) -> None:
        self.max_clock_skew_s = max_clock_skew_s

    def verify(self, payload: bytes | str, now_wall: float) -> CodeVerdict:
        """Judge one payload; any input gets a verdict with a reason, never an exception."""
        if isinstance(payload, str):
            payload = payload.encode("utf-8", "surrogatepass")
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            return _invalid("unknown_format")
        payload = bytes(payload)
        if not payload.startswith(PREFIX):
            return _invalid("unknown_format")
        if len(payload) > MAX_PAYLOAD:
            return _invalid("garbage")
        body = payload[len(PREFIX) :]
        try:
            raw = base64.urlsafe_b64decode(body + b"=" * (-len(body) % 4))
        except (binascii.Error, ValueError):
            return _invalid("not_base64")
        try:
            claims = json.loads(raw)
        except (ValueError, RecursionError):  # bad UTF-8 or JSON, numbers too long to convert, nesting too deep
            return _invalid("not_json")
        if not isinstance(claims, dict):
            return _invalid("not_an_object")
        missing = [k for k in REQUIRED if k not in claims]
        if missing:
            return _invalid("missing_claim", missing=missing)
        if type(claims["v"]) is not int or claims["v"] != 1:
            return _invalid("unsupported_version")
        col = claims["col"]
        if not isinstance(col, str) or col not in _COLOURS:
            return _invalid("bad_colour")
        colour = CodeColour(col)
        iat, exp, sub = claims["iat"], claims["exp"], claims["sub"]
        if not all(_is_time(x) for x in (iat, exp)) or not isinstance(sub, str):
            return _invalid("bad_claim_type")
        ref = subject_ref(sub)
        iss = claims.get("iss")
        detail = {"iat": iat, "exp": exp, "iss": "".join(c for c in iss[:256] if c.isprintable())[:64] if isinstance(iss, str) else ""}
        if iat > now_wall + self.max_clock_skew_s:
            return CodeVerdict(CodeStatus.INVALID, None, "not_yet_valid", SOURCE, ref, detail)
        if exp < now_wall - self.max_clock_skew_s:
            return CodeVerdict(CodeStatus.EXPIRED, colour, "expired", SOURCE, ref, detail)
        return CodeVerdict(CodeStatus.VALID, colour, "ok", SOURCE, ref, detail)
