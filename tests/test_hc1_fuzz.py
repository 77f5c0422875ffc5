"""Hostile health codes: every decoder, verifier and guard is total, and "valid" means genuine.

Structure-aware properties over CBOR/COSE (strategies shared with ``python -m bench.fuzz``, in
bench/fuzz_targets/codes.py) plus one regression per hostile slot, each with the reason it must get.
Real keys: containers are signed by a trusted test key, so the claims parser is reached.
"""

from __future__ import annotations

import base64
import functools
import json
import math
import zlib
from pathlib import Path
from typing import Any

import cbor2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.fuzz_targets import codes as fz
from station.codes import hc1
from station.codes.colour import ScreenColourVerifier, ring_colour
from station.codes.judge import CodeJudge
from station.codes.local_claims import LocalClaimsVerifier
from station.codes.online import token_of
from station.codes.trust_list import TrustListError, load_file, verify_document
from station.domain.model import Box, CodeColour, CodeStatus, DecodedCode

NOW = fz.NOW
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def wrap(cose: Any) -> bytes:
    return (hc1.PREFIX + hc1.b45encode(zlib.compress(cbor2.dumps(cose)))).encode()


def signed(protected: dict[Any, Any] | bytes, claims: Any, unprotected: Any = None, *, tag: bool = True) -> bytes:
    """A COSE_Sign1 over ``claims`` with a valid ES256 signature by the trusted test key."""
    w = fz.world()
    prot = protected if isinstance(protected, bytes) else cbor2.dumps(protected)
    payload = claims if isinstance(claims, bytes) else cbor2.dumps(claims)
    sig = hc1.sign_es256(w.es.key, hc1.sig_structure(prot, payload))
    body: Any = [prot, {} if unprotected is None else unprotected, payload, sig]
    return wrap(cbor2.CBORTag(18, body) if tag else body)


def verify(payload: bytes | str) -> Any:
    v = fz.hc1_verifier().verify(payload, NOW)  # type: ignore[arg-type]
    assert "error" not in v.detail, v  # the backstop is for bugs, and none may be left
    return v


def good_claims(over: dict[Any, Any] | None = None) -> dict[Any, Any]:
    claims = hc1.health_claims("green", iat=NOW - 60, exp=NOW + 3600, issuer="T")
    claims.update(over or {})
    return claims


# ------------------------------------------------------------------------------------- the issue's code


def test_the_issues_payload_is_a_verdict_not_a_crash() -> None:
    v = verify(b"HC1:6BFOXN*TS6DIVEC7QCDOCV00+O4L4")  # protected header {1: []}: alg is a list
    assert (v.status, v.reason) == (CodeStatus.INVALID, "unsupported_alg")


# ------------------------------------------------------------------------------------- hostile header slots


@pytest.mark.parametrize(
    ("alg", "reason"),
    [
        ([], "unsupported_alg"),
        ([-7], "unsupported_alg"),
        ({1: -7}, "unsupported_alg"),
        (-7.0, "unsupported_alg"),
        (2**64, "unsupported_alg"),
        (-(2**70), "unsupported_alg"),
        (True, "unsupported_alg"),
        (None, "unsupported_alg"),
        ("ES256", "unsupported_alg"),
        (cbor2.CBORTag(1, 5), "unsupported_alg"),
        (cbor2.undefined, "unsupported_alg"),
    ],
)
def test_alg_of_any_cbor_type(alg: Any, reason: str) -> None:
    kid = fz.world().es.kid
    assert verify(signed({1: alg, 4: kid}, good_claims())).reason == reason


@pytest.mark.parametrize("kid", [7, "kid", [b"12345678"], {1: b"x"}, b"", b"k" * 33, 1.5, None, True])
def test_kid_that_is_not_a_short_byte_string(kid: Any) -> None:
    assert verify(signed({1: -7, 4: kid}, good_claims())).reason == "bad_header"
    assert verify(signed({1: -7}, good_claims(), {4: kid})).reason == "bad_header"


