"""Serial bytes from the thermal modules: valid frames, replies and their mutations in any chunking."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
from hypothesis import strategies as st

from bench.fuzz_targets.base import Target
from drivers.thermal import gy_protocol as gy
from drivers.thermal import htpa_protocol as htpa


def _gy_frame(draw: Any) -> bytes:
    base = draw(st.integers(-4000, 15000))
    spread = draw(st.integers(0, 3000))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    px = np.clip(base + rng.integers(-spread, spread + 1, gy.N_PIXELS), -0x8000, 0x7FFF)
    return gy.encode_frame(px, draw(st.integers(-0x8000, 0x7FFF)))


def _htpa_frame(draw: Any) -> bytes:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    img = draw(st.floats(-60.0, 320.0)) + rng.normal(0.0, draw(st.floats(0.0, 30.0)), (htpa.ROWS, htpa.COLS))
    img = np.clip(img, -273.0, 6000.0)
    return htpa.encode_frame(img, draw(st.floats(-60.0, 150.0)), draw(st.binary(min_size=4, max_size=4)))


def _mutate(draw: Any, data: bytes) -> bytes:
    """Apply one fault a serial line really has: a flipped, dropped or inserted byte, a cut, a splice."""
    how: str = draw(st.sampled_from(["keep", "flip", "drop", "insert", "cut", "splice", "zero"]))
    if not data or how == "keep":
        return data
    i = draw(st.integers(0, len(data) - 1))
    if how == "flip":
        flip: int = draw(st.integers(1, 255))
        return data[:i] + bytes([data[i] ^ flip]) + data[i + 1 :]
    if how == "drop":
        return data[:i] + data[i + 1 :]
    if how == "insert":
        inserted: bytes = draw(st.binary(min_size=1, max_size=8))
        return data[:i] + inserted + data[i:]
    if how == "cut":
        return data[:i]
    if how == "zero":
        return data[:i] + bytes(len(data) - i)
    spliced: bytes = draw(st.sampled_from([gy.HEADER, htpa.HEADER, b"\x5a\x5a", b"\xe1"]))
    return data[:i] + spliced + data[i:]


@st.composite
def gy_stream(draw: Any) -> list[bytes]:
    """Draw a stream as the GY-MCU90640 link delivers it: frames, emissivity replies, noise, cut into chunks."""
    parts = draw(
        st.lists(
            st.one_of(
                st.binary(max_size=64),
                st.integers(0, 255).map(gy.emissivity_reply),
                st.sampled_from([gy.HEADER, gy.HEADER[:2], gy.HEADER[:3], b"\x5a\x5a\x02"]),
                st.just(b"FRAME"),
            ),
            min_size=1,
            max_size=6,
        )
    )
    out = bytearray()
    for part in parts:
        out += _mutate(draw, _gy_frame(draw)) if part == b"FRAME" else part
    return _chunks(draw, bytes(out))


@st.composite
def htpa_stream(draw: Any) -> list[bytes]:
    """Draw a stream as the HTPA32×32 answers its queries: frames (some implausible), noise, cut into chunks."""
    parts = draw(st.lists(st.sampled_from(["frame", "noise", "header"]), min_size=1, max_size=4))
    out = bytearray()
    for part in parts:
        if part == "frame":
            out += _mutate(draw, _htpa_frame(draw))
        elif part == "noise":
            out += draw(st.binary(max_size=64))
        else:
            out += htpa.HEADER
    return _chunks(draw, bytes(out))


def _chunks(draw: Any, data: bytes) -> list[bytes]:
    cuts = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=8))))
    edges = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def _feed(profile: gy.ModuleProfile, chunks: list[bytes]) -> str:
    parser = gy.FrameParser(profile)
    got = [item for chunk in chunks for item in parser.feed(chunk)]
    frames = [g for g in got if isinstance(g, gy.DecodedFrame)]
    for f in frames:  # what reaches the measurement must be a real temperature image
        if not np.isfinite(f.pixels_c).all() or f.pixels_c.shape != (profile.frame.rows, profile.frame.cols):
            raise AssertionError("a decoded frame holds non-finite or misshaped pixels")
    c = parser.counters
    return (
        f"frames={min(len(frames), 2)} replies={min(len(got) - len(frames), 2)} "
        f"checksum_errors={'yes' if c.checksum_errors else 'no'} implausible={'yes' if c.implausible_frames else 'no'}"
    )


TARGETS = [
    Target(
        "thermal-gy-mcu90640",
        "GY-MCU90640 serial stream parser (frames, replies, line faults, any chunking)",
        gy_stream,
        lambda chunks: _feed(gy.GY_MCU90640, chunks),
    ),
    Target(
        "thermal-htpa32x32",
        "HTPA32x32 serial answer parser (frames, implausible words, noise, any chunking)",
        htpa_stream,
        lambda chunks: _feed(htpa.HTPA32X32, chunks),
    ),
]
