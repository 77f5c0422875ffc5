"""Value types shared by the domain, the ports and the adapters.

Everything here is plain data: no I/O, no threads. Times are seconds; ``t`` fields
are monotonic-clock readings (``time.monotonic()`` domain) so latencies survive a wall-clock
step, while ``wall`` fields are UNIX time for records that leave the box.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np


class Decision(StrEnum):
    """The gate decision for one screened person."""

    PASS = "pass"
    DENY_FEVER = "deny_fever"
    DENY_CODE = "deny_code"
    RETRY = "retry"
    MANUAL_CHECK = "manual_check"


class CodeColour(StrEnum):
    """The colour a health code carries: what its holder may do."""

    GREEN = "green"
    YELLOW = "yellow"
    RED = "red"


class CodeStatus(StrEnum):
    """What a verifier concluded about one decoded payload."""

    VALID = "valid"  # genuine and in date: the colour can be trusted
    EXPIRED = "expired"  # genuine but outside its validity window
    INVALID = "invalid"  # malformed, garbage, or fails a check: rejected with a reason
    UNVERIFIABLE = "unverifiable"  # cannot be judged here (unknown issuer, back end unreachable)


@dataclass(frozen=True, slots=True)
class Box:
    """Axis-aligned box in pixel coordinates of the image it was found in."""

    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def width(self) -> float:
        """Return the width in pixels (0 for an inverted box)."""
        return max(0.0, self.x2 - self.x1)

    @property
    def height(self) -> float:
        """Return the height in pixels (0 for an inverted box)."""
        return max(0.0, self.y2 - self.y1)

    @property
    def area(self) -> float:
        """Return the area in square pixels."""
        return self.width * self.height

    @property
    def centre(self) -> tuple[float, float]:
        """Return the centre point (x, y)."""
        return ((self.x1 + self.x2) / 2.0, (self.y1 + self.y2) / 2.0)

    def iou(self, other: Box) -> float:
        """Return the intersection over union with ``other`` (0 when either box is empty)."""
        ix = max(0.0, min(self.x2, other.x2) - max(self.x1, other.x1))
        iy = max(0.0, min(self.y2, other.y2) - max(self.y1, other.y1))
        inter = ix * iy
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0

    def as_list(self) -> list[float]:
        """Return ``[x1, y1, x2, y2]`` rounded to 0.1 px, as records store it."""
        return [round(self.x1, 1), round(self.y1, 1), round(self.x2, 1), round(self.y2, 1)]


@dataclass(frozen=True, slots=True)
class VisibleFrame:
    """One frame from the visible camera (BGR, uint8, H×W×3)."""

    image: np.ndarray
    seq: int
    t: float  # monotonic time of capture


@dataclass(frozen=True, slots=True)
class ThermalFrame:
    """One decoded thermal image, oriented as the scene is seen (mirroring already undone)."""

    pixels_c: np.ndarray  # float32, rows × cols, °C
    die_c: float  # sensor die temperature (Ta) — not the room temperature
    seq: int
    t: float  # monotonic time the frame's last byte arrived
    source: str = ""  # module profile that produced it, e.g. "gy-mcu90640"


@dataclass(frozen=True, slots=True)
class FaceDetection:
    """One face the detector found, with its confidence."""

    box: Box
    score: float


@dataclass(frozen=True, slots=True)
class FaceObservation:
    """The detector's result for one visible frame."""

    frame_seq: int
    captured_t: float  # when the frame was captured
    done_t: float  # when detection finished
    faces: tuple[FaceDetection, ...]
    frame_size: tuple[int, int]  # (width, height)
    detect_ms: float
    # Laplacian variance of each face's grey crop, in ``faces`` order (empty when not measured): how
    # sharp the face is, for choosing a person's best capture frame (station.domain.tracking).
    sharpness: tuple[float, ...] = ()


@dataclass(frozen=True, slots=True)
class DecodedCode:
    """A symbol found in an image, before anyone judged it."""

    payload: bytes
    symbology: str
    box: Box | None
    decoder: str


