"""Health codes: structure-aware HC1 (Base45 → zlib → COSE_Sign1 → CWT) payloads, the code judge, trust lists.

The strategies build the containers a hostile phone could show, layer by layer: any CBOR value (huge and
negative integers, NaN/±inf, bytes, text, arrays, maps with odd keys, tags, simple values, undefined, deep
nesting) in every COSE header and claim slot, COSE arrays of the wrong length, tags other than 18 or nested,
truncated containers, zlib bombs and broken streams, Base45 and prefix mutations. Many cases carry a *valid
signature by a trusted test key* over hostile claims, so the claims parser is really reached.

Each call returns the verdict's reason and raises when a property breaks (counted as uncaught by
``bench.fuzz``): a verdict ``valid`` whose signed bytes are not ones the trusted test key signed, a valid
verdict out of date, or a verifier's ``malformed`` backstop catching an exception (the lane survives it,
but it is a parser bug to fix). ``tests/test_hc1_fuzz.py`` uses the same strategies.
"""

from __future__ import annotations

import base64
import functools
import json
import math
import random
import re
import shutil
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
import numpy as np
from hypothesis import strategies as st

from bench.fuzz_targets.base import Target
from sim.issuer import Issuer, new_issuer
from station.codes import hc1
from station.codes.colour import ScreenColourVerifier
from station.codes.judge import CodeJudge, SeenCodes
from station.codes.local_claims import LocalClaimsVerifier
from station.codes.online import OnlineVerifier
from station.codes.trust_list import (
    TrustListError,
    certificate_entry,
    load_file,
    sign_document,
    verify_document,
)
from station.domain.model import Box, CodeStatus, CodeVerdict, DecodedCode

NOW = 1_795_600_000  # 2026-11-24; every "good" time claim is drawn around it
SKEW_S = 300.0


# --------------------------------------------------------------------------------------------- keys


@dataclass(frozen=True)
class World:
    """The test signers (ES256 and PS256, both trusted), one untrusted signer, the trust-list signer."""

    es: Issuer
    ps: Issuer
    stranger: Issuer
    list_signer: Any
    keys: dict[bytes, Any] = field(default_factory=dict)

    def trust(self, kid: bytes) -> Any:
        return self.keys.get(kid)


@functools.lru_cache(maxsize=1)
def world() -> World:
    """Made once per process: RSA key generation is the slow part."""
    from cryptography.hazmat.primitives.asymmetric import ec

    es, ps = new_issuer("ES256", "FUZZ-ES"), new_issuer("PS256", "FUZZ-PS")
    w = World(es, ps, new_issuer("ES256", "FUZZ-STRANGER"), ec.generate_private_key(ec.SECP256R1()))
    for issuer in (es, ps):
        w.keys[issuer.kid] = issuer.key.public_key()
    return w


# --------------------------------------------------------------------------------------------- CBOR values

HUGE_INTS = [2**63 - 1, 2**63, 2**64 - 1, 2**64, 2**64 + 1, -(2**64), -(2**64) - 1, 2**200, -(2**1000)]
ODD_FLOATS = [math.nan, math.inf, -math.inf, -0.0, 5e-324, 1.7976931348623157e308, 1e20, -1.0]


def _bignum_bytes(seed: int) -> bytes:
    """~2000 bytes from one drawn number (drawing 2000 bytes one by one is what makes a strategy slow)."""
    return random.Random(seed).randbytes(1800 + seed % 300)


@functools.lru_cache(maxsize=1)
def _leaves() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.integers(-(2**70), 2**70),
        st.sampled_from(HUGE_INTS),
        st.integers(-10, 10),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from(ODD_FLOATS),
        st.binary(max_size=40),
        st.text(max_size=20),
        st.sampled_from(["green", "yellow", "red", "GREEN", "", "\u202egreen", "gr\x00een", "\U0001f7e2"]),
        st.booleans(),
        st.none(),
        st.just(cbor2.undefined),
        st.one_of(st.integers(0, 19), st.integers(32, 255)).map(cbor2.CBORSimpleValue),
        # A bignum (tag 2/3) of ~5000 decimal digits: past Python's int→str limit, built as bytes so that
        # Hypothesis itself never has to print it.
        st.builds(cbor2.CBORTag, st.sampled_from([2, 3]), st.integers(0, 2**32 - 1).map(_bignum_bytes)),
    )


