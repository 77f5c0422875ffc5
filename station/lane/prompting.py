"""The next step, told: the lane's state becomes a prompt on the display and, when it asks something, in the voice.

A watcher thread samples ``ScreeningLane.progress`` ``rate_hz`` times a second (a snapshot read,
never a lock on the lane thread) and turns it into the next-step prompt
(``station.domain.prompts.next_step``). A change goes to every display listener (the operator
page's SSE stream) and, when the prompt asks the person to do something, to the voice. Each
decision's own prompt ("体温正常，请通行", "体温异常，请到旁边复测" …) is given to the voice by the
decision listener, which only queues it: the gate's executor never waits on a speaker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from station.domain.prompts import LaneProgress, Phrase, decision_prompt, next_step, spoken
from station.lane.pipeline import Decided
from station.lane.voice import VoiceQueue
from station.ops.ratelimit import FailureLog

log = logging.getLogger("station.prompts")

RATE_HZ = 10.0
REPEAT_AFTER_S = 4.0  # the same spoken step is not said again sooner (a reading flickering between states)


class LanePrompter:
    """Turn the lane's state and its decisions into prompts for the display and the voice."""

    def __init__(
        self,
        progress: Callable[[float], LaneProgress],
        *,
        voice: VoiceQueue | None = None,
        id_reader: bool = False,
        monotonic: Callable[[], float] = time.monotonic,
        rate_hz: float = RATE_HZ,
    ) -> None:
        """Watch ``progress`` (the lane's ``progress(now)``); say prompts through ``voice`` when given."""
        self.progress = progress
        self.voice = voice
        self.id_reader = id_reader
        self.monotonic = monotonic
        self.period_s = 1.0 / rate_hz
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self.current: dict[str, Any] = {"state": None, "prompt": None}
        self._last_spoken: dict[str, float] = {}
        # A fault that repeats at every poll (10 a second) is logged once a minute, counted always.
        self.failures = FailureLog(log, "next-step prompt", monotonic=monotonic)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the watcher thread."""
        self._thread = threading.Thread(target=self._run, name="station-prompts", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the watcher thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.poll()
            except Exception as exc:  # a prompt is a courtesy: count it, keep watching
                self.failures.report(f"poll:{type(exc).__name__}", exc)

    def poll(self) -> dict[str, Any] | None:
        """Sample the lane once; on a change tell the listeners (and the voice) and return the new message."""
        now = self.monotonic()
        progress = self.progress(now)
        step = next_step(progress, id_reader=self.id_reader)
        msg: dict[str, Any] = {"state": progress.state, "prompt": step.as_dict() if step is not None else None}
        if msg == self.current:
            return None
        self.current = msg
        for fn in list(self.listeners):
            try:
                fn(msg)
            except Exception as exc:  # one display's failure is not the voice's
                self.failures.report(f"listener:{type(exc).__name__}", exc)
        if progress.state == "screening" and step is not None and spoken(step):
            self._say(step, now)
        return msg

    def _say(self, step: Phrase, now: float) -> None:
        last = self._last_spoken.get(step.key)
        if self.voice is None or (last is not None and now - last < REPEAT_AFTER_S):
            return
        self._last_spoken[step.key] = now
        self.voice.say(step)

    def on_decided(self, d: Decided) -> None:
        """Queue the decision's prompt for the voice (pipeline listener: returns at once)."""
        e = d.event
        prompt = decision_prompt(e.decision.value, e.reason, id_reader=self.id_reader)
        if prompt is not None and self.voice is not None:
            self.voice.say(prompt, about=e.event_id)
