"""The unsigned claims code format: every malformed payload is rejected with its own reason."""

from __future__ import annotations

import base64
import json

import pytest

from station.codes.local_claims import PREFIX, LocalClaimsVerifier, encode_claims, subject_ref
from station.domain.model import CodeColour, CodeStatus

NOW = 1_800_000_000.0
V = LocalClaimsVerifier(max_clock_skew_s=300)


def body(claims) -> bytes:
    return PREFIX + base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=")


@pytest.mark.parametrize("colour", list(CodeColour))
def test_valid_code_gives_its_colour_and_no_raw_identity(colour):
    v = V.verify(encode_claims(colour, int(NOW) - 60, int(NOW) + 3600, "330102199001011234"), NOW)
    assert (v.status, v.colour, v.reason, v.source) == (CodeStatus.VALID, colour, "ok", "local_unsigned")
    assert v.subject_ref == subject_ref("330102199001011234")
    assert "330102199001011234" not in repr(v)


def test_expired_code_within_and_beyond_the_skew():
    assert V.verify(encode_claims(CodeColour.GREEN, 0, int(NOW) - 200, "a"), NOW).status is CodeStatus.VALID
    v = V.verify(encode_claims(CodeColour.GREEN, 0, int(NOW) - 400, "a"), NOW)
    assert (v.status, v.reason, v.colour) == (CodeStatus.EXPIRED, "expired", CodeColour.GREEN)


def test_code_from_the_future_is_refused():
    v = V.verify(encode_claims(CodeColour.GREEN, int(NOW) + 3600, int(NOW) + 7200, "a"), NOW)
    assert (v.status, v.reason) == (CodeStatus.INVALID, "not_yet_valid")


@pytest.mark.parametrize(
    "payload,reason",
    [
        (b"https://pay.example/qr/123", "unknown_format"),
        (b"", "unknown_format"),
        (PREFIX + b"%%%not base64%%%", "not_base64"),
        (PREFIX + base64.urlsafe_b64encode(b"\xff\xfe garbage"), "not_json"),
        (body([1, 2, 3]), "not_an_object"),
        (body({"v": 1, "col": "green", "iat": 1}), "missing_claim"),
        (body({"v": 2, "col": "green", "iat": 1, "exp": 2, "sub": "a"}), "unsupported_version"),
        (body({"v": 1, "col": "blue", "iat": 1, "exp": 2, "sub": "a"}), "bad_colour"),
        (body({"v": 1, "col": "green", "iat": "yesterday", "exp": 2, "sub": "a"}), "bad_claim_type"),
        (body({"v": 1, "col": "green", "iat": True, "exp": 2, "sub": "a"}), "bad_claim_type"),
    ],
)
def test_garbage_is_rejected_with_a_reason(payload, reason):
    v = V.verify(payload, NOW)
    assert v.status is CodeStatus.INVALID
    assert v.reason == reason
    assert v.colour is None
