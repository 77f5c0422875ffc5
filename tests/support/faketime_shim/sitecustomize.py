"""Put on PYTHONPATH of a Python run under ``faketime`` with ``FAKETIME_DONT_FAKE_MONOTONIC=1`` (tests/test_clock_faketime.py).

libfaketime 0.9.10 (Debian 12) answers Python's ``time.sleep`` (``clock_nanosleep`` on CLOCK_MONOTONIC
with an absolute deadline) with EINVAL when it leaves the monotonic clock alone; and when it fakes the
monotonic clock too, every ``threading.Event.wait`` (``sem_clockwait`` on the real clock with a faked
deadline) waits for days. So the monotonic clock stays real, as on a Pi whose wall clock is wrong,
and ``time.sleep`` waits on an event instead: the same wait, by the call that works. Nothing else changes.
"""

import threading
import time


def _sleep(seconds: float) -> None:
    if seconds > 0:
        threading.Event().wait(seconds)


time.sleep = _sleep
