"""Heimann HTPA32×32 serial module ("CHUWO", thermal.md §1.2): frame layout, profile and encoder.

Pure code: no serial port, no threads (the serial source is ``drivers.thermal.htpa32x32``).

Declared as data for the same ``FrameParser`` the GY-MCU90640 uses, which is the point: a new module
is a profile, a test vector and a small source, not a new parser. Frame as the vendor SDK parses it
(``fjtkchenhuan/TemperatureDemo: CHUWO_32x32.java``, not confirmed against a datasheet): 2055 bytes,
byte 0 = ``E1``, then 1024 pixel words big-endian in deci-kelvin (T = (raw − 2731) / 10, row-major, not
mirrored), the die temperature at bytes 2049–2050 in the same unit, 4 trailing bytes the SDK ignores.
The host asks for each frame with ``EE E1 01 55 FF FC FD FF`` at 115200 baud.

The SDK checks no checksum, and neither can we: a frame is accepted only if every word decodes to a
temperature the sensor can report (−40…300 °C) and the die to −40…125 °C. With a one-byte sync that is
weaker than the GY's sum-16; it is also why the source is query-driven (one frame per request, the
buffer is cleared before each request), so a damaged frame cannot shift the next one.
"""

from __future__ import annotations

import numpy as np

from drivers.thermal.gy_protocol import FrameLayout, ModuleProfile, Plausibility

ROWS = COLS = 32
FRAME_LEN = 2055
HEADER = b"\xe1"
PIXEL_OFFSET = 1
DIE_OFFSET = 1 + 2 * ROWS * COLS  # 2049
DECI_K_ZERO = 2731  # 273.1 K in deci-kelvin, as the SDK subtracts
QUERY = bytes((0xEE, 0xE1, 0x01, 0x55, 0xFF, 0xFC, 0xFD, 0xFF))
BAUD = 115200
BITS_PER_BYTE = 10  # 8N1: start + 8 data + stop
MIN_RAW = DECI_K_ZERO - 400  # −40 °C
MAX_RAW = DECI_K_ZERO + 3000  # 300 °C


def _plausible_words(frame: bytes) -> bool:
    words = np.frombuffer(frame, dtype=">u2", count=ROWS * COLS + 1, offset=PIXEL_OFFSET)
    return bool(((words >= MIN_RAW) & (words <= MAX_RAW)).all())


HTPA32X32 = ModuleProfile(
    name="htpa32x32",
    sync=HEADER,
    frame=FrameLayout(
        header=HEADER,
        length=FRAME_LEN,
        rows=ROWS,
        cols=COLS,
        pixel_offset=PIXEL_OFFSET,
        pixel_dtype=">u2",
        counts_per_c=10.0,
        offset_c=-DECI_K_ZERO / 10.0,
        die_offset=DIE_OFFSET,
        die_dtype=">u2",
        mirror_columns=False,
        checksum_ok=_plausible_words,
    ),
    replies=(),
    limits=Plausibility(min_c=-40.0, max_c=300.0, die_min_c=-40.0, die_max_c=125.0),
)


def encode_frame(img_c: np.ndarray, die_c: float, trailer: bytes = b"\x00\x00\x00\x00") -> bytes:
    """Build the module's 2055 bytes from a 32×32 image in °C (scene orientation), at 0.1 °C resolution."""
    if img_c.shape != (ROWS, COLS):
        raise ValueError(f"need a {ROWS}×{COLS} image")
    raw = np.round(np.asarray(img_c, dtype=np.float64) * 10.0).astype(np.int64) + DECI_K_ZERO
    die = int(round(die_c * 10.0)) + DECI_K_ZERO
    if raw.min() < 0 or raw.max() > 0xFFFF:
        raise ValueError("temperature outside what the frame can carry")
    return HEADER + raw.astype(">u2").tobytes() + die.to_bytes(2, "big") + trailer[:4].ljust(4, b"\x00")
