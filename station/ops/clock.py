"""The real clock: monotonic for latencies and deadlines, wall for records, NTP sync state."""

from __future__ import annotations

import os
import time

# systemd-timesyncd touches this file once the clock has been synchronised since boot.
TIMESYNC_FLAG = "/run/systemd/timesync/synchronized"


class SystemClock:
    """The host's clocks, as the :class:`station.ports.Clock` the pipeline reads."""

    name = "system"

    def __init__(self, timesync_flag: str = TIMESYNC_FLAG) -> None:
        self._flag = timesync_flag
        self._synced = False

    def monotonic(self) -> float:
        """Return seconds on a clock that never jumps (for latencies and deadlines)."""
        return time.monotonic()

    def wall(self) -> float:
        """Return the wall-clock time in seconds since the epoch (for records)."""
        return time.time()

    def synced(self) -> bool:
        """Return whether the wall clock has been synchronised (NTP) since boot."""
        # Once synced, stays synced for this boot; until then, check the flag (cheap stat).
        if not self._synced:
            self._synced = os.path.exists(self._flag)
        return self._synced
