"""Replay a vehicle scene (sim/vehicle_scene.py) through the vehicle lane, the screening lane and the visit recorder.

Every 0.1 s the occupant at the window is a face (with a stable temperature reading of their own
core temperature, and their code shown 0.3 s after they lean out) fed to the real ``ScreeningLane``;
every 0.2 s (5 reads/s, like the plate thread) the scene's plate reads go to the real
``VehicleLane`` and then to ``VisitRecorder.on_frame``, as ``PlateLoop`` hands them on. A verdict
becomes a ``ScreeningEvent`` as the pipeline makes one, is recorded in the store when one is given,
and is heard by ``VisitRecorder.on_decided``, as the pipeline's listeners hear it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import numpy as np

from sim.vehicle_scene import FRAME, VehicleScene
from station.domain.model import CodeStatus, GateAction, GateResult, ScreeningEvent, VisibleFrame
from station.domain.screening import ScreeningLane, Verdict
from station.domain.vehicles import VehicleLane
from station.lane.pipeline import Decided
from station.lane.visits import VisitRecorder
from tests.support.screening_obs import code, faces, temp

IMAGE = np.zeros((FRAME[1], FRAME[0], 3), np.uint8)


def event_of(verdict: Verdict, wall: float) -> ScreeningEvent:
    """Return the event the pipeline would record for ``verdict``."""
    return ScreeningEvent(
        event_id=verdict.event_id or uuid.uuid4().hex,
        station_id="st-01",
        site="gate-a",
        lane="entry",
        decision=verdict.decision,
        reason=verdict.reason,
        alarm=verdict.alarm,
        wall_ts=wall,
        temperature_c=verdict.temperature_c,
        temperature=verdict.temperature,
        code_colour=verdict.code_colour,
        code=verdict.code,
        face=verdict.face,
        stage_t=dict(verdict.stage_t),
        latency_ms=verdict.latency_ms(),
        policy=verdict.policy,
        clock_synced=True,
        decision_source=verdict.source,
    )


def replay(
    scene: VehicleScene,
    vehicles: VehicleLane,
    screening: ScreeningLane,
    recorder: VisitRecorder,
    *,
    store: Any = None,
    t0: float = 0.0,
    wall0: float = 1_795_000_000.0,
    tail_s: float = 3.0,
    set_wall: Callable[[float], None] = lambda _wall: None,
) -> list[ScreeningEvent]:
    """Run the scene from ``t0`` until ``tail_s`` after the car left; return the screenings decided, in order."""
    decided: list[ScreeningEvent] = []
    steps = int(round((scene.gone_t + tail_s) / 0.1))
    reads = 0
    for i in range(steps + 1):
        t = t0 + i * 0.1
        st = i * 0.1  # scene time
        set_wall(wall0 + st)
        verdicts: list[Verdict | None] = []
        at = scene.face_at(st)
        verdicts.append(screening.on_faces(faces(t, at[1]) if at else faces(t)))
        if at is not None:
            occupant, _box = at
            verdicts.append(screening.on_temperature(temp(t, occupant.core_c)))
            if st - occupant.at_t >= 0.3 and occupant.colour is not None:  # no colour: shows no code at all
                verdicts.append(screening.on_code(code(t, occupant.colour, CodeStatus.VALID)))
        verdicts.append(screening.tick(t))
        for v in verdicts:
            if v is None:
                continue
            event = event_of(v, wall0 + st)
            if store is not None:
                store.record(event)
            decided.append(event)
            gate = GateResult(event.event_id, GateAction.OPEN if v.decision.value == "pass" else GateAction.HOLD, True, "ok", t)
            recorder.on_decided(Decided(event, gate, 1.0, 1.0))
        if i % 2 == 0:
            plates = scene.plate_reads(st, reads)
            reads += 1
            events = vehicles.on_plates(plates, t)
            recorder.on_frame(VisibleFrame(IMAGE, i, t), [(e, f"vehicle-{e.track_id}") for e in events])
    return decided
