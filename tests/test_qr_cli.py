"""``stationctl code decode IMAGE… --json``: one JSON line per image with text, decoder and box."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
from click.testing import CliRunner

from bench.qr_scenes import render_scene
from station.cli.stationctl import main

ROOT = Path(__file__).resolve().parents[1]


def ctl(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_decode_json_one_line_per_image(tmp_path: Path) -> None:
    cfg = tmp_path / "station.toml"
    shutil.copy(ROOT / "config" / "station.toml", cfg)
    multi = render_scene(1, "multi")
    none = render_scene(0, "none")
    assert len(multi.payloads) >= 2 and not none.payloads
    cv2.imwrite(str(tmp_path / "multi.png"), multi.image)
    cv2.imwrite(str(tmp_path / "none.png"), none.image)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    r = ctl(
        "--config",
        str(cfg),
        "code",
        "decode",
        str(tmp_path / "multi.png"),
        str(tmp_path / "none.png"),
        str(tmp_path / "broken.png"),
        "--json",
    )
    assert r.exit_code == 1  # an image without a code, and an unreadable one
    lines = [json.loads(line) for line in r.output.splitlines()]
    assert [line["image"] for line in lines] == [str(tmp_path / n) for n in ("multi.png", "none.png", "broken.png")]
    first = lines[0]["codes"]
    assert sorted(c["text"] for c in first) == sorted(p.decode() for p in multi.payloads)
    for c in first:
        assert c["decoder"].startswith("cascade")
        x1, y1, x2, y2 = c["box"]
        assert 0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 480
    assert lines[1]["codes"] == []
    assert lines[2]["codes"] == [] and lines[2]["error"] == "unreadable image"


def test_decode_with_another_reader_and_exit_zero_when_every_image_has_a_code(tmp_path: Path) -> None:
    scene = render_scene(0, "inverted")
    path = tmp_path / "dark.png"
    cv2.imwrite(str(path), scene.image)
    r = ctl("--config", str(tmp_path / "absent.toml"), "code", "decode", str(path), "--reader", "zxing", "--json")
    assert r.exit_code == 0, r.output
    (line,) = [json.loads(x) for x in r.output.splitlines()]
    assert [c["text"].encode() for c in line["codes"]] == list(scene.payloads)
    assert line["codes"][0]["decoder"] == "zxing"


def test_stationctl_does_not_import_decoders_at_start() -> None:
    import subprocess
    import sys

    code = "import sys, station.cli.stationctl; print(any(m in sys.modules for m in ('cv2', 'zxingcpp', 'pyzbar')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"
