"""The vehicle lane's plate thread: newest frame → plate reader → ``VehicleLane`` → vehicle events.

It taps the pipeline's camera loop (``Pipeline.frame_taps``) through a one-item "latest" slot, so a
slow plate read costs frames, never latency, and never touches the person screening path: the
face, code, thermal and lane threads do not wait for it. Reads run at most ``max_rate_hz`` (plate
reading is ~40 ms per frame on one x86 core, 3–4× that on a Pi: reading every frame would take a
core away from the 1-second screening path).

Each event is made durable first (``record``: the store's ``record_vehicle``, a ``vehicles`` row
and its ``events/vehicle`` outbox message in one transaction), then logged (structured) and handed
to listeners; ``resident_vehicle`` and ``outsider_vehicle`` are information, never alarms. A failed
write is logged and counted (``record_errors``) and never stops the plate thread: losing one
vehicle record must not blind the lane to the next vehicle.

Like the pipeline's stages, a failure on one frame is counted per kind and logged once per kind per
minute (``StageHealth``), and a loop that breaks anyway is restarted in-process by a
``StageSupervisor`` within its rate limit (``stats()["health"]``).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from station.domain.model import VisibleFrame
from station.domain.vehicles import VehicleEvent, VehicleLane
from station.lane.pipeline import LatestSlot, PipelineSettings, StageHealth, StageSupervisor
from station.ports import PlateReader

if TYPE_CHECKING:
    from station.lane.plate_gate import PlateGate

log = logging.getLogger("station.vehicles")


class PlateLoop:
    """The plate thread: reads the newest frame's plates at most ``max_rate_hz`` and records each vehicle event."""

    def __init__(
        self,
        reader: PlateReader,
        lane: VehicleLane,
        *,
        max_rate_hz: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        record: Callable[[dict[str, Any]], Any] | None = None,
        wall_clock: Callable[[], float] = time.time,
        clock_synced: Callable[[], bool | None] = lambda: None,
        settings: PipelineSettings | None = None,
        gate: PlateGate | None = None,
    ) -> None:
        self.reader = reader
        self.gate = gate  # hook: station/lane/plate_gate.py skips frames where the picture did not change
        self._record = record
        self._wall = wall_clock
        self._clock_synced = clock_synced
        self.lane = lane
        self.min_interval_s = 1.0 / max_rate_hz
        self._clock = clock
        self._slot: LatestSlot[VisibleFrame] = LatestSlot()
        self._stop = threading.Event()
        self._settings = settings or PipelineSettings()
        self.health = StageHealth("plates", self._settings, clock, escalate=False)  # plates are what passers-by show
        self._supervisor: StageSupervisor | None = None
        self._listeners: list[Callable[[VehicleEvent], None]] = []
        self._frame_listeners: list[Callable[[VisibleFrame, list[tuple[VehicleEvent, str]]], None]] = []
        self.counts: Counter[str] = Counter()
        self.last_event: dict[str, Any] | None = None
        self.read_ms: float | None = None

    def add_listener(self, fn: Callable[[VehicleEvent], None]) -> None:
        """Call ``fn`` (on the plate thread) with every vehicle event, after it was recorded."""
        self._listeners.append(fn)

    def add_frame_listener(self, fn: Callable[[VisibleFrame, list[tuple[VehicleEvent, str]]], None]) -> None:
        """Call ``fn(frame, [(event, vehicle_id), …])`` (on the plate thread) after every frame read, events or not.

        The lane's tracks are current then (the visit recorder reads them: station/lane/visits.py).
        """
        self._frame_listeners.append(fn)

    def offer(self, frame: VisibleFrame) -> None:
        """Take a frame from the camera loop, keeping only the newest (never works on the camera thread)."""
        self._slot.put(frame)

    def start(self) -> None:
        """Start the plate thread under its supervisor."""
        self._supervisor = StageSupervisor("plates", self._run, self.health, self._settings, self._stop, self._clock)
        self._supervisor.start()

    def stop(self) -> None:
        """Stop the plate thread and wait for it (at most 5 s)."""
        self._stop.set()
        self._slot.close()
        if self._supervisor is not None:
            self._supervisor.thread.join(5.0)
            if self._supervisor.thread.is_alive():
                log.error("plate thread did not stop")

    def alive(self) -> bool:
        """Return True while the plate thread runs and has not been given up."""
        return self._supervisor is not None and self._supervisor.alive()

    def _run(self) -> None:
        last = -1e9
        while not self._stop.is_set():
            frame = self._slot.take(timeout=0.5)
            if frame is None:
                continue
            wait = self.min_interval_s - (self._clock() - last)
            if wait > 0 and self._stop.wait(wait):
                return
            if self.gate is not None and not self.gate.should_read(frame.image, frame.t):
                continue  # the same picture as the last read: not read, not handed to the lane (counted by the gate)
            last = self._clock()
            try:
                plates = self.reader.read(frame.image)
            except Exception as exc:  # a bad frame must not kill the vehicle lane; counted, logged once per kind a minute
                self.counts["read_errors"] += 1
                self.health.failed(type(exc).__name__, exc, step="read", frame_seq=frame.seq)
                continue
            self.read_ms = round((self._clock() - last) * 1000.0, 1)
            self.counts["reads"] += 1
            if self.gate is not None:
                self.gate.read_done(len(plates))
            try:
                events = self.lane.on_plates(plates, frame.t)
            except Exception as exc:  # this frame's plates only: dropped, counted
                self.health.failed(type(exc).__name__, exc, step="lane", frame_seq=frame.seq)
                continue
            self.health.ok()
            emitted = [(event, self._emit(event)) for event in events]
            for fn in self._frame_listeners:
                try:
                    fn(frame, emitted)
                except Exception as exc:  # this frame's visits only: counted, logged once per kind a minute
                    self.health.failed(f"visit:{type(exc).__name__}", exc, dropped=False, frame_seq=frame.seq)

    def _emit(self, event: VehicleEvent) -> str:
        self.counts[event.kind] += 1
        record = {"vehicle_id": uuid.uuid4().hex, "ts": self._wall(), "clock_synced": self._clock_synced(), **event.as_record()}
        self.last_event = record
        if self._record is not None:
            try:
                self._record(record)
                self.counts["recorded"] += 1
            except Exception as exc:  # a full SD card or a locked file must not stop the plate thread; logged and counted
                self.counts["record_errors"] += 1
                self.health.failed(f"record:{type(exc).__name__}", exc, dropped=False, vehicle_id=record["vehicle_id"], type=event.kind)
        log.info("vehicle event type=%s plate=%s confidence=%.2f reads=%d", event.kind, event.plate, event.confidence, event.reads)
        for fn in self._listeners:
            try:
                fn(event)
            except Exception:  # logged; one listener must not stop the others or the plate thread
                log.exception("vehicle listener failed listener=%r", fn)
        return str(record["vehicle_id"])

    def stats(self) -> dict[str, Any]:
        """Return the reads, events per kind, errors, read time, last event, dropped frames and stage health."""
        return {
            **dict(self.counts),
            **(self.gate.stats() if self.gate is not None else {}),
            "read_ms": self.read_ms,
            "last_event": self.last_event,
            "frames_dropped": self._slot.dropped,
            "health": self.health.snapshot(),
        }