@functools.lru_cache(maxsize=1)
def _keys() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.integers(-300, 300),
        st.sampled_from(HUGE_INTS[:6]),
        st.text(max_size=6),
        st.binary(max_size=6),
        st.booleans(),
        st.none(),
        st.floats(allow_nan=True),
    )


@functools.cache  # built once per size: building a recursive strategy is the slow part
def cbor_values(max_leaves: int = 12) -> st.SearchStrategy[Any]:
    """Any CBOR data item: scalars, arrays, maps with odd keys, tags (known, unknown, nested)."""
    return st.recursive(
        _leaves(),
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(_keys(), children, max_size=4),
            st.builds(
                cbor2.CBORTag,
                st.one_of(st.sampled_from([0, 1, 2, 3, 4, 5, 18, 24, 30, 32, 35, 37, 61, 258, 55799]), st.integers(0, 2**64 - 1)),
                children,
            ),
        ),
        max_leaves=max_leaves,
    )


def deep(depth: int, kind: str) -> Any:
    """Nesting as Python objects (for JSON documents; CBOR of this depth is :func:`deep_cbor`)."""
    value: Any = 0
    for _ in range(depth):
        value = [value] if kind == "list" else {1: value} if kind == "map" else cbor2.CBORTag(18, value)
    return value


def deep_cbor(depth: int, kind: str) -> bytes:
    """Return encoded nesting deeper than cbor2 will encode (it stops at 400): one-element arrays, maps or tag-18 chains."""
    head = {"list": b"\x81", "map": b"\xa1\x01", "tag": b"\xd2"}[kind]
    return head * depth + b"\x00"


def _dumps(value: Any) -> bytes:
    """CBOR of a drawn value; the rare value cbor2 refuses to encode becomes an (also hostile) raw byte string."""
    try:
        return cbor2.dumps(value)
    except (ValueError, TypeError, OverflowError, RecursionError, cbor2.CBOREncodeError):
        return b"\x9f" * 8  # indefinite arrays, never closed


@functools.lru_cache(maxsize=1)
def cbor_bytes() -> st.SearchStrategy[bytes]:
    """Generate encoded CBOR: any value, deep nesting, or raw bytes (not CBOR at all)."""
    return st.one_of(
        cbor_values().map(_dumps),
        st.tuples(st.integers(380, 420) | st.integers(1000, 3000), st.sampled_from(["list", "map", "tag"])).map(lambda dk: deep_cbor(*dk)),
        st.binary(max_size=64),
    )


# --------------------------------------------------------------------------------------------- HC1 cases

_DELETE = object()  # a claim slot drawn to be left out


@dataclass(frozen=True)
class Hc1Case:
    """A payload and what the strategy knows of it: the (protected, payload, signature) a trusted key signed."""

    payload: bytes | str
    signed: tuple[bytes, bytes, bytes] | None = None
    note: str = ""

    def __repr__(self) -> str:  # bench samples show this: short, and the layers that made it
        return f"Hc1Case({self.note!r}, {self.payload[:160]!r}{'…' if len(self.payload) > 160 else ''})"


def _good_claims(draw: Any) -> dict[Any, Any]:
    iat = NOW - draw(st.integers(-600, 86400))
    return hc1.health_claims(
        draw(st.sampled_from(["green", "yellow", "red"])),
        iat=iat,
        exp=iat + draw(st.integers(-100, 7 * 86400)),
        issuer="FUZZ",
        refresh_s=draw(st.none() | st.integers(1, 600)),
        holder=draw(st.none() | st.text(max_size=12)),
    )


