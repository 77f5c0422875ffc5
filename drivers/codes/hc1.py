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
(:mod:`drivers.codes.trust_list`). A code signed by a key not in the list is ``unknown_kid``, never
a pass.

Each way a payload can fail has its own reason code (``REASONS``); the verifier never raises on
hostile input.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from station.domain.model import CodeColour, CodeStatus, CodeVerdict

PREFIX = "HC1:"
SOURCE = "hc1"
HEALTH_CLAIM = -262
CWT_ISS, CWT_EXP, CWT_IAT = 1, 4, 6
H_ALG, H_KID = 1, 4
ALG_ES256, ALG_PS256 = -7, -37
ALG_NAMES = {ALG_ES256: "ES256", ALG_PS256: "PS256"}
COSE_SIGN1_TAG = 18
MAX_PAYLOAD = 4096  # a QR holds < 3 kB; anything longer is not a phone screen
MAX_INFLATED = 16384  # zlib bomb guard

REASONS = (
    "ok", "unknown_format", "garbage", "bad_base45", "truncated", "bad_zlib", "not_cose", "unsupported_alg",
    "no_kid", "unknown_kid", "bad_signature", "bad_claims", "expired", "not_yet_valid", "stale_dynamic", "replay",
)

# --------------------------------------------------------------------------------------------- Base45

B45 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"
_B45_INDEX = {c: i for i, c in enumerate(B45)}


class Base45Error(ValueError):
    """Not Base45; ``truncated`` when the length is one that no encoder produces (a cut-off string)."""

    def __init__(self, message: str, truncated: bool = False) -> None:
        super().__init__(message)
        self.truncated = truncated


def b45encode(data: bytes) -> str:
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
    """The HC1 key id: first 8 bytes of the SHA-256 of the signer's DER certificate."""
    return hashlib.sha256(cert_der).digest()[:8]


