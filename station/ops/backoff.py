"""The one back-off for every reconnect and restart loop: exponential, capped, optionally jittered."""

from __future__ import annotations

import random
from typing import Literal, Protocol

Jitter = Literal["none", "full", "equal"]


class UniformSource(Protocol):
    """What ``Backoff`` needs from a random source (``random.Random`` has it)."""

    def uniform(self, a: float, b: float) -> float:
        """Return a number between ``a`` and ``b``."""
        ...


class Backoff:
    """Delays between attempts: ``initial``, then × ``factor`` per attempt up to ``maximum``.

    ``jitter`` spreads a fleet's retries after a shared outage (a broker restart):

    * ``"none"``: ``initial, initial×factor, …, maximum`` exactly.
    * ``"full"``: uniform in ``[0, ceiling]``, the ceiling following the exact sequence.
    * ``"equal"``: half fixed, half random, ``[ceiling/2, ceiling]``; the next ceiling grows from the
      delay actually returned, so no delay is more than ``factor`` × the one before (paho caps each
      MQTT reconnect wait at twice the last one).

    ``next()`` returns the delay before the next attempt; ``reset()`` after a success starts again at
    ``initial``. ``rng`` is the random source: the ``random`` module unless given (tests pass a seeded
    ``random.Random``).
    """

    def __init__(
        self, initial: float, maximum: float, factor: float = 2.0, jitter: Jitter = "none", rng: UniformSource | None = None
    ) -> None:
        if not 0.0 <= initial <= maximum:
            raise ValueError(f"need 0 <= initial <= maximum, got initial={initial} maximum={maximum}")
        if factor < 1.0:
            raise ValueError(f"factor must be at least 1, got {factor}")
        if jitter not in ("none", "full", "equal"):
            raise ValueError(f"jitter must be none, full or equal, got {jitter!r}")
        self.initial = float(initial)
        self.maximum = float(maximum)
        self.factor = float(factor)
        self.jitter: Jitter = jitter
        self._rng: UniformSource = rng if rng is not None else random
        self._ceiling: float | None = None  # ceiling of the last delay; None: no attempt since reset
        self._last: float | None = None
        self.attempts = 0  # delays handed out since the last reset

    @property
    def last(self) -> float | None:
        """Return the delay ``next()`` returned last, None right after a reset."""
        return self._last

    def reset(self) -> None:
        """Start again at ``initial`` (call after a success)."""
        self._ceiling = None
        self._last = None
        self.attempts = 0

    def resume(self, last: float) -> None:
        """Continue a sequence whose previous delay was ``last`` (for a caller that kept only that delay)."""
        self._ceiling = float(last)
        self._last = float(last)

    def next(self) -> float:
        """Return the delay to wait before the next attempt and advance the sequence."""
        if self._ceiling is None or self._last is None:
            ceiling = self.initial
        elif self.jitter == "equal":
            ceiling = max(self.initial, self._last) * self.factor
        else:
            ceiling = max(self.initial, self._ceiling) * self.factor
        ceiling = min(ceiling, self.maximum)
        if self.jitter == "full":
            delay = self._rng.uniform(0.0, ceiling)
        elif self.jitter == "equal":
            delay = ceiling / 2 + self._rng.uniform(0.0, ceiling / 2)
            if self._last is not None:
                delay = min(delay, self._last * self.factor)
            delay = max(delay, self.initial / 2)
        else:
            delay = ceiling
        self._ceiling = ceiling
        self._last = delay
        self.attempts += 1
        return delay