def test_kid_only_in_the_unprotected_header_is_used_and_the_protected_one_wins() -> None:
    w = fz.world()
    assert verify(signed({1: -7}, good_claims(), {4: w.es.kid})).reason == "ok"
    assert verify(signed({1: -7, 4: w.es.kid}, good_claims(), {4: w.stranger.kid})).reason == "ok"
    assert verify(signed({1: -7, 4: w.stranger.kid}, good_claims(), {4: w.es.kid})).reason == "unknown_kid"


@pytest.mark.parametrize(
    "protected", [cbor2.dumps([1, -7]), cbor2.dumps(5), cbor2.dumps("map"), b"\xff\xff", b"\xa2\x01", fz.deep_cbor(500, "map")]
)
def test_protected_header_that_is_not_a_cbor_map(protected: bytes) -> None:
    assert verify(signed(protected, good_claims())).reason == "bad_header"


@pytest.mark.parametrize(
    ("cose", "reason"),
    [
        (cbor2.CBORTag(18, []), "bad_cose_structure"),
        (cbor2.CBORTag(18, [b"", {}, b""]), "bad_cose_structure"),
        (cbor2.CBORTag(18, [b"", {}, b"", b"", b""]), "bad_cose_structure"),
        (cbor2.CBORTag(18, [b"\xa1\x01\x26", {}, "text payload", b"s"]), "bad_cose_structure"),
        (cbor2.CBORTag(18, [b"\xa1\x01\x26", {}, b"p", 5]), "bad_cose_structure"),
        (cbor2.CBORTag(18, [[1], {}, b"p", b"s"]), "bad_header"),
        (cbor2.CBORTag(18, [b"\xa1\x01\x26", [4], b"p", b"s"]), "bad_header"),
        (cbor2.CBORTag(17, [b"", {}, b"", b""]), "not_cose"),  # COSE_Mac0: not ours
        (cbor2.CBORTag(18, cbor2.CBORTag(18, [b"", {}, b"", b""])), "not_cose"),
        (cbor2.CBORTag(61, [b"", {}, b"", b""]), "not_cose"),  # a CWT tag must wrap a COSE tag
        (cbor2.CBORTag(2**64 - 1, 0), "not_cose"),
        ({"a": 1}, "not_cose"),
        (math.nan, "not_cose"),
        (2**70, "not_cose"),
        (cbor2.undefined, "not_cose"),
        (fz.deep_cbor(1000, "list"), "not_cose"),
        (fz.deep_cbor(1000, "tag"), "not_cose"),
        (fz.deep_cbor(1000, "map"), "not_cose"),
        (b"\xd2" * 10 + b"\x84", "truncated"),
    ],
)
def test_cose_arrays_of_the_wrong_shape(cose: Any, reason: str) -> None:
    raw = cose if isinstance(cose, bytes) else cbor2.dumps(cose)
    v = verify((hc1.PREFIX + hc1.b45encode(zlib.compress(raw))).encode())
    assert (v.status, v.reason) == (CodeStatus.INVALID, reason)


# ------------------------------------------------------------------------------------- hostile claims (signed)


@pytest.mark.parametrize(
    "claims",
    [
        [1, 2],
        "claims",
        5,
        b"bytes",
        None,  # not a map
        good_claims({6: math.nan}),
        good_claims({4: math.inf}),
        good_claims({4: -math.inf}),
        good_claims({4: 2**64 + 1}),
        good_claims({4: 2**70}),
        good_claims({6: -1}),
        good_claims({4: True}),
        good_claims({4: "tomorrow"}),
        good_claims({4: [NOW]}),
        good_claims({4: cbor2.CBORTag(2, b"\xff" * 2000)}),
        good_claims({hc1.HEALTH_CLAIM: [1]}),
        good_claims({hc1.HEALTH_CLAIM: {1: ["green"]}}),
        good_claims({hc1.HEALTH_CLAIM: {1: {"green": 1}}}),
        good_claims({hc1.HEALTH_CLAIM: {1: "GREEN"}}),
        good_claims({hc1.HEALTH_CLAIM: {1: "green", 2: math.nan}}),
        good_claims({hc1.HEALTH_CLAIM: {1: "green", 4: -5}}),
        good_claims({hc1.HEALTH_CLAIM: {1: "green", 4: 2**64}}),
        good_claims({hc1.HEALTH_CLAIM: {1: "green", 3: 2**70}}),
        {1: "T", 4: NOW + 3600},
        {1: "T", 6: NOW},  # iat or exp missing
        {1: "T", 4: NOW + 3600, 6: NOW, hc1.EU_HCERT_CLAIM: [1]},
        {1: "T", 4: NOW + 3600, 6: NOW, hc1.EU_HCERT_CLAIM: {1: 5}},
    ],
)
def test_signed_claims_of_wrong_types_are_bad_claims(claims: Any) -> None:
    v = verify(signed({1: -7, 4: fz.world().es.kid}, claims))
    assert (v.status, v.reason) == (CodeStatus.INVALID, "bad_claims"), v


