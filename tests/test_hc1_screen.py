"""Colour on screen: the fallback can deny a red screen or ask staff, never pass.

Real rendered phone screens (segno QR in the app's colours on a banner, as in the demo scene),
decoded by the real reader for the code's box."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from drivers.codes.pyzbar_reader import PyzbarReader
from sim.scene_camera import CODE_COLOURS_BGR, qr_matrix, render_qr
from station.codes.colour import ScreenColourVerifier
from station.codes.hc1 import Hc1Verifier
from station.codes.judge import CodeJudge
from station.domain.model import CodeColour, CodeStatus

NOW = time.time()


def phone(colour: CodeColour | None, text: bytes = b"https://app.example/h/8DK2") -> np.ndarray:
    bgr = CODE_COLOURS_BGR.get(colour, CODE_COLOURS_BGR[None])
    qr = render_qr(qr_matrix(text), bgr, 5, 4)
    q = qr.shape[0]
    frame = np.full((480, 640, 3), (90, 100, 110), np.uint8)
    x, y = 220, 90
    frame[y - 50 : y + q + 40, x - 10 : x + q + 10] = (250, 250, 250)
    frame[y - 50 : y - 5, x - 10 : x + q + 10] = bgr  # the app's coloured banner
    frame[y : y + q, x : x + q] = qr
    return frame


def judge_frame(frame: np.ndarray):  # noqa: ANN201
    codes = PyzbarReader(max_side=640).decode(frame)
    assert len(codes) == 1
    judge = CodeJudge([Hc1Verifier(lambda kid: None), ScreenColourVerifier()], salt=b"s" * 32, seen=None)
    return judge.verify_in_frame(codes[0], frame, NOW)


@pytest.mark.parametrize("colour", [CodeColour.GREEN, CodeColour.YELLOW])
def test_green_or_yellow_screen_is_only_a_manual_check(colour: CodeColour) -> None:
    v = judge_frame(phone(colour))
    assert (v.status, v.colour, v.reason, v.source) == (CodeStatus.UNVERIFIABLE, colour, f"screen_colour_{colour.value}", "screen_colour")


def test_red_screen_is_denied() -> None:
    v = judge_frame(phone(CodeColour.RED))
    assert (v.status, v.colour) == (CodeStatus.VALID, CodeColour.RED)  # valid red → deny_code, the only "valid" it gives


def test_grey_screen_has_no_colour_and_stays_garbage() -> None:
    v = judge_frame(phone(None))
    assert (v.status, v.reason) == (CodeStatus.INVALID, "garbage")


def test_screen_colour_never_yields_a_valid_green_or_yellow_whatever_the_pixels() -> None:
    rng = np.random.default_rng(3)
    ver = ScreenColourVerifier()
    from station.domain.model import Box, DecodedCode

    for _ in range(200):
        frame = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
        frame[:, :] = frame[:, :] // rng.integers(1, 8) + rng.integers(0, 200, 3, dtype=np.uint8)
        frame = cv2.GaussianBlur(frame, (7, 7), 0)
        v = ver.verify_in_frame(DecodedCode(b"x", "QRCODE", Box(50, 30, 110, 90), "t"), frame, NOW)
        assert not (v.status is CodeStatus.VALID and v.colour is not CodeColour.RED)
    assert ver.verify(b"x", NOW).reason == "unknown_format"  # no pixels, no judgement
