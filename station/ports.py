"""The seams between the station core and the outside world (ports, in ports-and-adapters terms).

Each protocol is small on purpose: an adapter in ``drivers/`` implements exactly one of them for one
device or service, and every adapter has a fake with the same interface for machines without the
hardware. Nothing in ``station.domain`` imports an adapter; the composition root (``station.app``)
is the only place that picks concrete classes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

from station.domain.model import (
    CodeVerdict,
    DecodedCode,
    FaceDetection,
    GateCommand,
    GateResult,
    ScreeningEvent,
    ThermalFrame,
    VisibleFrame,
)


@runtime_checkable
class Clock(Protocol):
    """Time as the station sees it."""

    def monotonic(self) -> float:
        """Seconds on a clock that never steps (latencies, deadlines)."""

    def wall(self) -> float:
        """UNIX time (records, expiry checks)."""

    def synced(self) -> bool:
        """True when the wall clock is known to be synchronised (a Pi has no RTC)."""


class Startable(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


@runtime_checkable
class ThermalSource(Protocol):
    """A thermal camera that yields whole, checksum-valid frames."""

    name: str

    def start(self) -> None:
        """Open the device and begin reading; returns once the link is configured."""

    def stop(self) -> None: ...

    def read_frame(self, timeout: float) -> ThermalFrame | None:
        """The next frame, or None if none arrived within ``timeout`` seconds."""

    def stats(self) -> Mapping[str, int | float | str]:
        """Counters: frames_ok, checksum_errors, resync_bytes, stalls, …"""


@runtime_checkable
class FrameSource(Protocol):
    """A visible camera."""

    name: str

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def read(self, timeout: float) -> VisibleFrame | None:
        """The next frame, or None on timeout or end of stream."""

    def stats(self) -> Mapping[str, int | float | str]: ...


@runtime_checkable
class CodeReader(Protocol):
    """Finds and decodes 2-D codes in an image; judges nothing."""

    name: str

    def decode(self, image: np.ndarray) -> list[DecodedCode]: ...


@runtime_checkable
class CodeVerifier(Protocol):
    """Judges a decoded payload: genuine? in date? which colour?"""

    name: str

    def verify(self, payload: bytes, now_wall: float) -> CodeVerdict: ...


@runtime_checkable
class FrameCodeVerifier(CodeVerifier, Protocol):
    """A verifier that may also look at the pixels around the code (colour on screen).

    The pipeline calls ``verify_in_frame`` when a verifier has it; ``image`` may be None (a code
    typed in), and then it must judge from the payload alone."""

    def verify_in_frame(self, code: DecodedCode, image: np.ndarray | None, now_wall: float) -> CodeVerdict: ...


@runtime_checkable
class FaceDetector(Protocol):
    name: str

    def warm_up(self) -> float:
        """Run one inference so the first real frame is not slow; returns its duration in ms."""

    def detect(self, image: np.ndarray) -> list[FaceDetection]: ...


@runtime_checkable
class PlateReader(Protocol):
    name: str

    def warm_up(self) -> float: ...

    def read(self, image: np.ndarray) -> list[dict[str, Any]]:
        """Plates found: text, confidence, box, corners."""


@runtime_checkable
class GateOutput(Protocol):
    """Relay, buzzer and lights of one lane. The de-energised state is the safe (closed) state."""

    name: str

    def execute(self, command: GateCommand, now: float) -> GateResult:
        """Carry out ``command`` unless ``now`` is past its deadline."""

    def safe_state(self) -> None:
        """Barrier closed, alarm off, lights to idle."""

    def close(self) -> None: ...

    def history(self) -> list[tuple[float, str, Any]]:
        """What the outputs did, for audits and tests: (monotonic time, output, value)."""


@runtime_checkable
class EventStore(Protocol):
    """Durable local log of screenings with a transactional outbox."""

    def record(self, event: ScreeningEvent) -> int:
        """Write the event and its outbox rows in one transaction; returns the event's row id."""

    def record_gate_result(self, result: GateResult) -> None: ...

    def close(self) -> None: ...


class PublishError(Exception):
    """The transport refused a message; it stays in the outbox."""


class NotConnectedError(PublishError):
    """No connection right now; the outbox keeps the message until there is one."""


@runtime_checkable
class Publisher(Protocol):
    """A message transport to the command centre (MQTT in production).

    ``on_connected`` hooks run after every (re)connect: whatever was in flight before is gone and
    must be re-sent from the outbox.
    """

    on_connected: list[Callable[[], None]]

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool = False) -> int:
        """Hand a message to the transport; returns an id whose acknowledgement reaches the ack handler.

        Raises ``NotConnectedError`` while disconnected: the outbox, not the transport, queues.
        """

    def set_ack_handler(self, on_ack: Callable[[int], None]) -> None: ...

    def connected(self) -> bool: ...