def test_claims_that_are_not_cbor_or_nested_too_deep_are_bad_claims() -> None:
    kid = fz.world().es.kid
    for payload in (b"", b"\xff", b"\xa1\x01", fz.deep_cbor(1000, "map"), fz.deep_cbor(3000, "list")):
        assert verify(signed({1: -7, 4: kid}, payload)).reason == "bad_claims"


def test_odd_text_in_the_claims_never_reaches_the_verdict_raw() -> None:
    issuer = "\u202eRTL\x00NUL\x1b[31m" + "x" * 200
    v = verify(signed({1: -7, 4: fz.world().es.kid}, good_claims({1: issuer})))
    assert v.status is CodeStatus.VALID and v.detail["issuer"] == "RTLNUL[31m" + "x" * 54
    v = verify(signed({1: -7, 4: fz.world().es.kid}, good_claims({1: ["list", "issuer"]})))
    assert v.status is CodeStatus.VALID and v.detail["issuer"] == ""


def test_a_genuine_code_without_our_claim_is_valid_with_no_colour() -> None:
    for claims, claim_set in (
        ({1: "EU", 4: NOW + 3600, 6: NOW - 60, hc1.EU_HCERT_CLAIM: {1: {"ver": "1.3.0"}}}, "hcert"),
        ({4: NOW + 3600, 6: NOW - 60}, "none"),
    ):
        v = verify(signed({1: -7, 4: fz.world().es.kid}, claims))
        assert (v.status, v.colour, v.reason, v.detail["colour"], v.detail["claim_set"]) == (CodeStatus.VALID, None, "ok", None, claim_set)
        expired = verify(signed({1: -7, 4: fz.world().es.kid}, {**claims, 4: NOW - 3600}))
        assert (expired.status, expired.colour) == (CodeStatus.EXPIRED, None)


# ------------------------------------------------------------------------------------- the outer layers


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"HC1:" + hc1.b45encode(zlib.compress(b"\x00" * 10**6)).encode(), "bad_zlib"),  # a zlib bomb
        (b"HC1:" + hc1.b45encode(zlib.compress(b"\x00" * 10**6)[:40]).encode(), "bad_zlib"),
        (b"HC1:" + hc1.b45encode(b"\x78\x9c").encode(), "truncated"),
        (b"HC1:\xc3\xa9t\xc3\xa9", "unknown_format"),
        (b"HC1:\xff\xfe", "unknown_format"),
        ("HC1:\ud800\udfff", "unknown_format"),
        ("HC1:\U0001f600", "unknown_format"),
        ("hc1:ABC", "unknown_format"),
        (b"HC1:" + b"A" * 5000, "garbage"),
        (b"HC1:A", "truncated"),
        (b"HC1:::", "bad_base45"),
        (bytearray(b"HC1:"), "truncated"),
        (memoryview(b"HC1:abc"), "bad_base45"),
    ],
)
def test_outer_layers(payload: Any, reason: str) -> None:
    assert verify(payload).reason == reason


