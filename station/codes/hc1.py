"""Signed offline health codes in the HC1 container (the one the EU Digital COVID Certificate made public).

Layers, outside in: ``HC1:`` prefix → Base45 (RFC 9285) → zlib → COSE_Sign1 (RFC 9052, ES256 or
PS256) → CWT claims (RFC 8392): ``1`` issuer, ``4`` expiry, ``6`` issued-at, and our own health
claim under key ``HEALTH_CLAIM`` (-262; the EU certificate uses -260 for its ``hcert``):

    {1: "green" | "yellow" | "red",   # colour
     2: valid-from (UNIX s),          # colour validity window, may be narrower than iat..exp
     3: valid-until (UNIX s),
     4: refresh period (s),           # present = a *dynamic* code the phone re-issues every period;
                                      #   one older than that is a screenshot and is refused
     5: holder reference (text)}      # opaque; only a salted hash of it is kept

Anything else in the claim (a name, a date of birth, an ID number — the EU format carries them) is
dropped while decoding: :class:`Hc1Claims` has no field to hold it, so it cannot reach an event.

The key id (``kid``, header label 4, protected or unprotected) is the first 8 bytes of the SHA-256
of the signer's DER certificate; the certificate comes from the trust list
(:mod:`station.codes.trust_list`). A code signed by a key not in the list is ``unknown_kid``, never
a pass.

Each way a payload can fail has its own reason code (``REASONS``); the verifier never raises on
hostile input.
"""

from __future__ import annotations

import hashlib
import logging
import math
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from station.domain.model import CodeColour, CodeStatus, CodeVerdict
from station.ops.ratelimit import FailureLog

log = logging.getLogger("station.codes.hc1")

PREFIX = "HC1:"
SOURCE = "hc1"
HEALTH_CLAIM = -262
CWT_ISS, CWT_EXP, CWT_IAT = 1, 4, 6
H_ALG, H_KID = 1, 4
ALG_ES256, ALG_PS256 = -7, -37
ALG_NAMES = {ALG_ES256: "ES256", ALG_PS256: "PS256"}
EU_HCERT_CLAIM = -260
COSE_SIGN1_TAG = 18
CWT_TAG = 61  # RFC 8392: a CWT may wrap its COSE_Sign1 in this tag
MAX_PAYLOAD = 4096  # a QR holds < 3 kB; anything longer is not a phone screen
MAX_INFLATED = 16384  # zlib bomb guard
MAX_KID = 32  # the HC1 kid is 8 bytes; a longer one would only bloat the events that record it
MAX_TIME = 2**40  # NumericDates beyond year 36 000 are not dates: refused rather than carried around
MAX_REFRESH_S = 86400
MAX_HOLDER = 256
_COLOURS = frozenset(c.value for c in CodeColour)

REASONS = (
    "ok",
    "unknown_format",
    "garbage",
    "bad_base45",
    "truncated",
    "bad_zlib",
    "not_cose",
    "bad_cose_structure",
    "bad_header",
    "unsupported_alg",
    "no_kid",
    "unknown_kid",
    "bad_signature",
    "bad_claims",
    "expired",
    "not_yet_valid",
    "stale_dynamic",
    "replay",
    "malformed",
)
"""Every reason an HC1 verdict can carry. ``not_cose``: not CBOR, or not a (CWT-/COSE_Sign1-tagged) array;
``bad_cose_structure``: an array of the wrong length or element types; ``bad_header``: a protected header
that is not a CBOR map or a kid that is not a short byte string; ``malformed``: the verifier's own backstop
(an input no check above foresaw; logged once per minute per kind, never a pass)."""

# --------------------------------------------------------------------------------------------- Base45

B45 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"
_B45_INDEX = {c: i for i, c in enumerate(B45)}


class Base45Error(ValueError):
    """Not Base45; ``truncated`` when the length is one that no encoder produces (a cut-off string)."""

    def __init__(self, message: str, truncated: bool = False) -> None:
        super().__init__(message)
        self.truncated = truncated


def b45encode(data: bytes) -> str:
    """Encode bytes as Base45 (RFC 9285)."""
    out = []
    for i in range(0, len(data) - 1, 2):
        n = data[i] * 256 + data[i + 1]
        c, n = divmod(n, 45 * 45)
        b, a = divmod(n, 45)
        out += [B45[a], B45[b], B45[c]]
    if len(data) % 2:
        b, a = divmod(data[-1], 45)
        out += [B45[a], B45[b]]
    return "".join(out)