@st.composite
def hostile_claims(draw: Any) -> Any:
    """Draw a CWT claims value: a good map with hostile values in some slots, an EU-style map, or no map at all."""
    how = draw(st.sampled_from(["slots", "slots", "slots", "eu", "not_a_map", "good"]))
    if how == "not_a_map":
        return draw(cbor_values())
    claims: dict[Any, Any] = _good_claims(draw)
    if how == "good":
        return claims
    if how == "eu":
        del claims[hc1.HEALTH_CLAIM]
        claims[hc1.EU_HCERT_CLAIM] = draw(_EU_CLAIMS)
    health = claims.get(hc1.HEALTH_CLAIM)
    health = dict(health) if isinstance(health, dict) else health
    for slot in draw(
        st.lists(st.sampled_from(["iss", "iat", "exp", "health", "h1", "h2", "h3", "h4", "h5", "key"]), min_size=1, max_size=3)
    ):
        value = draw(cbor_values(6))
        if draw(st.integers(0, 4)) == 0:
            value = _DELETE
        if slot == "key":
            claims[draw(_keys())] = value
        elif slot in ("iss", "iat", "exp", "health"):
            key = {"iss": hc1.CWT_ISS, "iat": hc1.CWT_IAT, "exp": hc1.CWT_EXP, "health": hc1.HEALTH_CLAIM}[slot]
            claims[key] = value
        elif isinstance(health, dict):
            health[int(slot[1])] = value
    if isinstance(health, dict) and isinstance(claims.get(hc1.HEALTH_CLAIM), dict):
        claims[hc1.HEALTH_CLAIM] = {k: v for k, v in health.items() if v is not _DELETE}
    return {k: v for k, v in claims.items() if v is not _DELETE}


_ODD_ALGS = cbor_values(4) | st.sampled_from([[-7], {1: -7}, -7.0, True, 2**64, -(2**70)])
_ODD_KIDS = cbor_values(4) | st.sampled_from([b"", b"x" * 33, "kid", [b"12345678"], 7])
_NOT_MAPS = cbor_values(4).filter(lambda v: not isinstance(v, dict))
_EU_CLAIMS = st.sampled_from([{1: {"ver": "1.3.0"}}, {}, {1: []}, [1]]) | cbor_values(4)


@st.composite
def headers(draw: Any, kid: bytes, alg: int) -> tuple[bytes, Any]:
    """(protected bytes, unprotected map): right, or with any CBOR value in the alg / kid slots of either."""
    how = draw(
        st.sampled_from(
            [
                "good",
                "good",
                "good",
                "kid_unprotected",
                "alg_slot",
                "kid_slot",
                "protected_raw",
                "protected_not_map",
                "unprotected_not_map",
                "extra",
                "empty",
            ]
        )
    )
    protected: Any = {hc1.H_ALG: alg, hc1.H_KID: kid}
    unprotected: Any = {}
    if how == "kid_unprotected":
        del protected[hc1.H_KID]
        unprotected[hc1.H_KID] = kid
    elif how == "alg_slot":
        protected[hc1.H_ALG] = draw(_ODD_ALGS)
    elif how == "kid_slot":
        value = draw(_ODD_KIDS)
        if draw(st.booleans()):
            protected[hc1.H_KID] = value
        else:
            del protected[hc1.H_KID]
            unprotected[hc1.H_KID] = value
    elif how == "extra":
        protected[draw(_keys())] = draw(cbor_values(4))
        unprotected = draw(st.dictionaries(_keys(), cbor_values(4), max_size=3))
    elif how == "empty":
        protected, unprotected = {}, {hc1.H_ALG: alg, hc1.H_KID: kid}
    if how == "protected_raw":
        return draw(cbor_bytes()), unprotected
    if how == "protected_not_map":
        return _dumps(draw(_NOT_MAPS)), unprotected
    if how == "unprotected_not_map":
        unprotected = draw(_NOT_MAPS)
    return (_dumps(protected) if protected else b""), unprotected


