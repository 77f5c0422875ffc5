"""``stationctl code verify (IMAGE | --payload TEXT) --trust FILE [--at ISO-8601] --json``."""

from __future__ import annotations

import base64
import datetime as dt
import json
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import cbor2
import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from sim.issuer import new_issuer, trust_list_document
from sim.scene_camera import qr_matrix, render_qr
from station.cli.stationctl import main
from station.codes.hc1 import b45encode
from station.codes.trust_list import certificate_entry

ROOT = Path(__file__).resolve().parents[1]
T0 = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC).timestamp()


def ctl(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def setup(tmp_path: Path):
    cfg = tmp_path / "station.toml"
    shutil.copy(ROOT / "config" / "station.toml", cfg)
    issuer = new_issuer("ES256", "CLI-ISSUER")
    trust = tmp_path / "trust.json"
    trust.write_text(json.dumps(trust_list_document([issuer])))
    return cfg, issuer, trust


def test_verify_payload_valid_then_expired_with_at(tmp_path: Path) -> None:
    cfg, issuer, trust = setup(tmp_path)
    text = issuer.issue("yellow", iat=T0, exp=T0 + 86400)
    r = ctl("--config", str(cfg), "code", "verify", "--payload", text, "--trust", str(trust), "--at", "2026-06-01T13:00:00Z", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["valid"] is True and out["reason"] == "ok" and out["colour"] == "yellow"
    assert out["kid"] == issuer.kid.hex() and out["expires"] == "2026-06-02T12:00:00+00:00"
    assert text not in r.output  # the payload is judged, not echoed
    r = ctl("--config", str(cfg), "code", "verify", "--payload", text, "--trust", str(trust), "--at", "2026-06-05T00:00:00", "--json")
    assert r.exit_code == 1 and json.loads(r.output)["reason"] == "expired"
    r = ctl("--config", str(cfg), "code", "verify", "--payload", text, "--trust", str(trust), "--at", "2026-05-01T00:00:00", "--json")
    assert json.loads(r.output)["reason"] == "not_yet_valid"


def test_verify_payload_unknown_kid_and_garbage(tmp_path: Path) -> None:
    cfg, _, trust = setup(tmp_path)
    other = new_issuer("ES256", "OTHER").issue("green", iat=T0, exp=T0 + 86400)
    r = ctl("--config", str(cfg), "code", "verify", "--payload", other, "--trust", str(trust), "--at", "2026-06-01T13:00:00Z", "--json")
    assert r.exit_code == 1 and json.loads(r.output)["reason"] == "unknown_kid"
    r = ctl("--config", str(cfg), "code", "verify", "--payload", "WIFI:S:cafe;;", "--trust", str(trust), "--json")
    out = json.loads(r.output)
    assert r.exit_code == 1 and (out["valid"], out["reason"]) == (False, "garbage")


def test_verify_image_uses_the_configured_reader(tmp_path: Path) -> None:
    cfg, issuer, trust = setup(tmp_path)
    text = issuer.issue("red", iat=T0, exp=T0 + 86400)
    qr = render_qr(qr_matrix(text.encode()), (40, 40, 200), 4, 4)
    frame = np.full((480, 640, 3), 230, np.uint8)
    frame[60 : 60 + qr.shape[0], 180 : 180 + qr.shape[1]] = qr
    cv2.imwrite(str(tmp_path / "phone.png"), frame)
    r = ctl(
        "--config", str(cfg), "code", "verify", str(tmp_path / "phone.png"), "--trust", str(trust), "--at", "2026-06-01T13:00:00Z", "--json"
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert (out["valid"], out["colour"], out["kid"]) == (True, "red", issuer.kid.hex())
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((480, 640, 3), 230, np.uint8))
    r = ctl("--config", str(cfg), "code", "verify", str(blank), "--trust", str(trust), "--json")
    assert r.exit_code == 1 and json.loads(r.output)["reason"] == "no_code"


def test_verify_usage_errors(tmp_path: Path) -> None:
    cfg, _, trust = setup(tmp_path)
    assert ctl("--config", str(cfg), "code", "verify", "--trust", str(trust)).exit_code == 2  # neither
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    assert ctl("--config", str(cfg), "code", "verify", "--payload", "HC1:X", "--trust", str(bad)).exit_code == 2
    assert ctl("--config", str(cfg), "code", "verify", "--payload", "HC1:X", "--trust", str(trust), "--at", "yesterday").exit_code == 2


def _stationctl() -> str:
    """The installed console script: the real entry point a technician runs."""
    path = Path(sys.executable).with_name("stationctl")
    assert path.exists(), path
    return str(path)


HOSTILE = [
    "HC1:6BFOXN*TS6DIVEC7QCDOCV00+O4L4",  # the issue's code: alg is a list
    "HC1:",
    "HC1:A",
    "HC1:::",
    "hc1:NCF",
    "HC1:" + "A" * 6000,
    "HC1:\u00e9\u00e9",
    "\u202eHC1:\U0001f600",
    "",
    "HCODE1:" + base64.urlsafe_b64encode(b"[" * 3000).decode(),
    "HCT1:\u00e9",
    "   ",
]


@pytest.mark.slow
def test_any_payload_gives_a_json_verdict_through_the_real_entry_point(tmp_path: Path) -> None:
    cfg, issuer, trust = setup(tmp_path)
    bomb = "HC1:" + b45encode(zlib.compress(b"\x00" * 10**6))
    alg_map = "HC1:" + b45encode(zlib.compress(cbor2.dumps(cbor2.CBORTag(18, [cbor2.dumps({1: {1: 2}, 4: issuer.kid}), {}, b"", b""]))))
    deep = "HC1:" + b45encode(zlib.compress(b"\xd2" * 3000 + b"\x00"))
    # A fresh process each (the real console script, argv bytes that are not UTF-8 included) for a few; the
    # same click command in-process (exceptions not caught, so a traceback would fail the test) for the rest.
    processes: list[str | bytes] = [HOSTILE[0], bomb, alg_map, deep, b"HC1:\xff\xfe\x80", "\u202eHC1:\U0001f600"]
    for payload in [*processes, *HOSTILE[1:]]:
        args = ["--config", str(cfg), "code", "verify", "--payload", payload, "--trust", str(trust), "--json"]
        if payload in processes:
            r = subprocess.run([_stationctl(), *args], capture_output=True, timeout=60, check=False)
            code, stdout = r.returncode, r.stdout.decode()
            assert b"Traceback" not in r.stderr, r.stderr.decode(errors="replace")
        else:
            res = ctl(*args)  # type: ignore[arg-type]
            code, stdout = res.exit_code, res.output
        assert code == 1, (payload, stdout)
        out = json.loads(stdout)
        assert out["valid"] is False and out["status"] in ("invalid", "unverifiable") and out["reason"], out
        assert out["reason"] != "malformed", (payload, out)  # the backstop is for bugs; none may be left
    good = issuer.issue("green", iat=T0, exp=T0 + 86400)
    r = subprocess.run(
        [
            _stationctl(),
            "--config",
            str(cfg),
            "code",
            "verify",
            "--payload",
            good,
            "--trust",
            str(trust),
            "--at",
            "2026-06-01T13:00:00Z",
            "--json",
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0 and json.loads(r.stdout)["valid"] is True


def test_bad_trust_files_are_usage_errors_with_a_reason(tmp_path: Path) -> None:
    cfg, _, _ = setup(tmp_path)
    files = {
        "deep.json": b"[" * 100_000,
        "latin1.json": b"\xff\xfe{",
        "bignum.json": b'{"version": ' + b"9" * 5000 + b"}",
        "nocerts.json": b'{"certificates": [{"der": {"a": 1}, "kid": [1]}, 5]}',
        "stored.json": b'{"document": [1], "signature_verified": true}',
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        r = CliRunner().invoke(
            main,
            ["--config", str(cfg), "code", "verify", "--payload", "HC1:X", "--trust", str(tmp_path / name), "--json"],
            catch_exceptions=False,
        )
        assert r.exit_code == 2 and r.stdout == "", (name, r.output)
        assert "--trust:" in r.stderr, (name, r.stderr)


def test_an_eu_certificate_is_valid_with_colour_null(tmp_path: Path) -> None:
    cfg, _, _ = setup(tmp_path)
    vector = json.loads((ROOT / "tests" / "data" / "dgc-testdata" / "common" / "2DCode" / "raw" / "CO1.json").read_text())
    trust = tmp_path / "eu.json"
    trust.write_text(json.dumps({"certificates": [certificate_entry(base64.b64decode(vector["TESTCTX"]["CERTIFICATE"]))]}))
    r = ctl(
        "--config",
        str(cfg),
        "code",
        "verify",
        "--payload",
        vector["PREFIX"],
        "--trust",
        str(trust),
        "--at",
        vector["TESTCTX"]["VALIDATIONCLOCK"],
        "--json",
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert (out["valid"], out["reason"], out["colour"]) == (True, "ok", None)


def test_decode_shows_a_hostile_payload_escaped(tmp_path: Path) -> None:
    """A QR carrying terminal escapes and bidi overrides cannot drive the technician's terminal."""
    cfg, _, _ = setup(tmp_path)
    hostile = "PAY\x1b[2J\x1b]0;owned\x07\u202eLIVE"
    qr = render_qr(qr_matrix(hostile.encode()), (0, 0, 0), 4, 4)
    frame = np.full((480, 640, 3), 255, np.uint8)
    frame[60 : 60 + qr.shape[0], 180 : 180 + qr.shape[1]] = qr
    cv2.imwrite(str(tmp_path / "qr.png"), frame)
    r = ctl("--config", str(cfg), "code", "decode", str(tmp_path / "qr.png"))
    assert r.exit_code == 0, r.output
    assert "\x1b" not in r.output and "\u202e" not in r.output and "\x07" not in r.output
    assert "PAY\\x1b[2J\\x1b]0;owned\\x07\\u202eLIVE" in r.output
    r = ctl("--config", str(cfg), "code", "decode", str(tmp_path / "qr.png"), "--json")
    assert r.output.isascii() and json.loads(r.output)["codes"][0]["text"] == hostile