def test_not_even_bytes_is_a_verdict() -> None:
    for junk in (None, 5, ["HC1:"], object()):
        v = verify(junk)  # type: ignore[arg-type]
        assert v.status is CodeStatus.INVALID and v.reason == "unknown_format"


# ------------------------------------------------------------------------------------- properties


@FUZZ
@given(fz.hc1_cases())
@pytest.mark.slow
def test_any_structured_hc1_payload_gets_a_reason_and_valid_only_when_genuine(case: fz.Hc1Case) -> None:
    """Total, and ``valid`` only for bytes the trusted key signed, in date (fz.check_hc1 raises otherwise)."""
    fz.check_hc1(case, fz.hc1_verifier().verify(case.payload, NOW))  # type: ignore[arg-type]


@functools.cache
def issued(colour: str, alg: str) -> str:
    """One code per colour and key (signatures are randomised; Hypothesis replays need the same text)."""
    w = fz.world()
    return (w.es if alg == "es" else w.ps).issue(colour, iat=NOW - 60, exp=NOW + 3600)


@settings(max_examples=200, deadline=None)
@given(colour=st.sampled_from(["green", "yellow", "red"]), alg=st.sampled_from(["es", "ps"]), data=st.data())
def test_truncating_a_valid_code_never_yields_valid(colour: str, alg: str, data: st.DataObject) -> None:
    text = issued(colour, alg)
    assert verify(text.encode()).status is CodeStatus.VALID
    cut = data.draw(st.integers(0, len(text) - 1))
    v = verify(text[:cut].encode())
    assert v.status is not CodeStatus.VALID and v.reason in {"unknown_format", "truncated", "bad_base45", "bad_zlib"}, v


@pytest.mark.slow
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(fz.judge_cases())
def test_the_code_judge_is_total_over_every_format(value: tuple[DecodedCode, Any, fz.Hc1Case | None]) -> None:
    code, image, case = value
    fz.check_judge(code, case, fz.code_judge().verify_in_frame(code, image, NOW))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(fz.trust_cases())
@pytest.mark.slow
def test_trust_list_documents_are_accepted_only_when_signed(case: fz.TrustCase) -> None:
    label = fz.trust_call(case)  # raises PropertyBroken for an unsigned document accepted
    assert label.startswith(("accepted:", "refused:"))


# ------------------------------------------------------------------------------------- the other verifiers


def test_a_judge_whose_verifier_raises_gives_malformed_and_goes_on() -> None:
    class Broken:
        name = "broken"

        def verify(self, payload: bytes, now_wall: float) -> Any:
            raise KeyError("bug")

    judge = CodeJudge([Broken(), LocalClaimsVerifier()], salt=b"s" * 32, seen=None)
    v = judge.verify(b"anything", NOW)
    assert (v.status, v.reason, v.source, v.detail["error"]) == (CodeStatus.INVALID, "malformed", "broken", "KeyError")
    assert judge.stats()["malformed_backstop"] == {"broken:KeyError": 1}
    assert judge.verify("text \ud800 payload", NOW).detail["payload_hash"]  # type: ignore[arg-type]  # str with a lone surrogate: hashed, judged


@pytest.mark.parametrize(
    "body",
    [
        {"v": 1, "col": "green", "iat": NOW - 60, "exp": math.nan, "sub": "s"},
        {"v": 1, "col": "green", "iat": math.nan, "exp": NOW + 60, "sub": "s"},
        {"v": 1, "col": "green", "iat": NOW - 60, "exp": math.inf, "sub": "s"},
        {"v": 1, "col": ["green"], "iat": NOW - 60, "exp": NOW + 60, "sub": "s"},
        {"v": 1.0, "col": "green", "iat": NOW - 60, "exp": NOW + 60, "sub": "s"},
        {"v": True, "col": "green", "iat": NOW - 60, "exp": NOW + 60, "sub": "s"},
    ],
)
def test_local_claims_never_take_nan_or_odd_types_as_valid(body: dict[str, Any]) -> None:
    payload = b"HCODE1:" + base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=")
    assert LocalClaimsVerifier().verify(payload, NOW).status is CodeStatus.INVALID