# Every (protected, payload, signature) the strategies signed with a key on the trust list. "Valid"
# must mean exactly "one of these": mutations that leave the signed bytes intact (bytes after the
# zlib stream, the self-describe CBOR tag) may stay valid, anything else may not.
TRUSTED_SIGNED: set[tuple[bytes, bytes, bytes]] = set()


@functools.lru_cache(maxsize=4096)
def _sign(signer_kind: str, tbs: bytes) -> bytes:
    """ECDSA and PSS signatures are randomised; Hypothesis needs the same bytes when it replays a case."""
    w = world()
    if signer_kind == "ps":
        return hc1.sign_ps256(w.ps.key, tbs)
    return hc1.sign_es256((w.stranger if signer_kind == "stranger" else w.es).key, tbs)


@st.composite
def cose_containers(draw: Any) -> tuple[bytes, tuple[bytes, bytes, bytes] | None, str]:
    """CBOR bytes of a COSE_Sign1 (signed by a trusted key, an untrusted one, or not at all) or a misshapen one."""
    w = world()
    signer_kind = draw(st.sampled_from(["es", "es", "es", "ps", "stranger", "forged"]))
    issuer = {"es": w.es, "ps": w.ps, "stranger": w.stranger, "forged": w.es}[signer_kind]
    alg = hc1.ALG_ES256 if signer_kind != "ps" else hc1.ALG_PS256
    protected, unprotected = draw(headers(issuer.kid, alg))
    claims = draw(hostile_claims())
    payload = _dumps(claims) if draw(st.integers(0, 9)) else draw(cbor_bytes())
    tbs = hc1.sig_structure(protected, payload)
    if signer_kind == "forged":
        signature = draw(st.binary(min_size=64, max_size=64) | st.binary(max_size=80))
    else:
        signature = _sign(signer_kind, tbs)
    signed = (protected, payload, signature) if signer_kind in ("es", "ps") else None
    if signed is not None:
        TRUSTED_SIGNED.add(signed)
    parts: list[Any] = [protected, unprotected, payload, signature]
    shape = draw(st.sampled_from(["ok"] * 6 + ["short", "long", "slot_type", "array_of_any", "not_array"]))
    if shape == "short":
        parts = parts[: draw(st.integers(0, 3))]
    elif shape == "long":
        parts += draw(st.lists(cbor_values(3), min_size=1, max_size=3))
    elif shape == "slot_type":
        parts[draw(st.integers(0, 3))] = draw(cbor_values(4))
    elif shape == "array_of_any":
        parts = draw(st.lists(cbor_values(4), max_size=6))
    body: Any = parts if shape != "not_array" else draw(cbor_values())
    tags = draw(st.sampled_from(["18", "18", "none", "61+18", "61", "other", "18+18", "55799+18"]))
    if tags == "18":
        body = cbor2.CBORTag(hc1.COSE_SIGN1_TAG, body)
    elif tags == "61+18":
        body = cbor2.CBORTag(hc1.CWT_TAG, cbor2.CBORTag(hc1.COSE_SIGN1_TAG, body))
    elif tags == "61":
        body = cbor2.CBORTag(hc1.CWT_TAG, body)
    elif tags == "other":
        body = cbor2.CBORTag(draw(st.integers(0, 2**64 - 1).filter(lambda t: t not in (18, 61))), body)
    elif tags == "18+18":
        body = cbor2.CBORTag(18, cbor2.CBORTag(18, body))
    elif tags == "55799+18":
        body = cbor2.CBORTag(55799, cbor2.CBORTag(18, body))
    raw = _dumps(body)
    note = f"{signer_kind}/{shape}/{tags}"
    cut = draw(st.sampled_from(["none"] * 8 + ["truncate", "flip"]))
    if cut == "truncate" and raw:
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    elif cut == "flip" and raw:
        i = draw(st.integers(0, len(raw) - 1))
        raw = raw[:i] + bytes([raw[i] ^ draw(st.integers(1, 255))]) + raw[i + 1 :]
    return raw, signed if shape == "ok" else None, note + ("/" + cut if cut != "none" else "")


