"""Entry / exit counts that survive a restart, written at most every ``period_s``.

The lane counts every passage in memory (``DirectionCounter.counts``, per frame). Writing each
change would cost an fsync per person on the SD card, so a small thread saves the totals into the
store's ``meta`` table only when they changed and at most every ``period_s`` seconds, plus once at
stop. A power cut loses at most ``period_s`` worth of counts — they are statistics, not the event
record (every screening is durable on its own).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, MutableMapping
from typing import Protocol

log = logging.getLogger("station.lane.counts")

SAVE_PERIOD_S = 5.0


class CountsStore(Protocol):
    """Where the totals are kept (the event store's ``meta`` table)."""

    def direction_counts(self) -> dict[str, int]:
        """Return the totals as last saved."""
        ...

    def save_direction_counts(self, counts: Mapping[str, int]) -> None:
        """Persist the totals."""
        ...


class CountsKeeper:
    """Keeps the lane's live entry / exit counts saved in the store, from a thread of its own."""

    def __init__(self, store: CountsStore, counts: MutableMapping[str, int], *, period_s: float = SAVE_PERIOD_S) -> None:
        self.store = store
        self.counts = counts  # the lane's live dict (mutated by the lane thread; read as a copy here)
        self.period_s = period_s
        self.saves = 0
        self.errors = 0
        self._saved: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def restore(self) -> dict[str, int]:
        """Seed the live counts with the saved totals (call before the lane runs)."""
        saved = self.store.direction_counts()
        for k, v in saved.items():
            self.counts[k] = self.counts.get(k, 0) + v
        self._saved = dict(self.counts)
        log.info("direction counts restored entry=%d exit=%d", saved.get("entry", 0), saved.get("exit", 0))
        return saved

    def save_if_changed(self) -> bool:
        """Save the totals if they changed since the last save; return True when they were saved."""
        now = dict(self.counts)
        if now == self._saved:
            return False
        try:
            self.store.save_direction_counts(now)
        except Exception:  # a store hiccup must not kill the counting thread; logged, counted, retried next period
            log.exception("direction counts not saved counts=%s", now)
            self.errors += 1
            return False
        self._saved = now
        self.saves += 1
        return True

    def start(self) -> None:
        """Start the saving thread."""
        self._thread = threading.Thread(target=self._run, name="station-counts", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self.save_if_changed()

    def stop(self) -> None:
        """Stop the thread and save the final totals (call after the lane has stopped)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        self.save_if_changed()
