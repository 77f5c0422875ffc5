"""Raw serial captures: record them, decode them, replay them through the emulator.

A capture is two files: ``NAME.bin``, the bytes exactly as the port delivered them (so
``stationctl thermal decode NAME.bin`` works on it, and so does any other tool), and
``NAME.bin.jsonl``, one line per read ``{"t": seconds since the first read, "offset": n, "len": k}``
that keeps the timing. ``CaptureScene`` turns a capture back into a render function for
``GyMcu90640Emulator``: the emulator then speaks the protocol and paces the link, and the frames it
sends are the recorded ones, each from the moment it was recorded.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from drivers.thermal.gy_protocol import GY_MCU90640, DecodedFrame, FrameParser, ModuleProfile


def index_path(capture: Path) -> Path:
    """Return the timing index that belongs to ``capture`` (``NAME.bin`` → ``NAME.bin.jsonl``)."""
    return capture.with_name(capture.name + ".jsonl")


class CaptureWriter:
    """Append chunks as they arrive; ``t`` is taken from ``clock`` relative to the first chunk."""

    def __init__(self, path: Path, clock: Any = time.monotonic) -> None:
        self.path = path
        self._bin: IO[bytes] = open(path, "wb")
        self._idx: IO[str] = open(index_path(path), "w")
        self._clock = clock
        self._t0: float | None = None
        self.bytes = 0

    def write(self, data: bytes) -> None:
        """Append ``data`` and its index line (nothing for an empty read)."""
        if not data:
            return
        now = self._clock()
        if self._t0 is None:
            self._t0 = now
        self._bin.write(data)
        self._idx.write(json.dumps({"t": round(now - self._t0, 6), "offset": self.bytes, "len": len(data)}) + "\n")
        self.bytes += len(data)

    def close(self) -> None:
        """Close both files."""
        self._bin.close()
        self._idx.close()


def decode_capture(data: bytes, profile: ModuleProfile = GY_MCU90640) -> tuple[list[DecodedFrame], FrameParser]:
    """Return the valid frames in ``data`` and the parser, whose counters say what was thrown away."""
    parser = FrameParser(profile)
    frames = [item for item in parser.feed(data) if isinstance(item, DecodedFrame)]
    return frames, parser


def timed_frames(capture: Path, profile: ModuleProfile = GY_MCU90640) -> Iterator[tuple[float, DecodedFrame]]:
    """Yield (time the frame's last byte was read, frame) for every valid frame of a capture."""
    data = capture.read_bytes()
    idx = index_path(capture)
    chunks = (
        [json.loads(line) for line in idx.read_text().splitlines() if line.strip()]
        if idx.exists()
        else [{"t": 0.0, "offset": 0, "len": len(data)}]
    )
    parser = FrameParser(profile)
    for c in chunks:
        offset, length = int(c["offset"]), int(c["len"])
        for item in parser.feed(data[offset : offset + length]):
            if isinstance(item, DecodedFrame):
                yield float(c["t"]), item


class CaptureScene:
    """Render function for the emulator that plays a capture back.

    It gives the frame recorded at or before ``now − start``; after the end, the last frame again
    (``loop=True``: from the start again).
    """

    def __init__(self, capture: Path, loop: bool = False) -> None:
        got = list(timed_frames(capture))
        if not got:
            raise ValueError(f"{capture}: no valid frame in the capture")
        self.times = np.array([t for t, _ in got])
        self.frames = [f for _, f in got]
        self.loop = loop
        self._start: float | None = None

    def __call__(self, now: float) -> tuple[np.ndarray, float]:
        """Return (image °C, die °C) of the frame due at ``now``."""
        if self._start is None:
            self._start = now
        t = now - self._start
        if self.loop and self.times[-1] > 0:
            t = t % (self.times[-1] + 1e-9)
        i = max(0, int(np.searchsorted(self.times, t, side="right")) - 1)
        f = self.frames[i]
        return f.pixels_c.copy(), f.die_c