@functools.lru_cache(maxsize=64)
def _compress(raw: bytes, level: int) -> bytes:
    return zlib.compress(raw, level)  # cached: the same bombs come back often


B45_NOISE = st.sampled_from(["a", "{", "\u00e9", "\x00", "=", "~", "::", " ", "\ud800", "\U0001f600", "HC1:"])


@st.composite
def hc1_cases(draw: Any) -> Hc1Case:
    """Draw a whole ``HC1:`` payload: a COSE container (or any CBOR) through zlib, Base45 and the prefix, each layer mutated."""
    what = draw(st.sampled_from(["cose"] * 8 + ["cbor", "bomb"]))
    signed: tuple[bytes, bytes, bytes] | None = None
    if what == "cose":
        raw, signed, note = draw(cose_containers())
    elif what == "cbor":
        raw, note = draw(cbor_bytes()), "cbor"
    else:
        raw, note = b"\x00" * draw(st.sampled_from([hc1.MAX_INFLATED - 1, hc1.MAX_INFLATED + 1, 10**6])), "bomb"
    z = draw(st.sampled_from(["zlib"] * 8 + ["raw", "truncate", "flip", "trailing", "level0"]))
    packed = _compress(raw, 0 if z == "level0" else 9) if z != "raw" else raw
    if z == "truncate":
        packed = packed[: draw(st.integers(0, max(0, len(packed) - 1)))]
    elif z == "flip" and packed:
        i = draw(st.integers(0, len(packed) - 1))
        packed = packed[:i] + bytes([packed[i] ^ draw(st.integers(1, 255))]) + packed[i + 1 :]
    elif z == "trailing":
        packed += draw(st.binary(min_size=1, max_size=8))
    if z in ("raw", "truncate", "flip"):
        signed = None  # (trailing bytes after the zlib stream are ignored: the signed bytes stay intact)
    text = hc1.b45encode(packed)
    b = draw(st.sampled_from(["ok"] * 8 + ["cut", "noise", "lower", "dangling"]))
    if b == "cut" and text:
        text = text[: draw(st.integers(0, len(text) - 1))]
        signed = None
    elif b == "noise":
        i = draw(st.integers(0, len(text)))
        text = text[:i] + draw(B45_NOISE) + text[i:]
        signed = None
    elif b == "lower":
        text = text.lower()
        signed = None if text != text.upper() else signed
    elif b == "dangling":
        text += "A"
        signed = None
    prefix = draw(st.sampled_from(["HC1:"] * 10 + ["", "HC1", "hc1:", "HC2:", " HC1:", "HC1:\n", "\ufeffHC1:"]))
    payload: bytes | str = (prefix + text).encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 9)) == 0:
        payload = prefix + text  # a reader that hands over text
    return Hc1Case(payload, signed if prefix.strip() == "HC1:" else None, f"{note}/{z}/{b}/{prefix!r}")


# --------------------------------------------------------------------------------------------- properties


class PropertyBroken(AssertionError):
    """A verdict that breaks a property (fuzz finds it as an uncaught exception)."""


def check_hc1(case: Hc1Case, verdict: CodeVerdict, now: float = NOW) -> str:
    """Check the properties every HC1 verdict must hold; return the reason."""
    if not isinstance(verdict, CodeVerdict) or verdict.reason not in hc1.REASONS:
        raise PropertyBroken(f"not a verdict with a known reason: {verdict!r}")
    if verdict.reason == "malformed":
        raise PropertyBroken(f"the verifier's backstop caught {verdict.detail.get('error')}: a parser bug")
    if verdict.status is CodeStatus.VALID:
        text = case.payload.decode("ascii") if isinstance(case.payload, bytes) else case.payload
        msg = hc1.unwrap(text.strip())
        if (msg.protected, msg.payload, msg.signature) not in TRUSTED_SIGNED:
            raise PropertyBroken("valid, but not bytes a trusted key signed")
        d = verdict.detail
        if not (d["iat"] <= now + SKEW_S and d["expires"] >= now - SKEW_S):
            raise PropertyBroken(f"valid out of date: iat={d['iat']} expires={d['expires']}")
        if verdict.colour is None and d.get("colour") is not None:
            raise PropertyBroken("colour in the detail but not in the verdict")
    return verdict.reason


