"""``stationctl code verify (IMAGE | --payload TEXT) --trust FILE [--at ISO-8601] --json``."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
from click.testing import CliRunner

from drivers.camera.scene_camera import qr_matrix, render_qr
from drivers.codes.issuer import new_issuer, trust_list_document
from station.cli.stationctl import main

ROOT = Path(__file__).resolve().parents[1]
T0 = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.timezone.utc).timestamp()


def ctl(*args: str):  # noqa: ANN201
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def setup(tmp_path: Path):  # noqa: ANN201
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
    r = ctl("--config", str(cfg), "code", "verify", str(tmp_path / "phone.png"), "--trust", str(trust), "--at", "2026-06-01T13:00:00Z", "--json")
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
