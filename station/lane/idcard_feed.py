"""The ID card reader as a decision source: each card read is judged and handed to the lane like a health code.

The feed thread takes cards from the reader (``IdCardReader`` port), judges each one
(``station.codes.idcard.judge_card``: the centre look-up of its keyed hash, which may take up to the
look-up timeout, so it runs here and never on the lane thread) and offers the verdict as a
``CodeObservation`` with ``decoder = "idcard"``. The lane decides on it under the same named
policies as a code shown on a phone; the event records ``code.source = "idcard"``, the keyed hash
(``subject_ref``), the masked number and the card's end date.

A card shown while nobody is being screened is judged but the lane ignores it (one screening per
person in front of the camera); it is counted as ``cards_no_screening``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from station.codes.idcard import HashLookup, judge_card, mark_unsynced
from station.domain.model import CodeObservation
from station.domain.screening import LaneState
from station.ports import Clock, IdCardReader

log = logging.getLogger("station.lane.idcard")

DECODER = "idcard"


class IdCardFeed:
    """Reads cards on its own thread, judges them, offers the verdicts to the lane."""

    def __init__(
        self,
        reader: IdCardReader,
        offer: Callable[[CodeObservation], None],
        clock: Clock,
        lookup: HashLookup | None,
        lane_state: Callable[[], LaneState] | None = None,
    ) -> None:
        self.reader = reader
        self._offer = offer
        self._clock = clock
        self.lookup = lookup
        self._lane_state = lane_state
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.counters: dict[str, int] = {"cards": 0, "cards_no_screening": 0, "errors": 0}

    def start(self) -> None:
        """Start the reader and the feed thread."""
        self.reader.start()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="station-idcard", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the feed thread, then the reader."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        self.reader.stop()

    def stats(self) -> dict[str, Any]:
        """Return the feed's counters and the reader's."""
        return {**self.counters, "reader": dict(self.reader.stats())}

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                facts = self.reader.read(0.5)
                if facts is None:
                    continue
                t0 = self._clock.monotonic()
                verdict = mark_unsynced(facts, judge_card(facts, self._clock.wall(), self.lookup), self._clock.synced())
                done = self._clock.monotonic()
            except Exception as exc:  # a reader or judge bug: this card only, counted and logged
                self.counters["errors"] += 1
                log.error("ID card feed error=%s", type(exc).__name__)
                self._stop.wait(0.1)
                continue
            self.counters["cards"] += 1
            if self._lane_state is not None and self._lane_state() is not LaneState.SCREENING:
                self.counters["cards_no_screening"] += 1
            log.info(
                "ID card judged status=%s reason=%s id=%s",
                verdict.status.value,
                verdict.reason,
                facts.id_masked,
                extra={"idcard": {"status": verdict.status.value, "reason": verdict.reason, "id_masked": facts.id_masked}},
            )
            self._offer(CodeObservation(-1, t0, done, verdict, round((done - t0) * 1000.0, 2), DECODER))