@functools.lru_cache(maxsize=1)
def hc1_verifier() -> hc1.Hc1Verifier:
    return hc1.Hc1Verifier(world().trust, max_clock_skew_s=SKEW_S)


# --------------------------------------------------------------------------------------------- code judge

HCODE_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from(HUGE_INTS[:8])
    | st.floats(allow_nan=True)
    | st.text(max_size=12)
    | st.sampled_from(["green", "red", "yellow"]),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(["v", "col", "iat", "exp", "sub", "iss", "x"]), c, max_size=6),
    max_leaves=10,
)


def _json_text(value: Any) -> bytes:
    try:
        return json.dumps(value).encode()
    except (ValueError, TypeError, RecursionError):
        return b"[" * 3000


@st.composite
def hcode1_payloads(draw: Any) -> bytes:
    """``HCODE1:`` + base64url(JSON): well-formed claims with hostile values, any JSON, deep nesting, not base64."""
    how = draw(st.sampled_from(["claims", "claims", "json", "deep", "raw"]))
    if how == "claims":
        claims: dict[str, Any] = {"v": 1, "col": "green", "iat": NOW - 60, "exp": NOW + 3600, "sub": "s"}
        for key in draw(st.lists(st.sampled_from(list(claims) + ["iss"]), max_size=3)):
            claims[key] = draw(HCODE_JSON)
        body = _json_text(claims)
        if draw(st.booleans()):
            body = body.replace(
                b'"exp": ' + str(NOW + 3600).encode(),
                b'"exp": ' + draw(st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e999", b"9" * 5000])),
            )
    elif how == "json":
        body = _json_text(draw(HCODE_JSON))
    elif how == "deep":
        body = b"[" * draw(st.integers(900, 5000)) + b"]" * draw(st.integers(0, 10))
    else:
        raw: bytes = draw(st.binary(max_size=40))
        return b"HCODE1:" + raw
    return b"HCODE1:" + base64.urlsafe_b64encode(body).rstrip(b"=")


def hct1_payloads() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.text(alphabet="ABCxyz019_-", min_size=0, max_size=140).map(lambda t: "HCT1:" + t),
        st.text(max_size=20).map(lambda t: "HCT1:" + t),
        st.binary(max_size=30).map(lambda b: b"HCT1:" + b),
    )


@st.composite
def images(draw: Any) -> Any:
    """Draw a frame of any shape and dtype (or not an array), as a reader's box might sit on it."""
    how = draw(st.sampled_from(["colour", "colour", "grey", "rgba", "float", "uint16", "int64", "empty", "1d", "none"]))
    h, w = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if how == "none":
        return None
    if how == "empty":
        return np.zeros((0, w, 3), np.uint8)
    if how == "1d":
        return np.zeros(w, np.uint8)
    if how == "grey":
        return rng.integers(0, 256, (h, w), dtype=np.uint8)
    if how == "rgba":
        return rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    if how == "float":
        noisy = rng.normal(0.5, 2.0, (h, w, 3))
        noisy[0, 0, 0] = np.nan
        return noisy
    if how == "uint16":
        return rng.integers(0, 65536, (h, w, 3), dtype=np.uint16)
    if how == "int64":
        return rng.integers(-5, 5, (h, w, 3), dtype=np.int64)
    colour = np.array(draw(st.sampled_from([(0, 0, 255), (0, 200, 0), (0, 220, 255), (128, 128, 128)])), np.uint8)
    return np.broadcast_to(colour, (h, w, 3)).copy()


COORDS = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-50, 60).map(float)


