"""Printed paper health codes (纸质健康码) read and judge like a phone screen.

A real HC1 signed by the demo issuer is printed on rendered paper (bench/qr_scenes.py: matte,
curled, folded) held 0.4 m from the camera; the station's reader cascade (drivers/codes/cascade.py,
as configured by default) must decode it and the station's judge (``build_code_judge`` with the demo
trust list) must find it valid and green.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bench.qr_scenes import PAPER_CONDITIONS, render_paper_scene
from drivers.codes.cascade import CascadeReader
from sim.issuer import demo_issuer, write_demo_trust_list
from station.app import build_code_judge
from station.config import StationConfig
from station.domain.model import CodeColour, CodeStatus


@pytest.fixture(scope="module")
def signed_code() -> bytes:
    now = time.time()
    return demo_issuer().issue("green", iat=now - 60, exp=now + 86400).encode()


@pytest.mark.parametrize("condition", PAPER_CONDITIONS)
def test_printed_code_at_40_cm_is_decoded_and_judged_valid(condition: str, signed_code: bytes, tmp_path: Path) -> None:
    scene = render_paper_scene(0, condition, 0.4, signed_code)
    assert scene.tags == ("paper", condition) and scene.payloads == (signed_code,)
    codes = CascadeReader().decode(scene.image)
    assert [c.payload for c in codes] == [signed_code]
    trust = write_demo_trust_list(tmp_path / "trust")
    cfg = StationConfig.model_validate({"codes": {"trust_list_file": str(trust)}})
    judge = build_code_judge(cfg, tmp_path / "data")
    try:
        verdict = judge.verify_in_frame(codes[0], scene.image, time.time())
    finally:
        judge.close()
    assert verdict.status is CodeStatus.VALID, verdict
    assert verdict.colour is CodeColour.GREEN and verdict.source == "hc1"


def test_paper_frames_are_paper_not_a_screen(signed_code: bytes) -> None:
    """The matte sheet is duller than a lit phone screen and its toner is grey, not black (lower contrast)."""
    scene = render_paper_scene(1, "matte", 0.3, signed_code)
    codes = CascadeReader().decode(scene.image)
    assert codes and codes[0].box is not None
    b = codes[0].box
    crop = scene.image[int(b.y1) : int(b.y2), int(b.x1) : int(b.x2)].mean(axis=2)
    light, dark = float(sorted(crop.ravel())[int(crop.size * 0.95)]), float(sorted(crop.ravel())[int(crop.size * 0.05)])
    assert light < 215  # a lit white screen reads ~250 at the same exposure
    assert dark > 15 and light - dark < 200


def test_the_same_arguments_give_the_same_frame(signed_code: bytes) -> None:
    a = render_paper_scene(2, "folded", 0.5, signed_code)
    b = render_paper_scene(2, "folded", 0.5, signed_code)
    assert (a.image == b.image).all()
    with pytest.raises(ValueError, match="unknown paper condition"):
        render_paper_scene(0, "laminated", 0.4)
