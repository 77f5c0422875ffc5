"""The real clock: monotonic for latencies and deadlines, wall for records, NTP sync state."""

from __future__ import annotations

import os
import time

# systemd-timesyncd touches this file once the clock has been synchronised since boot.
TIMESYNC_FLAG = "/run/systemd/timesync/synchronized"


class SystemClock:
    name = "system"

    def __init__(self, timesync_flag: str = TIMESYNC_FLAG) -> None:
        self._flag = timesync_flag
        self._synced = False

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def synced(self) -> bool:
        # Once synced, stays synced for this boot; until then, check the flag (cheap stat).
        if not self._synced:
            self._synced = os.path.exists(self._flag)
        return self._synced