@st.composite
def judge_cases(draw: Any) -> tuple[DecodedCode, Any, Hc1Case | None]:
    """Draw what a reader could hand the judge: HC1, HCT1, HCODE1 payloads, random bytes or text, with a frame and box."""
    kind = draw(st.sampled_from(["hc1", "hc1", "hct1", "hcode1", "bytes", "text"]))
    case: Hc1Case | None = None
    if kind == "hc1":
        case = draw(hc1_cases())
        payload: Any = case.payload
    elif kind == "hct1":
        payload = draw(hct1_payloads())
    elif kind == "hcode1":
        payload = draw(hcode1_payloads())
    elif kind == "bytes":
        payload = draw(st.binary(max_size=200))
    else:
        payload = draw(st.text(max_size=60))
    box = draw(st.none() | st.builds(Box, COORDS, COORDS, COORDS, COORDS))
    return DecodedCode(payload, "QRCODE", box, "fuzz"), draw(images()), case


@functools.lru_cache(maxsize=1)
def code_judge() -> CodeJudge:
    """Return the station's chain with every verifier (the online one has no broker: it must still answer)."""
    verifiers = [hc1_verifier(), OnlineVerifier("fuzz/station"), LocalClaimsVerifier(max_clock_skew_s=SKEW_S), ScreenColourVerifier()]
    return CodeJudge(verifiers, salt=b"f" * 32, seen=SeenCodes(None), replay_window_s=0.0)


def check_judge(code: DecodedCode, case: Hc1Case | None, verdict: CodeVerdict) -> str:
    if not isinstance(verdict, CodeVerdict) or not isinstance(verdict.reason, str):
        raise PropertyBroken(f"not a verdict: {verdict!r}")
    if verdict.reason == "malformed":
        raise PropertyBroken(f"a verifier's backstop caught {verdict.detail.get('error')}: a bug")
    if "payload_hash" not in verdict.detail:
        raise PropertyBroken("no salted hash on the verdict")
    if verdict.status is CodeStatus.VALID:
        if verdict.source == "hc1":
            check_hc1(case or Hc1Case(code.payload), verdict)
        elif verdict.source == "screen_colour" and verdict.colour is not None and verdict.colour.value != "red":
            raise PropertyBroken("a screen colour other than red was taken as valid")
        elif verdict.source not in ("local_unsigned", "screen_colour"):
            raise PropertyBroken(f"valid from {verdict.source}")
    return f"{verdict.source}:{verdict.reason}"


# --------------------------------------------------------------------------------------------- trust lists

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.sampled_from(HUGE_INTS) | st.floats(allow_nan=True) | st.text(max_size=16),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
    max_leaves=8,
)


@dataclass(frozen=True)
class TrustCase:
    document: Any
    as_file: str  # "" = verify_document only; "plain" / "stored" = also written and loaded as a file
    signed: bool = False  # signed with the trust-list key by the strategy: the only documents that may be accepted

    def __repr__(self) -> str:
        return f"TrustCase({self.as_file!r}, {repr(self.document)[:300]})"


@st.composite
def trust_entries(draw: Any) -> Any:
    w = world()
    good = [certificate_entry(w.es.cert_der), certificate_entry(w.ps.cert_der)]
    how = draw(st.sampled_from(["good", "good", "wrong_kid", "truncated_der", "not_base64", "types", "any"]))
    entry: Any = dict(draw(st.sampled_from(good)))
    if how == "wrong_kid":
        entry["kid"] = certificate_entry(w.stranger.cert_der)["kid"]
    elif how == "truncated_der":
        der = base64.b64decode(entry["der"])
        entry = certificate_entry(der[: draw(st.integers(0, len(der) - 1))])
    elif how == "not_base64":
        entry[draw(st.sampled_from(["der", "kid"]))] = draw(st.text(max_size=20))
    elif how == "types":
        entry[draw(st.sampled_from(["der", "kid"]))] = draw(JSON_VALUES)
    elif how == "any":
        entry = draw(JSON_VALUES)
    return entry


