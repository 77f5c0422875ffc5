"""The vehicle lane's visits at run time: plate thread and screening decisions into one record per vehicle.

``VisitRecorder`` holds the pure ``VisitBook`` under a lock and is fed from two threads: the plate
thread after every read (``on_frame``: the lane's plate tracks, the vehicle events just raised with
their ids) and the pipeline's executor after every decision (``on_decided``: an occupant screened at
the window). A visit is recorded (``record``: the store's ``record_visit``, row + occupant links +
``events/visit`` message in one transaction) on the plate thread when its vehicle has gone, and the
rest when the lane stops (``close``). An outsider's plate is looked up in the registrations
(``registered``: the newest registration within ``vehicle.registration_valid_h``) when it is agreed,
so the visit says ``registered`` with the registration's id.

A failed write is logged and counted (``record_errors``) and never stops the plate thread.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from station.domain.model import VisibleFrame
from station.domain.vehicles import OUTSIDER, VehicleEvent, VehicleLane
from station.domain.visits import Occupant, Visit, VisitBook
from station.lane.pipeline import Decided

log = logging.getLogger("station.visits")


class VisitRecorder:
    """Link a vehicle lane's plate reads and its screenings into visits, and record each closed visit."""

    def __init__(
        self,
        lane: VehicleLane,
        book: VisitBook,
        *,
        record: Callable[[dict[str, Any]], Any] | None,
        registered: Callable[[str], dict[str, Any] | None] = lambda _plate: None,
        fever_threshold_c: float = 37.3,
        lane_direction: str = "both",
        wall: Callable[[], float] = time.time,
        clock_synced: Callable[[], bool | None] = lambda: None,
    ) -> None:
        self.lane = lane
        self.book = book
        self._record = record
        self._registered = registered
        self.fever_threshold_c = fever_threshold_c
        self.lane_direction = lane_direction
        self._wall = wall
        self._clock_synced = clock_synced
        self._lock = threading.Lock()
        self._frames: deque[tuple[float, int]] = deque(maxlen=256)  # (frame t, seq): the best read's frame number
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        self.counts: Counter[str] = Counter()
        self.last_visit: dict[str, Any] | None = None

    def add_listener(self, fn: Callable[[dict[str, Any]], None]) -> None:
        """Call ``fn`` (on the thread that closed it) with every visit record, after it was recorded."""
        self._listeners.append(fn)

    def on_frame(self, frame: VisibleFrame, events: list[tuple[VehicleEvent, str]]) -> None:
        """Take one plate-reading frame (plate thread): update the open visits, attach the plates agreed, record closed visits."""
        h, w = frame.image.shape[:2]
        self._frames.append((frame.t, frame.seq))
        looked_up = [(event, vid, self._lookup(event)) for event, vid in events]  # outside the lock: a store read
        with self._lock:
            closed = self.book.on_tracks(list(self.lane.tracker.tracks.values()), (w, h), frame.t, self._wall(), lambda: uuid.uuid4().hex)
            for event, vehicle_id, registration in looked_up:
                self.book.on_vehicle(event, vehicle_id, best_seq=self._seq_at(event.best_t), registration=registration)
        for visit in closed:
            self._close(visit)

    def on_decided(self, d: Decided) -> None:
        """Link a screening just decided (executor thread) to the vehicle at the window, if one is there."""
        occupant = Occupant.of(d.event, self.fever_threshold_c)
        with self._lock:
            visit = self.book.on_screening(occupant)
            visit_id = visit.visit_id if visit is not None else None
        if visit_id is not None:
            self.counts["occupants_linked"] += 1
            log.info("occupant linked to vehicle visit visit_id=%s event_id=%s decision=%s", visit_id, occupant.event_id, occupant.decision)

    def close(self) -> None:
        """Record every visit still open (the lane stops)."""
        with self._lock:
            closed = self.book.close_all()
        for visit in closed:
            self._close(visit)

    def _lookup(self, event: VehicleEvent) -> dict[str, Any] | None:
        if event.kind != OUTSIDER:
            return None
        try:
            return self._registered(event.plate)
        except Exception as exc:  # a store that cannot be read: the visit is recorded unregistered, the fault counted
            self.counts["lookup_errors"] += 1
            log.error("registration look-up failed plate=%s error=%s: %s", event.plate, type(exc).__name__, exc)
            return None

    def _seq_at(self, t: float | None) -> int | None:
        for ft, seq in reversed(self._frames):
            if ft == t:
                return seq
        return None

    def _close(self, visit: Visit) -> None:
        record = {**visit.as_record(self._wall(), self.lane_direction), "clock_synced": self._clock_synced()}
        self.counts["visits"] += 1
        if visit.flagged:
            self.counts["flagged"] += 1
        if self._record is not None:
            try:
                self._record(record)
                self.counts["recorded"] += 1
            except Exception as exc:  # a full SD card must not stop the plate thread; logged and counted
                self.counts["record_errors"] += 1
                log.error("visit not recorded visit_id=%s error=%s: %s", visit.visit_id, type(exc).__name__, exc)
        self.last_visit = record
        log.info(
            "vehicle visit visit_id=%s plate=%s kind=%s occupants=%d flagged=%s registered=%s",
            visit.visit_id,
            visit.plate,
            visit.kind,
            len(visit.occupants),
            visit.flagged,
            visit.registration_id is not None,
        )
        for fn in self._listeners:
            try:
                fn(record)
            except Exception:  # logged; one listener must not stop the others or the plate thread
                log.exception("visit listener failed listener=%r", fn)

    def stats(self) -> dict[str, Any]:
        """Return the visits recorded, flagged and failed, occupants linked, open visits and the last visit."""
        with self._lock:
            open_now, unrecorded, unlinked = len(self.book.open), self.book.unrecorded, self.book.unlinked
        return {**dict(self.counts), "open": open_now, "unrecorded": unrecorded, "unlinked": unlinked, "last_visit": self.last_visit}
