"""Clocks a test can step: the wall clock jumps (NTP, a hand-set date, 1970 at boot) while the monotonic one runs on.

``SteppedClock`` is a real :class:`station.ports.Clock`: ``monotonic()`` is the host's own (so it
agrees with the frames the adapters stamp), ``wall()`` is the host's wall time plus an offset the
test moves, and ``synced()`` is what the test says. ``ManualClock`` moves only when told to.
"""

from __future__ import annotations

import threading
import time

EPOCH_1970 = 86_400.0  # one day after the epoch: where a Pi without RTC may start


class SteppedClock:
    """The host's monotonic clock, and a wall clock the test steps by hours or to 1970."""

    name = "stepped"

    def __init__(self, offset_s: float = 0.0, synced: bool = True) -> None:
        self._lock = threading.Lock()
        self.offset_s = offset_s
        self.is_synced = synced
        self.steps = 0

    def monotonic(self) -> float:
        """Return the host's monotonic time."""
        return time.monotonic()

    def wall(self) -> float:
        """Return the host's wall time plus the current offset."""
        with self._lock:
            return time.time() + self.offset_s

    def synced(self) -> bool:
        """Return what the test said."""
        return self.is_synced

    def step(self, delta_s: float) -> None:
        """Jump the wall clock by ``delta_s`` (forward or back)."""
        with self._lock:
            self.offset_s += delta_s
            self.steps += 1

    def set_wall(self, wall: float) -> None:
        """Jump the wall clock to read ``wall`` now (1970: ``EPOCH_1970``)."""
        with self._lock:
            self.offset_s = wall - time.time()
            self.steps += 1


class ManualClock:
    """A clock that moves only when told: ``advance`` moves both clocks, ``step`` only the wall one."""

    name = "manual"

    def __init__(self, wall: float = EPOCH_1970, mono: float = 1000.0, synced: bool = False) -> None:
        self.mono, self.wall_s, self.is_synced = mono, wall, synced

    def monotonic(self) -> float:
        """Return the monotonic reading."""
        return self.mono

    def wall(self) -> float:
        """Return the wall reading."""
        return self.wall_s

    def synced(self) -> bool:
        """Return what the test said."""
        return self.is_synced

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass on both clocks."""
        self.mono += seconds
        self.wall_s += seconds

    def step(self, delta_s: float) -> None:
        """Jump the wall clock alone by ``delta_s``."""
        self.wall_s += delta_s