@st.composite
def trust_cases(draw: Any) -> TrustCase:
    """Draw a pushed trust-list document: signed by the trust-list key (so the entries are parsed) or not, any shape."""
    w = world()
    certificates: Any = draw(st.lists(trust_entries(), max_size=4))
    if draw(st.integers(0, 9)) == 0:
        certificates = draw(JSON_VALUES | st.just(deep(3000, "list")))
    version: Any = draw(st.integers(1, 100) | JSON_VALUES)
    how = draw(st.sampled_from(["signed", "signed", "unsigned", "bad_signature", "any"]))
    doc: Any
    signed = False
    if how == "signed":
        try:
            doc, signed = sign_document(certificates, version, w.list_signer), True
        except TrustListError:
            doc = {"version": version, "certificates": certificates, "signature": "AAAA"}
    elif how == "bad_signature":
        doc = {"version": version, "certificates": certificates, "signature": draw(JSON_VALUES)}
    elif how == "unsigned":
        doc = {"version": version, "certificates": certificates}
    else:
        doc = draw(JSON_VALUES)
    return TrustCase(doc, draw(st.sampled_from(["", "", "plain", "stored"])), signed)


_TMP: dict[str, Path] = {}


def _keys_setup() -> None:
    world()


def _trust_setup() -> None:
    _keys_setup()
    _TMP["dir"] = Path(tempfile.mkdtemp(prefix="fuzz-trust-"))


def _trust_teardown() -> None:
    shutil.rmtree(_TMP.pop("dir", Path("/nonexistent")), ignore_errors=True)


def _label(exc: TrustListError) -> str:
    return "refused:" + re.sub(r"\d+", "N", str(exc).split(": ", 1)[-1])[:40]


def trust_call(case: TrustCase) -> str:
    w = world()
    try:
        keys = verify_document(case.document, w.list_signer.public_key())
        label = f"accepted:{len(keys)}"
    except TrustListError as exc:
        label = _label(exc)
    else:
        if not case.signed:
            raise PropertyBroken("a document the trust-list key did not sign was accepted")
    if case.as_file:
        folder = _TMP.get("dir") or Path(tempfile.mkdtemp(prefix="fuzz-trust-"))
        _TMP["dir"] = folder
        body = case.document if case.as_file == "plain" else {"signature_verified": True, "document": case.document}
        path = folder / "list.json"
        try:
            path.write_text(json.dumps(body))
        except (ValueError, TypeError, RecursionError):
            path.write_text("[" * 5000)
        try:
            loaded = load_file(path)
            label += f"/file:{len(loaded.keys)}"
        except TrustListError as exc:
            label += "/file-" + _label(exc)
    return label


# --------------------------------------------------------------------------------------------- targets


def _hc1_call(case: Hc1Case) -> str:
    return check_hc1(case, hc1_verifier().verify(case.payload, NOW))


def _judge_call(value: tuple[DecodedCode, Any, Hc1Case | None]) -> str:
    code, image, case = value
    return check_judge(code, case, code_judge().verify_in_frame(code, image, NOW))


TARGETS = [
    Target(
        "hc1-verify",
        "HC1 verifier over structured payloads: every CBOR type in every COSE header and claim slot, "
        "signed by trusted / untrusted / no key, zlib and Base45 mutations",
        hc1_cases,
        _hc1_call,
        setup=_keys_setup,
    ),
    Target(
        "code-judge",
        "CodeJudge (hc1, online, local claims, screen colour) over HC1, HCT1, HCODE1 payloads, random "
        "bytes and text, with frames of any shape and dtype and boxes with NaN/inf",
        judge_cases,
        _judge_call,
        setup=_keys_setup,
    ),
    Target(
        "trust-list",
        "Trust-list documents (signed and not, any JSON in every slot) through verify_document and load_file",
        trust_cases,
        trust_call,
        setup=_trust_setup,
        teardown=_trust_teardown,
    ),
]
