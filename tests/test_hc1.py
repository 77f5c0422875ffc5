"""Signed HC1 health codes: one vector per reason code, the guards, personal fields dropped.

Real keys (ES256 P-256 and PS256 RSA-2048 made by ``cryptography``), real COSE/CBOR/zlib/Base45
bytes, a real SQLite replay memory reopened as after a restart.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import zlib
from pathlib import Path

import cbor2
import pytest

from sim.issuer import demo_issuer, new_issuer, trust_list_document
from station.codes import hc1
from station.codes.judge import CodeJudge, SeenCodes, salted_hash, station_salt
from station.codes.local_claims import LocalClaimsVerifier
from station.codes.trust_list import TrustStore, load_file
from station.domain.model import CodeColour, CodeStatus

NOW = 1_795_600_000.0


@pytest.fixture(scope="module")
def es() -> hc1.Any:
    return new_issuer("ES256", "ES-ISSUER")


@pytest.fixture(scope="module")
def ps() -> hc1.Any:
    return new_issuer("PS256", "PS-ISSUER")


@pytest.fixture(scope="module")
def trust(tmp_path_factory: pytest.TempPathFactory, es, ps) -> TrustStore:  # noqa: ANN001
    path = tmp_path_factory.mktemp("trust") / "trust.json"
    path.write_text(json.dumps(trust_list_document([es, ps])))
    return TrustStore(None, path)


def verifier(trust: TrustStore, **kw: float) -> hc1.Hc1Verifier:
    return hc1.Hc1Verifier(trust, max_clock_skew_s=kw.get("skew", 300.0), dynamic_grace_s=kw.get("grace", 30.0))


def code(issuer, colour: str = "green", iat: float = NOW - 60, exp: float = NOW + 3600, **kw) -> bytes:  # noqa: ANN001
    return issuer.issue(colour, iat=iat, exp=exp, **kw).encode()


def test_base45_matches_rfc9285_vectors() -> None:
    for raw, text in ((b"AB", "BB8"), (b"Hello!!", "%69 VD92EX0"), (b"base-45", "UJCLQE7W581"), (b"ietf!", "QED8WEX0")):
        assert hc1.b45encode(raw) == text
        assert hc1.b45decode(text) == raw


@pytest.mark.parametrize("colour", list(CodeColour))
def test_valid_es256_code_gives_its_colour_issuer_kid_and_expiry(trust, es, colour: CodeColour) -> None:  # noqa: ANN001
    v = verifier(trust).verify(code(es, colour.value), NOW)
    assert (v.status, v.colour, v.reason, v.source) == (CodeStatus.VALID, colour, "ok", "hc1")
    assert v.detail["kid"] == es.kid.hex() and v.detail["alg"] == "ES256" and v.detail["issuer"] == "ES-ISSUER"
    assert v.detail["expires"] == int(NOW + 3600)


def test_valid_ps256_code_with_kid_in_the_unprotected_header(trust, ps) -> None:  # noqa: ANN001
    v = verifier(trust).verify(code(ps, "yellow", kid_protected=False), NOW)
    assert (v.status, v.colour, v.reason, v.detail["alg"]) == (CodeStatus.VALID, CodeColour.YELLOW, "ok", "PS256")


def test_kid_is_the_first_8_bytes_of_the_sha256_of_the_signer_certificate(es) -> None:  # noqa: ANN001
    import hashlib

    entry = es.trust_entry()
    der = base64.b64decode(entry["der"])
    assert base64.b64decode(entry["kid"]) == hashlib.sha256(der).digest()[:8] == es.kid


def test_signed_with_the_wrong_key_under_a_trusted_kid_is_bad_signature(trust, es) -> None:  # noqa: ANN001
    forger = new_issuer("ES256", "FORGER")
    v = verifier(trust).verify(code(forger, kid=es.kid), NOW)
    assert (v.status, v.reason) == (CodeStatus.INVALID, "bad_signature")


def test_tampered_payload_is_bad_signature(trust, es) -> None:  # noqa: ANN001
    text = code(es, "red").decode()
    tag = cbor2.loads(zlib.decompress(hc1.b45decode(text[4:])))
    protected, unprotected, payload, sig = tag.value
    claims = dict(cbor2.loads(payload))
    claims[hc1.HEALTH_CLAIM] = {**claims[hc1.HEALTH_CLAIM], 1: "green"}  # red → green, signature kept
    forged = cbor2.dumps(cbor2.CBORTag(18, [protected, dict(unprotected), cbor2.dumps(claims), sig]))
    v = verifier(trust).verify((hc1.PREFIX + hc1.b45encode(zlib.compress(forged))).encode(), NOW)
    assert (v.status, v.colour, v.reason) == (CodeStatus.INVALID, None, "bad_signature")


def test_expired_and_not_yet_valid_respect_the_clock_skew(trust, es) -> None:  # noqa: ANN001
    ver = verifier(trust, skew=300.0)
    assert ver.verify(code(es, exp=NOW - 200), NOW).status is CodeStatus.VALID  # inside the skew
    v = ver.verify(code(es, exp=NOW - 400), NOW)
    assert (v.status, v.reason) == (CodeStatus.EXPIRED, "expired")
    assert ver.verify(code(es, iat=NOW + 200, exp=NOW + 9000), NOW).status is CodeStatus.VALID
    v = ver.verify(code(es, iat=NOW + 400, exp=NOW + 9000), NOW)
    assert (v.status, v.reason) == (CodeStatus.INVALID, "not_yet_valid")


def test_colour_validity_window_narrower_than_the_token_is_enforced(trust, es) -> None:  # noqa: ANN001
    v = verifier(trust).verify(code(es, exp=NOW + 86400, valid_until=int(NOW - 3600)), NOW)
    assert (v.status, v.reason) == (CodeStatus.EXPIRED, "expired")
    v = verifier(trust).verify(code(es, exp=NOW + 86400, valid_from=int(NOW + 3600)), NOW)
    assert v.reason == "not_yet_valid"


def test_unknown_kid_is_unverifiable_not_a_pass(trust) -> None:  # noqa: ANN001
    stranger = new_issuer("ES256", "NOT-IN-LIST")
    v = verifier(trust).verify(code(stranger), NOW)
    assert (v.status, v.reason, v.detail["kid"]) == (CodeStatus.UNVERIFIABLE, "unknown_kid", stranger.kid.hex())


def test_stale_dynamic_code_is_refused_as_a_screenshot(trust, es) -> None:  # noqa: ANN001
    ver = verifier(trust, grace=30.0)
    assert ver.verify(code(es, iat=NOW - 80, refresh_s=60), NOW).status is CodeStatus.VALID  # 80 ≤ 60 + 30
    v = ver.verify(code(es, iat=NOW - 100, refresh_s=60), NOW)
    assert (v.status, v.reason) == (CodeStatus.INVALID, "stale_dynamic")
    assert ver.verify(code(es, iat=NOW - 100), NOW).status is CodeStatus.VALID  # static codes have no refresh


def _wrap(raw: bytes) -> bytes:
    return (hc1.PREFIX + hc1.b45encode(zlib.compress(raw))).encode()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"HC1:ABC{}", "bad_base45"),
        (b"HC1:hello", "bad_base45"),  # lower case is not Base45
        (b"HC1:" + hc1.b45encode(b"not zlib at all").encode(), "bad_zlib"),
        (_wrap(cbor2.dumps({"a": 1})), "not_cose"),
        (_wrap(b"\xff\xfe garbage"), "not_cose"),
        (_wrap(cbor2.dumps(cbor2.CBORTag(98, [b"", {}, b"", b""]))), "not_cose"),
        (_wrap(cbor2.dumps([cbor2.dumps({1: -999, 4: b"12345678"}), {}, b"", b""])), "unsupported_alg"),
        (_wrap(cbor2.dumps([cbor2.dumps({1: -7}), {}, b"", b"x" * 64])), "no_kid"),
        (b"HC1:", "truncated"),
    ],
)
def test_malformed_payloads_each_get_their_own_reason(trust, payload: bytes, reason: str) -> None:  # noqa: ANN001
    v = verifier(trust).verify(payload, NOW)
    assert (v.status, v.reason) == (CodeStatus.INVALID, reason)


def test_truncated_codes_are_truncated_whatever_layer_the_cut_falls_in(trust, es) -> None:  # noqa: ANN001
    text = code(es).decode()
    reasons = {verifier(trust).verify(text[:n].encode(), NOW).reason for n in range(len(text) - 1, 4, -1)}
    assert "truncated" in reasons
    assert reasons <= {"truncated", "bad_zlib", "bad_base45"}, reasons  # never ok, never a crash


def test_payload_not_recognised_by_any_verifier_is_garbage(trust, tmp_path: Path) -> None:  # noqa: ANN001
    judge = CodeJudge([verifier(trust), LocalClaimsVerifier()], salt=b"s" * 32, seen=None)
    for junk in (b"https://pay.example/qr/7F3A9C21", b"", bytes(range(256)), b"HC2:ABC"):
        v = judge.verify(junk, NOW)
        assert (v.status, v.reason) == (CodeStatus.INVALID, "garbage")


def test_personal_fields_are_dropped_at_decode_time(trust, es) -> None:  # noqa: ANN001
    payload = code(es, holder="330102199001011234", extra={"nam": "Zhang San", "dob": "1990-01-01", 7: "ID 330102"})
    v = verifier(trust).verify(payload, NOW)
    assert v.status is CodeStatus.VALID
    flat = repr(v)
    for personal in ("Zhang", "1990-01-01", "330102"):
        assert personal not in flat
    assert v.subject_ref and len(v.subject_ref) == 16
    fields = set(hc1.Hc1Claims.__dataclass_fields__)
    assert fields == {"issuer", "iat", "exp", "colour", "valid_from", "valid_until", "refresh_s", "holder", "claim_set"}


def test_replay_is_flagged_after_the_grace_and_survives_a_restart(trust, es, tmp_path: Path) -> None:  # noqa: ANN001
    salt = station_salt(tmp_path)
    assert station_salt(tmp_path) == salt  # created once, then reused
    assert (tmp_path / "codes" / "salt").stat().st_mode & 0o077 == 0
    db = tmp_path / "codes" / "seen.sqlite3"
    judge = CodeJudge([verifier(trust)], salt=salt, seen=SeenCodes(db), replay_window_s=3600, replay_grace_s=20)
    payload = code(es, exp=NOW + 86400)
    first = judge.verify(payload, NOW)
    assert first.status is CodeStatus.VALID and first.detail["payload_hash"] == salted_hash(salt, payload)
    assert judge.verify(payload, NOW + 5).status is CodeStatus.VALID  # still held up: same presentation
    judge.close()
    # A restart: a new judge over the same files.
    judge = CodeJudge([verifier(trust)], salt=station_salt(tmp_path), seen=SeenCodes(db), replay_window_s=3600, replay_grace_s=20)
    again = judge.verify(payload, NOW + 60)
    assert (again.status, again.reason) == (CodeStatus.UNVERIFIABLE, "replay")
    assert judge.verify(code(es, exp=NOW + 86400, holder="other"), NOW + 60).status is CodeStatus.VALID
    assert judge.verify(payload, NOW + 3600 + 100).status is CodeStatus.VALID  # outside the window
    judge.close()
    assert payload not in db.read_bytes() and payload[4:40] not in db.read_bytes()


def test_a_full_disk_under_the_replay_store_degrades_replay_memory_not_the_lane(trust, es, tmp_path: Path) -> None:  # noqa: ANN001
    db = tmp_path / "codes" / "seen.sqlite3"
    seen = SeenCodes(db)
    judge = CodeJudge([verifier(trust)], salt=b"s" * 32, seen=seen, replay_window_s=3600, replay_grace_s=20)
    # SQLite's own size cap: the file may not grow past its current pages, as on a full disk.
    pages = sqlite3.connect(str(db)).execute("PRAGMA page_count").fetchone()[0]
    seen._conn.execute(f"PRAGMA max_page_count = {pages}")  # noqa: SLF001 — the cap is per connection
    payloads = [code(es, exp=NOW + 86400, holder=f"h{i}") for i in range(300)]
    verdicts = [judge.verify(p, NOW) for p in payloads]  # no exception reaches the code thread
    assert all(v.status is CodeStatus.VALID for v in verdicts)
    assert seen.write_errors > 0
    again = judge.verify(payloads[-1], NOW + 60)  # remembered in RAM while the disk is full
    assert (again.status, again.reason) == (CodeStatus.UNVERIFIABLE, "replay")
    judge.close()


def test_judge_stats_show_the_trust_list_in_force_and_replay_store_errors(trust, es, tmp_path: Path) -> None:  # noqa: ANN001
    judge = CodeJudge([verifier(trust)], salt=b"s" * 32, seen=SeenCodes(tmp_path / "seen.sqlite3"))
    judge.verify(code(es), NOW)
    stats = judge.stats()
    assert stats["verifiers"] == ["hc1"]
    assert stats["trust_list"]["signers"] == 2 and stats["trust_list"]["source"] != "none"
    assert stats["replay_store_write_errors"] == 0
    judge.close()


def test_salted_hash_differs_between_stations() -> None:
    assert salted_hash(b"a" * 32, b"HC1:X") != salted_hash(b"b" * 32, b"HC1:X")


def test_trust_file_with_a_mismatched_kid_drops_that_entry(es, ps, tmp_path: Path) -> None:  # noqa: ANN001
    entries = [es.trust_entry(), dict(ps.trust_entry(), kid=es.trust_entry()["kid"])]
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"certificates": entries}))
    assert set(load_file(path).keys) == {es.kid}


def test_demo_issuer_is_deterministic_and_labelled_demo_only() -> None:
    from cryptography import x509

    a, b = demo_issuer(), demo_issuer()
    assert a.kid == b.kid and a.cert_der == b.cert_der
    cert = x509.load_der_x509_certificate(a.cert_der)
    assert "DEMO ONLY" in cert.subject.rfc4514_string()


def test_mutated_codes_never_raise_and_never_pass(trust, es) -> None:  # noqa: ANN001
    """Flip bytes at every layer (Base45 text, zlib stream, COSE structure): a reason, never an exception."""
    import numpy as np

    rng = np.random.default_rng(11)
    text = code(es).decode()
    cose = zlib.decompress(hc1.b45decode(text[4:]))
    ver = verifier(trust)
    reasons = set()
    for i in range(600):
        layer = i % 3
        if layer == 0:
            chars = list(text[4:])
            chars[int(rng.integers(len(chars)))] = hc1.B45[int(rng.integers(45))]
            payload = ("HC1:" + "".join(chars)).encode()
        else:
            raw = bytearray(zlib.compress(cose) if layer == 1 else cose)
            for _ in range(int(rng.integers(1, 4))):
                raw[int(rng.integers(len(raw)))] = int(rng.integers(256))
            payload = (hc1.PREFIX + hc1.b45encode(bytes(raw) if layer == 1 else zlib.compress(bytes(raw)))).encode()
        v = ver.verify(payload, NOW)
        reasons.add(v.reason)
        if v.status is CodeStatus.VALID:
            # Only a flip that leaves the signed bytes intact (e.g. in the unsigned header) may still pass.
            assert hc1.unwrap(payload.decode()).signature == hc1.unwrap(text).signature
    assert {"bad_signature", "bad_base45"} <= reasons, reasons


def test_verifiers_implement_the_ports() -> None:
    from station.codes.colour import ScreenColourVerifier
    from station.codes.online import OnlineVerifier
    from station.ports import CodeVerifier, FrameCodeVerifier

    judge = CodeJudge([], salt=b"s" * 32, seen=None)
    assert isinstance(judge, FrameCodeVerifier) and isinstance(ScreenColourVerifier(), FrameCodeVerifier)
    for v in (hc1.Hc1Verifier(lambda kid: None), OnlineVerifier("b"), LocalClaimsVerifier()):
        assert isinstance(v, CodeVerifier) and not isinstance(v, FrameCodeVerifier)


def test_default_config_builds_the_signed_path_first(tmp_path: Path) -> None:
    from station.app import build_verifiers
    from station.config import StationConfig

    cfg = StationConfig()
    assert cfg.codes.verifiers[0] == "hc1"
    (judge,) = build_verifiers(cfg, tmp_path)
    assert [v.name for v in judge.verifiers] == ["hc1", "online"]
    assert (tmp_path / "codes" / "salt").exists() and (tmp_path / "codes" / "seen.sqlite3").exists()
    judge.close()