def test_local_claims_deep_or_huge_json_is_not_json() -> None:
    for raw in (b"[" * 100_000, b'{"v": ' + b"9" * 5000 + b"}"):
        payload = b"HCODE1:" + base64.urlsafe_b64encode(raw).rstrip(b"=")
        assert LocalClaimsVerifier().verify(payload, NOW).reason in ("not_json", "garbage")


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((0, 0, 3), np.uint8),
        np.zeros(10, np.uint8),
        np.zeros((40, 40), np.uint8),
        np.zeros((40, 40, 1), np.uint8),
        np.full((40, 40, 4), 200, np.uint8),
        np.full((40, 40, 3), np.nan),
        np.zeros((40, 40, 3), np.int64),
        np.zeros((40, 40, 3), np.uint16),
        np.zeros((2, 2, 2, 3), np.uint8),
        "not an image",
        None,
    ],
)
@pytest.mark.parametrize(
    "box", [Box(5, 5, 20, 20), Box(math.nan, 0, 10, 10), Box(0, 0, math.inf, 10), Box(30, 30, 5, 5), Box(-1e300, -1e300, 1e300, 1e300)]
)
def test_screen_colour_takes_any_image_and_box(image: Any, box: Box) -> None:
    colour, _ = ring_colour(image, box)
    assert colour is None or isinstance(colour, CodeColour)
    v = ScreenColourVerifier().verify_in_frame(DecodedCode(b"x", "QRCODE", box, "t"), image, NOW)
    assert v.status is not CodeStatus.VALID or v.colour is CodeColour.RED


def test_screen_colour_still_reads_a_red_frame() -> None:
    red = np.zeros((60, 60, 3), np.uint8)
    red[..., 2] = 230
    assert ring_colour(red, Box(20, 20, 40, 40))[0] is CodeColour.RED
    assert ring_colour(np.dstack([red, np.full((60, 60), 255, np.uint8)]), Box(20, 20, 40, 40))[0] is CodeColour.RED


@pytest.mark.parametrize(
    ("payload", "token"),
    [
        (b"HCT1:abcdefgh", "abcdefgh"),
        ("HCT1:abcdefgh", "abcdefgh"),
        (b"HCT1:\xff", None),
        ("HCT1:\u00e9t\u00e9", None),
        ("HCT1:\ud800", None),
        (None, None),
        (5, None),
        (bytearray(b"HCT1:x"), "x"),
    ],
)
def test_online_token_of_any_payload(payload: Any, token: str | None) -> None:
    assert token_of(payload) == token


# ------------------------------------------------------------------------------------- trust-list files


@pytest.mark.parametrize(
    "content",
    [
        b"[" * 100_000,
        b"\xff\xfe{",
        b'{"certificates": [{"der": ' + b"9" * 5000 + b"}]}",
        b"",
        b"null",
        b"[1, 2]",
        b'{"document": [1], "signature_verified": true}',
        b'{"document": {}, "signature_verified": "yes"}',
        b'{"certificates": [{"der": {"a": 1}, "kid": [1]}, 5, null]}',
    ],
)
def test_any_trust_file_is_a_trust_list_or_a_trust_list_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "t.json"
    path.write_bytes(content)
    try:
        loaded = load_file(path)
    except TrustListError:
        return
    assert loaded.keys == {}


@pytest.mark.parametrize(
    "document",
    [
        {"version": 1, "certificates": [], "signature": ["x"]},
        {"version": 1, "certificates": [], "signature": 2**70},
        {"version": 1, "certificates": fz.deep(5000, "list"), "signature": "AAAA"},
        {"version": 1, "certificates": [{1: 2}], "signature": "AAAA"},
        {"version": 2**70, "certificates": [], "signature": "AAAA"},
        {"version": 1, "certificates": [2**20000], "signature": "AAAA"},
    ],
)
def test_verify_document_refuses_hostile_documents_with_a_trust_list_error(document: Any) -> None:
    with pytest.raises(TrustListError):
        verify_document(document, fz.world().list_signer.public_key())
