"""Vehicle-lane logic: one event per vehicle, resident or outsider. Pure: fed plate reads with times.

The plate reader gives one read per frame; reads of the same vehicle are tied together by tracking
the plate boxes (the same IoU / centroid tracker as faces). A vehicle's plate is the text read
``min_reads`` times with at least ``min_confidence`` (single reads of a moving plate are noisy), and
then exactly one event is raised for that vehicle:

- ``resident_vehicle`` when the plate is on the resident list;
- ``outsider_vehicle`` when it is not ("discover and warn of outside vehicles").

Neither is an alarm: they go to the command centre as information and never sound the gate's
alarm or enter the alarm stream (fever is the alarm).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from station.domain.model import Box
from station.domain.tracking import FaceTracker, TrackerSettings

RESIDENT = "resident_vehicle"
OUTSIDER = "outsider_vehicle"
_SEPARATORS = str.maketrans("", "", " ·•-._\t")


def normalise_plate(text: str) -> str:
    """Return plate text as compared: upper case, separators removed (``浙A·12345`` → ``浙A12345``)."""
    return text.translate(_SEPARATORS).upper()


@dataclass(frozen=True, slots=True)
class VehicleEvent:
    """One vehicle's event: its agreed plate and whether it is a resident's."""

    kind: str  # resident_vehicle | outsider_vehicle
    plate: str
    confidence: float  # best confidence among the agreeing reads
    reads: int
    track_id: int
    t: float
    alarm: bool = False  # always False: these never enter the alarm stream
    best_t: float | None = None  # frame time of the best agreeing read (the visit's best frame)
    best_box: tuple[float, float, float, float] | None = None  # the plate's box in that frame

    def as_record(self) -> dict[str, Any]:
        """Return the JSON-able form stored and sent to the command centre."""
        return {
            "type": self.kind,
            "plate": self.plate,
            "confidence": round(self.confidence, 3),
            "reads": self.reads,
            "track_id": self.track_id,
            "alarm": self.alarm,
        }


@dataclass(slots=True)
class _Votes:
    texts: Counter[str] = field(default_factory=Counter)
    best: dict[str, float] = field(default_factory=dict)
    best_at: dict[str, tuple[float, tuple[float, float, float, float]]] = field(default_factory=dict)  # text → (t, box)
    decided: bool = False


class VehicleLane:
    """Feed ``on_plates`` every plate-reading frame; it returns the events to record."""

    def __init__(
        self,
        residents: Callable[[], Iterable[str]],
        *,
        min_reads: int = 2,
        min_confidence: float = 0.3,
        memory_s: float = 2.0,
    ) -> None:
        self._residents = residents  # called per event: an edited list applies at once
        self.min_reads = min_reads
        self.min_confidence = min_confidence
        # Plates move fast between frames and vanish behind occupants' arms: a looser, longer memory.
        self.tracker = FaceTracker(TrackerSettings(iou_min=0.2, max_jump=1.5, max_size_ratio=1.6, memory_s=memory_s))
        self._votes: dict[int, _Votes] = {}

    def on_plates(self, reads: list[dict[str, Any]], t: float) -> list[VehicleEvent]:
        """Take one frame's plate reads (``box``, ``text``, ``confidence``, ``score``); return the events now due."""
        tracks = self.tracker.update([Box(*r["box"]) for r in reads], [float(r.get("score", 1.0)) for r in reads], t)
        for tid in [tid for tid in self._votes if tid not in self.tracker.tracks]:
            del self._votes[tid]
        events: list[VehicleEvent] = []
        for read, track in zip(reads, tracks, strict=True):
            votes = self._votes.setdefault(track.id, _Votes())
            text = normalise_plate(str(read.get("text", "")))
            conf = float(read.get("confidence", 0.0))
            if votes.decided or not text or conf < self.min_confidence:
                continue
            votes.texts[text] += 1
            if conf > votes.best.get(text, -1.0):
                votes.best[text] = conf
                box = track.box
                votes.best_at[text] = (t, (box.x1, box.y1, box.x2, box.y2))
            if votes.texts[text] >= self.min_reads:
                votes.decided = True
                residents = {normalise_plate(p) for p in self._residents()}
                kind = RESIDENT if text in residents else OUTSIDER
                best_t, best_box = votes.best_at[text]
                events.append(VehicleEvent(kind, text, votes.best[text], votes.texts[text], track.id, t, best_t=best_t, best_box=best_box))
        return events
