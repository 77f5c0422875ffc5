"""Bounds on what hostile or faulty input can make the station do: write, log or retry.

* :class:`RateLimiter` — at most ``burst`` events per ``window_s`` per key (audit rows for refused
  commands or PIN attempts, for instance); what it refuses is counted, never silently lost.
* :class:`FailureLog` — counts failures per kind and logs each kind at most once per
  ``interval_s``, saying how many were folded into that line (a QR shown for minutes that fails on
  every frame must not flood the journal).

Both take a monotonic clock so tests move time by hand.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable
from typing import Any


class RateLimiter:
    """Sliding-window limiter: ``allow(key)`` is True for at most ``burst`` calls per ``window_s`` per key."""

    def __init__(self, burst: int, window_s: float, *, monotonic: Callable[[], float] = time.monotonic, max_keys: int = 1024) -> None:
        if burst < 1 or window_s <= 0:
            raise ValueError("burst must be >= 1 and window_s > 0")
        self.burst = burst
        self.window_s = window_s
        self.monotonic = monotonic
        self.max_keys = max_keys  # keys are often attacker-chosen (a sender's id): bound the table too
        self._hits: dict[Hashable, deque[float]] = {}
        self._lock = threading.Lock()
        self.refused: Counter[Hashable] = Counter()

    def allow(self, key: Hashable = "") -> bool:
        """Return whether one more event for ``key`` fits in its window; count it as refused if not."""
        now = self.monotonic()
        with self._lock:
            hits = self._hits.get(key)
            if hits is None:
                if len(self._hits) >= self.max_keys:
                    self._forget_idle(now)
                if len(self._hits) >= self.max_keys:  # still full of active keys: share one bucket
                    key = "<overflow>"
                hits = self._hits.setdefault(key, deque())
            while hits and now - hits[0] >= self.window_s:
                hits.popleft()
            if len(hits) >= self.burst:
                self.refused[key] += 1
                return False
            hits.append(now)
            return True

    def _forget_idle(self, now: float) -> None:
        for key in [k for k, h in self._hits.items() if not h or now - h[-1] >= self.window_s]:
            del self._hits[key]

    def refused_total(self) -> int:
        """Return how many events were refused, over all keys."""
        with self._lock:
            return sum(self.refused.values())


class FailureLog:
    """Per-kind failure counter that logs a kind at most once per ``interval_s`` (with the folded count)."""

    def __init__(
        self, logger: logging.Logger, what: str, *, interval_s: float = 60.0, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.logger = logger
        self.what = what
        self.interval_s = interval_s
        self.monotonic = monotonic
        self.counts: Counter[str] = Counter()
        self._last_logged: dict[str, float] = {}
        self._folded: Counter[str] = Counter()
        self._lock = threading.Lock()

    def report(self, kind: str, exc: BaseException | None = None, **fields: Any) -> bool:
        """Count one failure of ``kind``; return True when this one was logged."""
        now = self.monotonic()
        with self._lock:
            self.counts[kind] += 1
            last = self._last_logged.get(kind)
            if last is not None and now - last < self.interval_s:
                self._folded[kind] += 1
                return False
            folded = self._folded.pop(kind, 0)
            self._last_logged[kind] = now
        extra = "".join(f" {k}={v}" for k, v in fields.items())
        self.logger.error(
            "%s failed kind=%s total=%d folded_since_last_line=%d%s error=%r",
            self.what,
            kind,
            self.counts[kind],
            folded,
            extra,
            exc,
            exc_info=exc is not None,
        )
        return True

    def snapshot(self) -> dict[str, int]:
        """Return the failure count per kind."""
        with self._lock:
            return dict(self.counts)
