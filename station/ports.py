"""The seams between the station core and the outside world (ports, in ports-and-adapters terms).

Each protocol is small on purpose: an adapter in ``drivers/`` implements exactly one of them for one
real device or service, and the emulators in ``sim/`` implement the same protocols for machines
without the hardware. Nothing in ``station.domain`` imports an adapter; the composition root
(``station.app``) is the only place that picks concrete classes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

from station.codes.idcard import CardFacts
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
from station.domain.prompts import Phrase


@runtime_checkable
class Clock(Protocol):
    """Time as the station sees it."""

    def monotonic(self) -> float:
        """Return seconds on a clock that never steps (latencies, deadlines)."""

    def wall(self) -> float:
        """Return UNIX time (records, expiry checks)."""

    def synced(self) -> bool:
        """Return True when the wall clock is known to be synchronised (a Pi has no RTC)."""


@runtime_checkable
class ThermalSource(Protocol):
    """A thermal camera that yields whole, checksum-valid frames."""

    name: str

    def start(self) -> None:
        """Open the device and begin reading; return once the link is configured."""

    def stop(self) -> None:
        """Stop reading and release the device."""

    def read_frame(self, timeout: float) -> ThermalFrame | None:
        """Return the next frame, or None if none arrived within ``timeout`` seconds."""

    def stats(self) -> Mapping[str, int | float | str]:
        """Return the source's counters (frames_ok, checksum_errors, resync_bytes, stalls and the like)."""


@runtime_checkable
class FrameSource(Protocol):
    """A visible camera."""

    name: str

    def start(self) -> None:
        """Open the camera and begin capturing."""

    def stop(self) -> None:
        """Stop capturing and release the camera."""

    def read(self, timeout: float) -> VisibleFrame | None:
        """Return the next frame, or None on timeout or end of stream."""

    def stats(self) -> Mapping[str, int | float | str]:
        """Return the camera's counters."""


@runtime_checkable
class CodeReader(Protocol):
    """Finds and decodes 2-D codes in an image; judges nothing."""

    name: str

    def decode(self, image: np.ndarray) -> list[DecodedCode]:
        """Return every code found in ``image``, boxes in its pixel coordinates; [] when there is none."""


@runtime_checkable
class CodeVerifier(Protocol):
    """Judges a decoded payload: whether it is genuine, whether it is in date, which colour it carries."""

    name: str

    def verify(self, payload: bytes, now_wall: float) -> CodeVerdict:
        """Judge one payload; any bytes give a verdict with a reason, never an exception."""


@runtime_checkable
class FrameCodeVerifier(CodeVerifier, Protocol):
    """A verifier that may also look at the pixels around the code (colour on screen).

    The pipeline calls ``verify_in_frame`` when a verifier has it; ``image`` may be None (a code
    typed in), and then it must judge from the payload alone.
    """

    def verify_in_frame(self, code: DecodedCode, image: np.ndarray | None, now_wall: float) -> CodeVerdict:
        """Judge a decoded code, looking at ``image`` around its box when there is one."""


@runtime_checkable
class IdCardReader(Protocol):
    """A resident ID card reader: hands out each card shown as its keyed hash, masked number and dates, never more."""

    name: str

    def start(self) -> None:
        """Begin looking for cards (a reader absent now is looked for in the background)."""

    def stop(self) -> None:
        """Stop and release the reader."""

    def read(self, timeout: float) -> CardFacts | None:
        """Return the next card shown, or None after ``timeout`` seconds."""

    def stats(self) -> Mapping[str, int | float | str]:
        """Return the reader's state and counters."""


@runtime_checkable
class FaceDetector(Protocol):
    """Finds faces in a visible frame."""

    name: str

    def warm_up(self) -> float:
        """Run one inference so the first real frame is not slow; return its duration in ms."""

    def detect(self, image: np.ndarray) -> list[FaceDetection]:
        """Return the faces in a BGR frame, best score first, boxes in the frame's pixels."""


@runtime_checkable
class PlateReader(Protocol):
    """Finds and reads vehicle number plates in a visible frame."""

    name: str

    def warm_up(self) -> float:
        """Run one inference so the first real frame is not slow; return its duration in ms."""

    def read(self, image: np.ndarray) -> list[dict[str, Any]]:
        """Return the plates found: text, confidence, box, corners."""


@runtime_checkable
class GateOutput(Protocol):
    """Relay, buzzer and lights of one lane. The de-energised state is the safe (closed) state."""

    name: str

    def execute(self, command: GateCommand, now: float) -> GateResult:
        """Carry out ``command`` unless ``now`` is past its deadline."""

    def safe_state(self) -> None:
        """Close the barrier, silence the alarm, set the lights to idle."""

    def close(self) -> None:
        """Go to the safe state and release the outputs."""

    def history(self) -> list[tuple[float, str, bool]]:
        """Return what the outputs did, for audits and tests: (monotonic time, output, on)."""


@runtime_checkable
class EventStore(Protocol):
    """Durable local log of screenings with a transactional outbox."""

    def record(self, event: ScreeningEvent) -> int:
        """Write the event and its outbox rows in one transaction; return the event's row id."""

    def record_gate_result(self, result: GateResult) -> None:
        """Write what the gate did with the event's command (the audit row)."""

    def close(self) -> None:
        """Close the store."""


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
        """Hand a message to the transport; return an id whose acknowledgement reaches the ack handler.

        Raises ``NotConnectedError`` while disconnected: the outbox, not the transport, queues.
        """

    def set_ack_handler(self, on_ack: Callable[[int], None]) -> None:
        """Call ``on_ack`` with a message id once the broker acknowledged that message."""

    def connected(self) -> bool:
        """Return True while the transport has a connection."""


@runtime_checkable
class Speaker(Protocol):
    """A loudspeaker at the gate that says pre-recorded prompts (the voice of a headless gate).

    ``play`` blocks while the clip plays: the station calls it from its own voice thread
    (``station.lane.voice.VoiceQueue``), never from the lane or the gate's executor.
    """

    name: str

    def play(self, phrase: Phrase, language: str, volume: int) -> None:
        """Say ``phrase`` in ``language`` at ``volume`` percent; return once it has been said.

        Raise ``OSError`` when the device or the clip cannot be played.
        """