@dataclass(frozen=True, slots=True)
class CodeVerdict:
    """A verifier's judgement of one decoded payload."""

    status: CodeStatus
    colour: CodeColour | None
    reason: str  # machine-readable reason code, e.g. "ok", "expired", "not_json"
    source: str  # which verifier decided, e.g. "local_unsigned", "online", "cached"
    subject_ref: str | None = None  # non-reversible reference to the holder, never the raw id
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CodeObservation:
    """The code pipeline's result for one visible frame in which a code was found."""

    frame_seq: int
    captured_t: float
    done_t: float
    verdict: CodeVerdict
    decode_ms: float
    decoder: str


@dataclass(frozen=True, slots=True)
class TemperatureMeasurement:
    """One attempt to measure the face temperature in one thermal frame.

    ``state`` is ``measured`` only when ``core_c`` is a reading the gate may use; every other state
    says why not. ``terms`` records each compensation term so a reading can be audited.
    """

    state: str
    t: float
    core_c: float | None = None
    skin_c: float | None = None
    terms: dict[str, float] = field(default_factory=dict)
    n_pixels: int = 0
    thermal_seq: int = -1


DECISION_SOURCES = ("station", "staff")
"""Who can decide a screening: the station itself, or staff checking a person without a smartphone."""


@dataclass(frozen=True, slots=True)
class ScreeningEvent:
    """The record of one screening: what was decided, why, from what, and how fast."""

    event_id: str
    station_id: str
    site: str
    lane: str
    decision: Decision
    reason: str
    alarm: bool
    wall_ts: float  # UNIX time of the decision
    temperature_c: float | None
    temperature: dict[str, Any]  # skin, terms, n_pixels, samples, state
    code_colour: CodeColour | None
    code: dict[str, Any]  # status, reason, source, decoder, subject_ref
    face: dict[str, Any]  # box, score, frame size
    stage_t: dict[str, float]  # monotonic stamps: enter, face, temperature, code, decision
    latency_ms: dict[str, float]  # per stage from enter, plus compute figures and total
    policy: dict[str, str]  # the named policies that applied
    clock_synced: bool = False
    # Who decided: "station" (its own sensors and code readers) or "staff" (the operator-assisted
    # check on the touch page, station/web/desk.py); see DECISION_SOURCES.
    decision_source: str = "station"

    def as_record(self) -> dict[str, Any]:
        """Return the JSON-able form used for storage, MQTT and ``--json`` output."""
        return {
            "event_id": self.event_id,
            "station_id": self.station_id,
            "site": self.site,
            "lane": self.lane,
            "decision": self.decision.value,
            "reason": self.reason,
            "alarm": self.alarm,
            "ts": self.wall_ts,
            "clock_synced": self.clock_synced,
            "temperature_c": self.temperature_c,
            "temperature": self.temperature,
            "code_colour": self.code_colour.value if self.code_colour else None,
            "code": self.code,
            "face": self.face,
            "latency_ms": self.latency_ms,
            "policy": self.policy,
            "decision_source": self.decision_source,
        }


class GateAction(StrEnum):
    """What the gate hardware is told to do."""

    OPEN = "open"  # release the barrier once
    HOLD = "hold"  # keep closed, show "stop"
    RETRY = "retry"  # keep closed, ask to present again
    ALARM = "alarm"  # keep closed, sound the alarm, call staff


@dataclass(frozen=True, slots=True)
class GateCommand:
    """An instruction to the gate hardware that is only valid until ``deadline_t``.

    A command that reaches the gate after its deadline is refused: a backlog must never actuate.
    """

    event_id: str
    action: GateAction
    decision: Decision
    issued_t: float
    deadline_t: float


@dataclass(frozen=True, slots=True)
class GateResult:
    """What the gate did with one command."""

    event_id: str
    action: GateAction
    executed: bool
    reason: str  # "ok", "expired", "rejected: …" (command inconsistent with its decision), "fault: …"
    t: float
