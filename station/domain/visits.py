"""A vehicle visit: one vehicle at the lane and the screenings of the people in it, as one record. Pure.

A visit opens when a plate track appears (``VisitBook.on_tracks``, fed every plate-reading frame
with the vehicle lane's tracks) and closes when that track is gone (the tracker forgets a plate
unseen for its memory). While it is open:

- the vehicle's agreed plate (``on_vehicle``, the ``VehicleLane`` event) gives the plate, its best
  read (confidence, frame), resident or outsider, and the outsider registration recognised, if any;
- every screening decided meanwhile (``on_screening``) is an occupant screened at the window, with
  its own temperature, code and decision. With several vehicles in view, the nearest one (the
  tallest plate box: the one at the window) takes the occupant. A plate seen in fewer than
  ``min_sightings`` frames and not yet read takes no one (a stray detection is not a vehicle).

The direction is the plate track's travel along the lane geometry (``station.domain.direction``);
a vehicle that stopped at the window and left out of view may not have travelled far enough, and
then the lane's own direction (an entry or exit lane) is recorded, or ``unknown`` for a lane that
is both, with ``direction_from`` saying which.

A closed visit with a read plate or at least one occupant is a record (``Visit.as_record``,
``events/visit``); one with neither (a plate never read, nobody screened) is only counted. A visit
with any occupant denied (fever or code) is ``flagged``: the centre's board shows it. It is never
an alarm itself: each occupant's own screening already is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from station.domain.direction import LaneGeometry, passage
from station.domain.model import Decision, ScreeningEvent
from station.domain.tracking import Track
from station.domain.vehicles import VehicleEvent

VISIT = "vehicle_visit"
UNREAD = "unread_vehicle"
DENIALS = frozenset({Decision.DENY_FEVER.value, Decision.DENY_CODE.value})


@dataclass(frozen=True, slots=True)
class Occupant:
    """One person screened at the window while the vehicle was there: their own decision and readings."""

    event_id: str
    decision: str
    reason: str
    temperature_c: float | None
    code_colour: str | None
    alarm: bool
    decision_source: str
    ts: float
    fever: bool
    denied: bool

    @classmethod
    def of(cls, event: ScreeningEvent, fever_threshold_c: float) -> Occupant:
        """Return the occupant a screening event describes (a fever: denied for it, or a reading at or above the threshold)."""
        temp = event.temperature_c
        fever = event.decision is Decision.DENY_FEVER or (temp is not None and temp >= fever_threshold_c)
        return cls(
            event_id=event.event_id,
            decision=event.decision.value,
            reason=event.reason,
            temperature_c=temp,
            code_colour=event.code_colour.value if event.code_colour else None,
            alarm=event.alarm,
            decision_source=event.decision_source,
            ts=event.wall_ts,
            fever=fever,
            denied=event.decision.value in DENIALS,
        )

    def as_record(self) -> dict[str, Any]:
        """Return the JSON-able form carried in the visit record."""
        return {
            "event_id": self.event_id,
            "decision": self.decision,
            "reason": self.reason,
            "temperature_c": self.temperature_c,
            "code_colour": self.code_colour,
            "alarm": self.alarm,
            "decision_source": self.decision_source,
            "ts": self.ts,
            "fever": self.fever,
            "denied": self.denied,
        }


@dataclass(slots=True)
class Visit:
    """One vehicle's visit while it is open, then as recorded."""

    visit_id: str
    track_id: int
    opened_t: float
    opened_wall: float
    last_seen_t: float
    height: float  # the plate box's height in the newest frame: the tallest is nearest the window
    sightings: int = 1
    plate: str | None = None
    kind: str = UNREAD
    confidence: float | None = None
    reads: int = 0
    vehicle_id: str | None = None
    best_frame: dict[str, Any] | None = None
    direction: str | None = None
    registration_id: str | None = None
    registered_ts: float | None = None
    occupants: list[Occupant] = field(default_factory=list)

    def summary(self) -> dict[str, int]:
        """Return how many occupants were screened, had a fever and were denied."""
        return {
            "occupants": len(self.occupants),
            "fever": sum(o.fever for o in self.occupants),
            "denied": sum(o.denied for o in self.occupants),
        }

    @property
    def flagged(self) -> bool:
        """Return True when any occupant was denied (fever or code)."""
        return any(o.denied for o in self.occupants)

    def text(self) -> str:
        """Return the one-line summary the centre reads: ``浙A12345, 3 occupants, 1 fever``."""
        s = self.summary()
        parts = [self.plate or "plate unread", f"{s['occupants']} occupant{'' if s['occupants'] == 1 else 's'}"]
        if s["fever"]:
            parts.append(f"{s['fever']} fever")
        if s["denied"] > s["fever"]:
            parts.append(f"{s['denied'] - s['fever']} code denied")
        return ", ".join(parts)

    def as_record(self, closed_wall: float, lane_direction: str) -> dict[str, Any]:
        """Return the JSON-able record stored and sent on ``events/visit`` once the visit closed."""
        if self.direction is not None:
            direction, source = self.direction, "travel"
        elif lane_direction in ("entry", "exit"):
            direction, source = lane_direction, "lane"
        else:
            direction, source = "unknown", "none"
        return {
            "visit_id": self.visit_id,
            "type": VISIT,
            "kind": self.kind,
            "plate": self.plate,
            "confidence": round(self.confidence, 3) if self.confidence is not None else None,
            "reads": self.reads,
            "vehicle_id": self.vehicle_id,
            "best_frame": self.best_frame,
            "direction": direction,
            "direction_from": source,
            "resident": self.kind == "resident_vehicle",
            "registered": self.registration_id is not None,
            "registration_id": self.registration_id,
            "ts": self.opened_wall,
            "closed_ts": closed_wall,
            "duration_s": round(max(0.0, self.last_seen_t - self.opened_t), 2),
            "occupants": [o.as_record() for o in self.occupants],
            "summary": self.summary(),
            "flagged": self.flagged,
            "text": self.text(),
            "alarm": False,
        }


