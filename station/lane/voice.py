"""The gate's voice: prompts said on their own thread, so speaking never delays a decision.

``VoiceQueue.say`` returns at once from any thread (the gate's executor, the prompt watcher). A
bounded queue of ``max_pending`` prompts feeds one voice thread that calls the speaker (a
``station.ports.Speaker``: ALSA clips in ``drivers/speaker``, or :class:`LoggedSpeaker` on a box
without a sound card). When prompts come faster than they can be said, the oldest one still waiting
is dropped for the newest (counted): a person hears what is true now, not a backlog.

Every prompt said is one log line (``voice prompt said voice.key=… voice.output=…``); on a box
without a sound card that line is all the voice there is.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from station.domain.prompts import Phrase, VolumeSchedule
from station.ops.ratelimit import FailureLog
from station.ports import Speaker

log = logging.getLogger("station.voice")

MAX_PENDING = 2


def local_hour_minute() -> tuple[int, int]:
    """Return the local time of day (hour, minute): the quiet hours follow the clock where the gate stands."""
    now = dt.datetime.now().astimezone()
    return now.hour, now.minute


class LoggedSpeaker:
    """Stand in for a loudspeaker on a box without a sound card: the voice queue's log line is the prompt."""

    name = "log"

    def play(self, phrase: Phrase, language: str, volume: int) -> None:
        """Say nothing (the queue has logged the prompt)."""


@dataclass(frozen=True, slots=True)
class _Pending:
    phrase: Phrase
    about: str  # the event id a decision's prompt is for; "" for a next-step prompt
    queued_t: float


class VoiceQueue:
    """Say prompts through a speaker on one thread; at most ``max_pending`` wait, the newest kept."""

    def __init__(
        self,
        speaker: Speaker,
        language: str,
        schedule: VolumeSchedule,
        *,
        local_time: Callable[[], tuple[int, int]] = local_hour_minute,
        monotonic: Callable[[], float] = time.monotonic,
        max_pending: int = MAX_PENDING,
    ) -> None:
        """Prepare the queue; nothing is said before :meth:`start`."""
        self.speaker = speaker
        self.language = language
        self.schedule = schedule
        self.local_time = local_time
        self.monotonic = monotonic
        self._pending: deque[_Pending] = deque()
        self.max_pending = max_pending
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.said = 0
        self.dropped = 0
        self.failed = 0
        self.speaking: str | None = None  # the key being said now
        self.failures = FailureLog(log, "voice prompt", monotonic=monotonic)

    def start(self) -> None:
        """Start the voice thread."""
        self._thread = threading.Thread(target=self._run, name="station-voice", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the prompt being said (the ones waiting are dropped)."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def say(self, phrase: Phrase, about: str = "") -> None:
        """Queue ``phrase`` to be said and return at once; the oldest waiting prompt makes room for it."""
        item = _Pending(phrase, about, self.monotonic())
        with self._cond:
            while len(self._pending) >= self.max_pending:
                old = self._pending.popleft()
                self.dropped += 1
                log.info("voice prompt dropped", extra={"voice": self._fields(old, replaced_by=phrase.key)})
            self._pending.append(item)
            self._cond.notify()

    def stats(self) -> dict[str, Any]:
        """Return the voice's counters and what it says now."""
        with self._cond:
            pending = len(self._pending)
        return {
            "output": self.speaker.name,
            "language": self.language,
            "said": self.said,
            "dropped": self.dropped,
            "failed": self.failed,
            "pending": pending,
            "speaking": self.speaking,
            "volume": self.volume_now(),
        }

    def volume_now(self) -> int:
        """Return the volume the schedule gives for now."""
        hour, minute = self.local_time()
        return self.schedule.volume_at(hour, minute)

    def idle(self) -> bool:
        """Return True when nothing is being said or waiting."""
        with self._cond:
            return not self._pending and self.speaking is None

    def _fields(self, item: _Pending, **more: Any) -> dict[str, Any]:
        fields: dict[str, Any] = {"key": item.phrase.key, "language": self.language, "output": self.speaker.name}
        if item.about:
            fields["event_id"] = item.about
        fields.update(more)
        return fields

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stop:
                    self._cond.wait()
                if self._stop:
                    for left in self._pending:  # each prompt still gets its one line, said or not
                        log.info("voice prompt dropped", extra={"voice": self._fields(left, replaced_by="stop")})
                    self.dropped += len(self._pending)
                    self._pending.clear()
                    return
                item = self._pending.popleft()
                self.speaking = item.phrase.key
            volume = self.volume_now()
            try:
                self.speaker.play(item.phrase, self.language, volume)
            except Exception as exc:  # a device gone or a clip missing: this prompt only; the gate never waits on it
                self.failed += 1
                self.failures.report(type(exc).__name__, exc, key=item.phrase.key)
            else:
                self.said += 1
                log.info(
                    "voice prompt said",
                    extra={"voice": self._fields(item, volume=volume, text=item.phrase.text(self.language))},
                )
            finally:
                with self._cond:
                    self.speaking = None