def _verify_signature(public_key: Any, alg: int, to_be_signed: bytes, signature: bytes) -> bool:
    try:
        if alg == ALG_ES256:
            if not isinstance(public_key, ec.EllipticCurvePublicKey) or len(signature) != 64:
                return False
            der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
            public_key.verify(der, to_be_signed, ec.ECDSA(hashes.SHA256()))
            return True
        if alg == ALG_PS256:
            if not isinstance(public_key, rsa.RSAPublicKey):
                return False
            # RFC 8230: PSS with SHA-256, MGF1 SHA-256, salt length = hash length.
            public_key.verify(signature, to_be_signed, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
            return True
    except InvalidSignature:
        return False
    return False


def sig_structure(protected: bytes, payload: bytes) -> bytes:
    return cbor2.dumps(["Signature1", protected, b"", payload])


def sign_es256(private_key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(private_key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def sign_ps256(private_key: rsa.RSAPrivateKey, data: bytes) -> bytes:
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
    colour: CodeColour | str, *, iat: int, exp: int, issuer: str, valid_from: int | None = None,
    valid_until: int | None = None, refresh_s: int | None = None, holder: str | None = None,
    extra: Mapping[Any, Any] | None = None,
) -> dict[int, Any]:
    """A CWT claims map with our health claim (``extra`` adds fields to the health claim, e.g. the
    personal fields other issuers put there, which the verifier must drop)."""
    health: dict[Any, Any] = {1: CodeColour(colour).value, 2: int(valid_from if valid_from is not None else iat),
                              3: int(valid_until if valid_until is not None else exp)}
    if refresh_s is not None:
        health[4] = int(refresh_s)
    if holder is not None:
        health[5] = holder
    health.update(extra or {})
    return {CWT_ISS: issuer, CWT_IAT: int(iat), CWT_EXP: int(exp), HEALTH_CLAIM: health}


# --------------------------------------------------------------------------------------------- decode


class DecodeError(ValueError):
    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(message or reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Hc1Claims:
    """What the station keeps of a code: no personal field has a place here."""

    issuer: str
    iat: int
    exp: int
    colour: CodeColour
    valid_from: int
    valid_until: int
    refresh_s: int | None
    holder: str | None  # in memory only, hashed with the station's salt before anything records it


@dataclass(frozen=True, slots=True)
class Hc1Message:
    alg: int
    kid: bytes
    protected: bytes
    payload: bytes
    signature: bytes

    def to_be_signed(self) -> bytes:
        return sig_structure(self.protected, self.payload)


def unwrap(text: str) -> Hc1Message:
    """``HC1:…`` → the COSE_Sign1 parts, or :class:`DecodeError` with the reason code."""
    if not text.startswith(PREFIX):
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
    try:
        obj = cbor2.loads(raw)
    except cbor2.CBORDecodeEOF:
        raise DecodeError("truncated", "CBOR ends early") from None
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise DecodeError("not_cose", f"not CBOR: {exc}") from None
    if isinstance(obj, cbor2.CBORTag):
        if obj.tag != COSE_SIGN1_TAG:
            raise DecodeError("not_cose", f"CBOR tag {obj.tag}, not COSE_Sign1")
        obj = obj.value
    if not (isinstance(obj, (list, tuple)) and len(obj) == 4):
        raise DecodeError("not_cose", "not a 4-element COSE_Sign1 array")
    protected, unprotected, payload, signature = obj
    if not (isinstance(protected, bytes) and isinstance(unprotected, Mapping) and isinstance(payload, bytes)
            and isinstance(signature, bytes)):
        raise DecodeError("not_cose", "COSE_Sign1 element of the wrong type")
    try:
        header = cbor2.loads(protected) if protected else {}
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError):
        raise DecodeError("not_cose", "protected header is not CBOR") from None
    if not isinstance(header, Mapping):
        raise DecodeError("not_cose", "protected header is not a map")
    alg = header.get(H_ALG)
    if alg not in ALG_NAMES:
        raise DecodeError("unsupported_alg", f"alg {alg!r}")
    kid = header.get(H_KID, unprotected.get(H_KID))
    if not isinstance(kid, bytes) or not kid:
        raise DecodeError("no_kid")
    return Hc1Message(alg, kid, protected, payload, signature)


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DecodeError("bad_claims", "a time claim is not an integer")
    return value


def parse_claims(payload: bytes) -> Hc1Claims:
    try:
        claims = cbor2.loads(payload)
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError):
        raise DecodeError("bad_claims", "CWT payload is not CBOR") from None
    if not isinstance(claims, Mapping):
        raise DecodeError("bad_claims", "CWT payload is not a map")
    health = claims.get(HEALTH_CLAIM)
    if not isinstance(health, Mapping) or CWT_IAT not in claims or CWT_EXP not in claims:
        raise DecodeError("bad_claims", "missing iat, exp or the health claim")
    try:
        colour = CodeColour(health.get(1))
    except (ValueError, TypeError):
        raise DecodeError("bad_claims", "unknown colour") from None
    iat, exp = _int(claims[CWT_IAT]), _int(claims[CWT_EXP])
    refresh = health.get(4)
    holder = health.get(5)
    # Only the fields above are copied out; names, birth dates, ID numbers die with ``claims``.
    return Hc1Claims(
        issuer=str(claims.get(CWT_ISS, ""))[:64], iat=iat, exp=exp, colour=colour,
        valid_from=_int(health.get(2, iat)), valid_until=_int(health.get(3, exp)),
        refresh_s=_int(refresh) if refresh is not None else None,
        holder=holder if isinstance(holder, str) else None,
    )


# --------------------------------------------------------------------------------------------- verify


class Hc1Verifier:
    """Judges ``HC1:`` payloads offline against a trust list.

    ``trust`` maps a kid to a public key and is asked on every code, so a list replaced while the
    station runs (pushed over MQTT) is used from the next code on.
    """

    name = "hc1"

    def __init__(self, trust: Callable[[bytes], Any], *, max_clock_skew_s: float = 300.0,
                 dynamic_grace_s: float = 30.0, holder_ref: Callable[[str], str] | None = None) -> None:
        self.trust = trust
        self.max_clock_skew_s = max_clock_skew_s
        self.dynamic_grace_s = dynamic_grace_s
        self.holder_ref = holder_ref or (lambda s: hashlib.sha256(b"checkpoint-holder:" + s.encode()).hexdigest()[:16])

    def verify(self, payload: bytes, now_wall: float) -> CodeVerdict:
        if len(payload) > MAX_PAYLOAD:
            return _verdict(CodeStatus.INVALID, "garbage")
        try:
            text = payload.decode("ascii")
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
        try:
            c = parse_claims(msg.payload)
        except DecodeError as exc:
            return _verdict(CodeStatus.INVALID, exc.reason, **detail)
        expires = min(c.exp, c.valid_until)
        detail.update(issuer=c.issuer, colour=c.colour.value, iat=c.iat, expires=expires)
        if c.refresh_s is not None:
            detail["refresh_s"] = c.refresh_s
        ref = self.holder_ref(c.holder) if c.holder else None
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