class VisitBook:
    """The open visits of a vehicle lane; feed it tracks, vehicle events and screenings in time order."""

    def __init__(self, geometry: LaneGeometry | None = None, *, min_sightings: int = 2) -> None:
        self.geometry = geometry or LaneGeometry()
        self.min_sightings = min_sightings
        self.open: dict[int, Visit] = {}
        self.unrecorded = 0  # closed visits with no plate read and nobody screened: counted, not recorded
        self.unlinked = 0  # screenings decided with no vehicle present (a pedestrian at a vehicle lane)

    def on_tracks(
        self, tracks: Iterable[Track], frame_size: tuple[int, int], t: float, wall: float, new_id: Callable[[], str]
    ) -> list[Visit]:
        """Take the plate tracks present after one frame; open visits for new ones, return the visits now closed (to record)."""
        present: set[int] = set()
        for track in tracks:
            present.add(track.id)
            visit = self.open.get(track.id)
            if visit is None:
                visit = self.open[track.id] = Visit(new_id(), track.id, t, wall, t, track.box.height)
            elif track.last_t > visit.last_seen_t:
                visit.sightings += 1
            visit.last_seen_t = max(visit.last_seen_t, track.last_t)
            visit.height = track.box.height
            moved = passage(track, self.geometry, frame_size)
            if moved is not None:
                visit.direction = moved
        closed = [self.open.pop(tid) for tid in sorted(set(self.open) - present)]
        return self._recordable(closed)

    def close_all(self) -> list[Visit]:
        """Close every open visit (the lane stops); return those to record."""
        closed = list(self.open.values())
        self.open.clear()
        return self._recordable(closed)

    def _recordable(self, closed: list[Visit]) -> list[Visit]:
        out = [v for v in closed if v.plate is not None or v.occupants]
        self.unrecorded += len(closed) - len(out)
        return out

    def on_vehicle(
        self, event: VehicleEvent, vehicle_id: str, *, best_seq: int | None = None, registration: dict[str, Any] | None = None
    ) -> Visit | None:
        """Attach an agreed plate (resident / outsider) and the registration recognised to its open visit; return it."""
        visit = self.open.get(event.track_id)
        if visit is None:
            return None
        visit.plate, visit.kind, visit.confidence, visit.reads = event.plate, event.kind, event.confidence, event.reads
        visit.vehicle_id = vehicle_id
        visit.best_frame = {
            "seq": best_seq,
            "box": list(event.best_box) if event.best_box else None,
            "confidence": round(event.confidence, 3),
        }
        if registration is not None:
            visit.registration_id = str(registration.get("registration_id"))
            visit.registered_ts = registration.get("ts")
        return visit

    def on_screening(self, occupant: Occupant) -> Visit | None:
        """Link a screening decided now to the vehicle at the window; return its visit, or None when no vehicle is there."""
        candidates = [v for v in self.open.values() if v.plate is not None or v.sightings >= self.min_sightings]
        if not candidates:
            self.unlinked += 1
            return None
        visit = max(candidates, key=lambda v: (v.height, v.opened_t))
        if all(o.event_id != occupant.event_id for o in visit.occupants):
            visit.occupants.append(occupant)
        return visit