def b45decode(text: str) -> bytes:
    """Decode Base45 (RFC 9285); :class:`Base45Error` for anything that is not."""
    try:
        values = [_B45_INDEX[ch] for ch in text]
    except KeyError as exc:
        raise Base45Error(f"character {exc.args[0]!r} is not Base45") from None
    if len(values) % 3 == 1:
        raise Base45Error("length leaves one dangling character", truncated=True)
    out = bytearray()
    for i in range(0, len(values), 3):
        chunk = values[i : i + 3]
        if len(chunk) == 3:
            n = chunk[0] + chunk[1] * 45 + chunk[2] * 45 * 45
            if n > 0xFFFF:
                raise Base45Error("triplet out of range")
            out += n.to_bytes(2, "big")
        else:
            n = chunk[0] + chunk[1] * 45
            if n > 0xFF:
                raise Base45Error("pair out of range")
            out.append(n)
    return bytes(out)


# --------------------------------------------------------------------------------------------- keys


def kid_of(cert_der: bytes) -> bytes:
    """Return the HC1 key id: the first 8 bytes of the SHA-256 of the signer's DER certificate."""
    return hashlib.sha256(cert_der).digest()[:8]


def _verify_signature(public_key: Any, alg: int, to_be_signed: bytes, signature: bytes) -> bool:
    """Return True only for a good signature by ``public_key`` under ``alg``; any refusal is False."""
    try:
        if alg == ALG_ES256:
            # ECDSA with SHA-256; r and s each take the key's curve size (32 bytes on P-256, 48 on P-384).
            if not isinstance(public_key, ec.EllipticCurvePublicKey):
                return False
            half = (public_key.curve.key_size + 7) // 8
            if len(signature) != 2 * half:
                return False
            der = encode_dss_signature(int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big"))
            public_key.verify(der, to_be_signed, ec.ECDSA(hashes.SHA256()))
            return True
        if alg == ALG_PS256:
            if not isinstance(public_key, rsa.RSAPublicKey):
                return False
            # RFC 8230: PSS with SHA-256, MGF1 SHA-256, salt length = hash length.
            public_key.verify(signature, to_be_signed, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
            return True
    except (InvalidSignature, ValueError, TypeError):
        return False  # a key or signature of a shape the library refuses is as good as a wrong signature
    return False


def sig_structure(protected: bytes, payload: bytes) -> bytes:
    """Return the COSE ``Sig_structure`` a COSE_Sign1 signature covers (RFC 9052 §4.4)."""
    return cbor2.dumps(["Signature1", protected, b"", payload])


def sign_es256(private_key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """Sign ``data`` with ECDSA P-256 / SHA-256; return COSE's fixed-size r ‖ s form."""
    r, s = decode_dss_signature(private_key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def sign_ps256(private_key: rsa.RSAPrivateKey, data: bytes) -> bytes:
    """Sign ``data`` with RSASSA-PSS / SHA-256 (salt length 32, RFC 8230)."""
    return private_key.sign(data, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())


# --------------------------------------------------------------------------------------------- encode


def encode(claims: Mapping[int, Any], private_key: Any, kid: bytes, *, kid_protected: bool = True) -> str:
    """Sign ``claims`` (a CWT map) and wrap them as an ``HC1:`` string (what the phone's QR shows)."""
    alg = ALG_ES256 if isinstance(private_key, ec.EllipticCurvePrivateKey) else ALG_PS256
    header: dict[int, Any] = {H_ALG: alg}
    unprotected: dict[int, Any] = {}
    (header if kid_protected else unprotected)[H_KID] = kid
    protected = cbor2.dumps(header)
    payload = cbor2.dumps(dict(claims))
    tbs = sig_structure(protected, payload)
    signature = sign_es256(private_key, tbs) if alg == ALG_ES256 else sign_ps256(private_key, tbs)
    cose = cbor2.dumps(cbor2.CBORTag(COSE_SIGN1_TAG, [protected, unprotected, payload, signature]))
    return PREFIX + b45encode(zlib.compress(cose, 9))


def health_claims(
    colour: CodeColour | str,
    *,
    iat: int,
    exp: int,
    issuer: str,
    valid_from: int | None = None,
    valid_until: int | None = None,
    refresh_s: int | None = None,
    holder: str | None = None,
    extra: Mapping[Any, Any] | None = None,
) -> dict[int, Any]:
    """Return a CWT claims map with our health claim.

    ``extra`` adds fields to the health claim, e.g. the personal fields other issuers put there,
    which the verifier must drop.
    """
    health: dict[Any, Any] = {
        1: CodeColour(colour).value,
        2: int(valid_from if valid_from is not None else iat),
        3: int(valid_until if valid_until is not None else exp),
    }
    if refresh_s is not None:
        health[4] = int(refresh_s)
    if holder is not None:
        health[5] = holder
    health.update(extra or {})
    return {CWT_ISS: issuer, CWT_IAT: int(iat), CWT_EXP: int(exp), HEALTH_CLAIM: health}


# --------------------------------------------------------------------------------------------- decode


class DecodeError(ValueError):
    """An ``HC1:`` payload that cannot be unwrapped or read; ``reason`` is its reason code (``REASONS``)."""

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(message or reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Hc1Claims:
    """What the station keeps of a code: no personal field has a place here."""

    issuer: str
    iat: int
    exp: int
    colour: CodeColour | None  # None: a genuine code without our health claim (e.g. an EU DCC); policy decides
    valid_from: int
    valid_until: int
    refresh_s: int | None
    holder: str | None  # in memory only, hashed with the station's salt before anything records it
    claim_set: str = "health"  # "health" (ours, -262), "hcert" (EU DCC, -260) or "none"


@dataclass(frozen=True, slots=True)
class Hc1Message:
    """The parts of a COSE_Sign1 message, its algorithm and key id taken from the headers."""

    alg: int
    kid: bytes
    protected: bytes
    payload: bytes
    signature: bytes

    def to_be_signed(self) -> bytes:
        """Return the bytes the signature covers."""
        return sig_structure(self.protected, self.payload)


def _cbor(data: bytes, reason: str, what: str) -> Any:
    """Decode hostile CBOR; any failure of the decoder (a third-party parser) is ``reason``."""
    try:
        return cbor2.loads(data)
    except cbor2.CBORDecodeEOF:
        raise DecodeError("truncated" if reason == "not_cose" else reason, f"{what} ends early") from None
    except Exception as exc:  # noqa: BLE001 - cbor2 raises many kinds (tags it decodes itself); all mean "not CBOR"
        raise DecodeError(reason, f"{what} is not CBOR: {type(exc).__name__}") from None


def _cose_sign1(obj: Any) -> Any:
    """Return the COSE_Sign1 array inside the optional CWT tag (61) and COSE_Sign1 tag (18), nothing else."""
    if isinstance(obj, cbor2.CBORTag) and obj.tag == CWT_TAG:
        obj = obj.value
        if not (isinstance(obj, cbor2.CBORTag) and obj.tag == COSE_SIGN1_TAG):
            raise DecodeError("not_cose", "a CWT tag must wrap a COSE_Sign1 tag")
    if isinstance(obj, cbor2.CBORTag):
        if obj.tag != COSE_SIGN1_TAG:
            raise DecodeError("not_cose", f"CBOR tag {obj.tag}, not COSE_Sign1")
        obj = obj.value
    if not isinstance(obj, (list, tuple)):  # cbor2 gives a tuple inside a tag
        raise DecodeError("not_cose", f"a CBOR {type(obj).__name__}, not a COSE_Sign1 array")
    return obj


def _kid(value: Any, where: str) -> bytes:
    """Return a header's kid if it is a short byte string; ``bad_header`` otherwise."""
    if not isinstance(value, bytes) or not 1 <= len(value) <= MAX_KID:
        raise DecodeError("bad_header", f"{where} kid is not a byte string of 1..{MAX_KID} bytes")
    return value


def unwrap(text: str) -> Hc1Message:
    """Unwrap ``HC1:…`` to the COSE_Sign1 parts, or raise :class:`DecodeError` with the reason code."""
    if not isinstance(text, str) or not text.startswith(PREFIX):
        raise DecodeError("unknown_format")
    body = text[len(PREFIX) :]
    if not body:
        raise DecodeError("truncated", "nothing after the prefix")
    try:
        compressed = b45decode(body)
    except Base45Error as exc:
        raise DecodeError("truncated" if exc.truncated else "bad_base45", str(exc)) from None
    d = zlib.decompressobj()
    try:
        raw = d.decompress(compressed, MAX_INFLATED)
    except zlib.error as exc:
        raise DecodeError("bad_zlib", str(exc)) from None
    if d.unconsumed_tail:
        raise DecodeError("bad_zlib", "inflates beyond the size limit")
    if not d.eof:
        raise DecodeError("truncated", "zlib stream ends early")
    parts = _cose_sign1(_cbor(raw, "not_cose", "COSE container"))
    if len(parts) != 4:
        raise DecodeError("bad_cose_structure", f"COSE_Sign1 has {len(parts)} elements, not 4")
    protected, unprotected, payload, signature = parts
    if not isinstance(protected, bytes) or not isinstance(unprotected, Mapping):
        raise DecodeError("bad_header", "protected header not a byte string or unprotected header not a map")
    if not (isinstance(payload, bytes) and isinstance(signature, bytes)):
        raise DecodeError("bad_cose_structure", "payload or signature is not a byte string")
    header = _cbor(protected, "bad_header", "protected header") if protected else {}
    if not isinstance(header, Mapping):
        raise DecodeError("bad_header", "protected header is not a map")
    # alg belongs in the protected header; one only in the unprotected header is taken too (the EU DCC
    # vectors use it), which is safe because the trusted key's type pins the algorithm (EC ↔ ES256, RSA ↔ PS256).
    alg = header.get(H_ALG) if H_ALG in header else unprotected.get(H_ALG)
    # An exact int: a list or map here is unhashable, a float or bool would compare equal to a known alg.
    if type(alg) is not int or alg not in ALG_NAMES:
        raise DecodeError("unsupported_alg", f"alg of type {type(alg).__name__}")
    # The protected kid wins (it is signed); the unprotected one is used only when there is none.
    if H_KID in header:
        kid = _kid(header[H_KID], "protected")
    elif H_KID in unprotected:
        kid = _kid(unprotected[H_KID], "unprotected")
    else:
        raise DecodeError("no_kid")
    return Hc1Message(alg, kid, protected, payload, signature)


def _time(value: Any, what: str) -> int:
    """Return a CWT NumericDate (int, or a finite float per RFC 8392) inside the range a clock can reach."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DecodeError("bad_claims", f"{what} is not a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise DecodeError("bad_claims", f"{what} is not finite")
    if not 0 <= value <= MAX_TIME:
        raise DecodeError("bad_claims", f"{what} is outside 0..{MAX_TIME}")
    return int(value)


def _text(value: Any, limit: int) -> str:
    """Return the printable characters of a text, at most ``limit`` (no control or bidi characters reach an event, a log or a screen)."""
    if not isinstance(value, str):
        return ""
    return "".join(ch for ch in value[: limit * 4] if ch.isprintable())[:limit]


def parse_claims(payload: bytes) -> Hc1Claims:
    """Read the CWT claims the station keeps; :class:`DecodeError` (``bad_claims``) for anything else."""
    claims = _cbor(payload, "bad_claims", "CWT payload")
    if not isinstance(claims, Mapping):
        raise DecodeError("bad_claims", "CWT payload is not a map")
    if CWT_IAT not in claims or CWT_EXP not in claims:
        raise DecodeError("bad_claims", "missing iat or exp")
    iat, exp = _time(claims[CWT_IAT], "iat"), _time(claims[CWT_EXP], "exp")
    health = claims.get(HEALTH_CLAIM)
    issuer = _text(claims.get(CWT_ISS), 64)
    if health is None:
        # A genuine code without our claim (an EU DCC carries -260): no colour, the lane's policy decides.
        # The hcert's content (names, vaccinations) is never read; only its shape, {1: {…}}, is checked.
        hcert = claims.get(EU_HCERT_CLAIM)
        if hcert is not None and not (isinstance(hcert, Mapping) and isinstance(hcert.get(1), Mapping)):
            raise DecodeError("bad_claims", "the hcert claim is not a map holding a map under 1")
        claim_set = "hcert" if hcert is not None else "none"
        return Hc1Claims(issuer, iat, exp, None, iat, exp, None, None, claim_set)
    if not isinstance(health, Mapping):
        raise DecodeError("bad_claims", "the health claim is not a map")
    colour_value = health.get(1)
    if not isinstance(colour_value, str) or colour_value not in _COLOURS:
        raise DecodeError("bad_claims", "unknown colour")
    refresh = health.get(4)
    if refresh is not None and (type(refresh) is not int or not 1 <= refresh <= MAX_REFRESH_S):
        raise DecodeError("bad_claims", f"refresh period is not an integer in 1..{MAX_REFRESH_S}")
    holder = health.get(5)
    # Only the fields above are copied out; names, birth dates, ID numbers die with ``claims``.
    return Hc1Claims(
        issuer=issuer,
        iat=iat,
        exp=exp,
        colour=CodeColour(colour_value),
        valid_from=_time(health.get(2, iat), "valid-from"),
        valid_until=_time(health.get(3, exp), "valid-until"),
        refresh_s=refresh,
        holder=holder[:MAX_HOLDER] if isinstance(holder, str) and holder else None,
    )


# --------------------------------------------------------------------------------------------- verify


class Hc1Verifier:
    """Judges ``HC1:`` payloads offline against a trust list.

    ``trust`` maps a kid to a public key and is asked on every code, so a list replaced while the
    station runs (pushed over MQTT) is used from the next code on.
    """

    name = "hc1"

    def __init__(
        self,
        trust: Callable[[bytes], Any],
        *,
        max_clock_skew_s: float = 300.0,
        dynamic_grace_s: float = 30.0,
        holder_ref: Callable[[str], str] | None = None,
        trace_ref: Callable[[str], tuple[str, str] | None] | None = None,
    ) -> None:
        self.trust = trust
        self.max_clock_skew_s = max_clock_skew_s
        self.dynamic_grace_s = dynamic_grace_s
        self.holder_ref = holder_ref or (lambda s: hashlib.sha256(b"checkpoint-holder:" + s.encode()).hexdigest()[:16])
        # The district key's reference (station.codes.trace_key): the same holder links across checkpoints.
        self.trace_ref = trace_ref
        self.failures = FailureLog(log, "hc1 verify")  # backstop hits, per exception type: each one is a bug to fix

    def verify(self, payload: bytes | str, now_wall: float) -> CodeVerdict:
        """Judge any payload to a verdict with a reason; ``valid`` only for a trusted signature on an in-date code."""
        try:
            return self._verify(payload, now_wall)
        except Exception as exc:  # noqa: BLE001 - the backstop: a code must never take the lane down
            kind = type(exc).__name__
            self.failures.report(kind, exc)
            return _verdict(CodeStatus.INVALID, "malformed", error=kind)

    def _verify(self, payload: bytes | str, now_wall: float) -> CodeVerdict:
        if isinstance(payload, str):
            payload = payload.encode("utf-8", "surrogatepass")  # lone surrogates too: they are simply not ASCII
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            return _verdict(CodeStatus.INVALID, "unknown_format")
        if len(payload) > MAX_PAYLOAD:
            return _verdict(CodeStatus.INVALID, "garbage")
        try:
            text = bytes(payload).decode("ascii")
        except UnicodeDecodeError:
            return _verdict(CodeStatus.INVALID, "unknown_format")
        try:
            msg = unwrap(text.strip())
        except DecodeError as exc:
            return _verdict(CodeStatus.INVALID, exc.reason)
        detail: dict[str, Any] = {"kid": msg.kid.hex(), "alg": ALG_NAMES[msg.alg]}
        key = self.trust(msg.kid)
        if key is None:
            return _verdict(CodeStatus.UNVERIFIABLE, "unknown_kid", **detail)
        if not _verify_signature(key, msg.alg, msg.to_be_signed(), msg.signature):
            return _verdict(CodeStatus.INVALID, "bad_signature", **detail)
        # From here on the bytes are genuine: signed by a signer on the trust list.
        try:
            c = parse_claims(msg.payload)
        except DecodeError as exc:
            return _verdict(CodeStatus.INVALID, exc.reason, **detail)
        expires = min(c.exp, c.valid_until)
        detail.update(issuer=c.issuer, colour=c.colour.value if c.colour else None, iat=c.iat, expires=expires, claim_set=c.claim_set)
        if c.refresh_s is not None:
            detail["refresh_s"] = c.refresh_s
        ref = self.holder_ref(c.holder) if c.holder else None
        traced = self.trace_ref(c.holder) if c.holder and self.trace_ref is not None else None
        if traced is not None:
            detail.update(trace_ref=traced[0], trace_key=traced[1])
        skew = self.max_clock_skew_s
        if max(c.iat, c.valid_from) > now_wall + skew:
            return CodeVerdict(CodeStatus.INVALID, None, "not_yet_valid", SOURCE, ref, detail)
        if expires < now_wall - skew:
            return CodeVerdict(CodeStatus.EXPIRED, c.colour, "expired", SOURCE, ref, detail)
        if c.refresh_s is not None and now_wall - c.iat > c.refresh_s + self.dynamic_grace_s:
            # A dynamic code re-issued by the phone every refresh_s: one this old is a screenshot.
            return CodeVerdict(CodeStatus.INVALID, None, "stale_dynamic", SOURCE, ref, detail)
        return CodeVerdict(CodeStatus.VALID, c.colour, "ok", SOURCE, ref, detail)


def _verdict(status: CodeStatus, reason: str, **detail: Any) -> CodeVerdict:
    return CodeVerdict(status, None, reason, SOURCE, None, dict(detail))
