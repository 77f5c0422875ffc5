"""Second module profile: a Heimann HTPA32×32 serial module ("CHUWO", thermal.md §1.2).

Declared as data for the same ``FrameParser`` the GY-MCU90640 uses, which is the point: a new module
is a profile, a test vector and a small source, not a new parser. Frame as the vendor SDK parses it
(``fjtkchenhuan/TemperatureDemo: CHUWO_32x32.java``, not confirmed against a datasheet): 2055 bytes,
byte 0 = ``E1``, then 1024 pixel words big-endian in deci-kelvin (T = (raw − 2731) / 10, row-major, not
mirrored), the die temperature at bytes 2049–2050 in the same unit, 4 trailing bytes the SDK ignores.
The host asks for each frame with ``EE E1 01 55 FF FC FD FF`` at 115200 baud.

The SDK checks no checksum, and neither can we: a frame is accepted only if every word decodes to a
temperature the sensor can report (−40…300 °C) and the die to −40…125 °C. With a one-byte sync that is
weaker than the GY's sum-16; it is also why this source is query-driven (one frame per request, the
buffer is cleared before each request), so a damaged frame cannot shift the next one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

import numpy as np
import serial

from drivers.thermal.gy_mcu90640 import (
    DecodedFrame,
    FrameLayout,
    FrameParser,
    ModuleProfile,
    Plausibility,
)
from station.domain.model import ThermalFrame

log = logging.getLogger("station.thermal.htpa32x32")

ROWS = COLS = 32
FRAME_LEN = 2055
HEADER = b"\xe1"
PIXEL_OFFSET = 1
DIE_OFFSET = 1 + 2 * ROWS * COLS  # 2049
DECI_K_ZERO = 2731  # 273.1 K in deci-kelvin, as the SDK subtracts
QUERY = bytes((0xEE, 0xE1, 0x01, 0x55, 0xFF, 0xFC, 0xFD, 0xFF))
BAUD = 115200
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
    """A 32×32 image in °C (scene orientation) → the module's 2055 bytes (0.1 °C resolution)."""
    if img_c.shape != (ROWS, COLS):
        raise ValueError(f"need a {ROWS}×{COLS} image")
    raw = np.round(np.asarray(img_c, dtype=np.float64) * 10.0).astype(np.int64) + DECI_K_ZERO
    die = int(round(die_c * 10.0)) + DECI_K_ZERO
    if raw.min() < 0 or raw.max() > 0xFFFF:
        raise ValueError("temperature outside what the frame can carry")
    return HEADER + raw.astype(">u2").tobytes() + die.to_bytes(2, "big") + trailer[:4].ljust(4, b"\x00")


class HtpaSource:
    """``ThermalSource`` for the HTPA32×32 module: asks for a frame every period, parses the answer."""

    def __init__(self, port: str, refresh_hz: float = 4.0, clock=time.monotonic, name: str = "htpa32x32") -> None:
        self.name = name
        self._port = port
        self._period = 1.0 / refresh_hz
        self._clock = clock
        self._parser = FrameParser(HTPA32X32)
        self._queue: deque[ThermalFrame] = deque(maxlen=2)
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ser: serial.Serial | None = None
        self._seq = 0
        self._requests = 0
        self._timeouts = 0

    def start(self) -> None:
        self._ser = serial.Serial(self._port, BAUD, timeout=0.02, exclusive=True)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="thermal-htpa", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        if self._ser is not None:
            self._ser.close()
            self._ser = None

    def read_frame(self, timeout: float) -> ThermalFrame | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._queue:
                left = deadline - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    return None
                self._cond.wait(left)
            return self._queue.popleft()

    def stats(self) -> dict[str, int | float | str]:
        out: dict[str, int | float | str] = dict(self._parser.counter_dict())
        state = "connected" if self._thread is not None and self._thread.is_alive() and not self._stop.is_set() else "stopped"
        # a request that got no frame is this source's stall: same key as the GY driver's
        out.update(state=state, port=self._port, baud=BAUD, requests=self._requests, stalls=self._timeouts)
        return out

    def _run(self) -> None:
        ser = self._ser
        assert ser is not None
        while not self._stop.is_set():
            t0 = self._clock()
            self._parser.reset()  # a request starts clean: no half frame can carry over
            ser.reset_input_buffer()
            ser.write(QUERY)
            self._requests += 1
            got = False
            # 2055 bytes take 178 ms at 115200 baud; allow twice that before calling it a timeout.
            while not got and self._clock() - t0 < 0.4 and not self._stop.is_set():
                try:
                    data = ser.read(ser.in_waiting or 1)
                except (serial.SerialException, OSError) as exc:
                    log.warning("htpa read failed port=%s error=%s", self._port, exc)
                    self._stop.wait(0.5)
                    break
                for item in self._parser.feed(data):
                    if isinstance(item, DecodedFrame):
                        got = True
                        with self._cond:
                            self._seq += 1
                            self._queue.append(ThermalFrame(item.pixels_c, item.die_c, self._seq, self._clock(), self.name))
                            self._cond.notify_all()
            if not got:
                self._timeouts += 1
            self._stop.wait(max(0.0, self._period - (self._clock() - t0)))


class HtpaEmulator:
    """The module behind a pty: answers each query with one frame from ``render`` at 115200-baud pace."""

    def __init__(self, render, seed: int | None = None) -> None:
        import os

        self._render = render
        self.master, self._slave = os.openpty()
        self.port = os.ttyname(self._slave)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="htpa-emulator", daemon=True)
        self.queries = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        import os

        self._stop.set()
        self._thread.join(timeout=2.0)
        os.close(self.master)
        os.close(self._slave)

    def _run(self) -> None:
        import os
        import select

        buf = b""
        while not self._stop.is_set():
            r, _, _ = select.select([self.master], [], [], 0.05)
            if not r:
                continue
            buf += os.read(self.master, 256)
            while QUERY in buf:
                buf = buf[buf.index(QUERY) + len(QUERY) :]
                self.queries += 1
                img, die = self._render(time.monotonic())
                frame = encode_frame(img, die)
                for i in range(0, len(frame), 256):  # pace like the wire: 10 bits per byte
                    os.write(self.master, frame[i : i + 256])
                    time.sleep(256 * 10 / BAUD)
