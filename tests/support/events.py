"""A complete screening event for store, outbox and sync tests, as the pipeline would record one."""

from __future__ import annotations

import time

from station.domain.model import CodeColour, Decision, ScreeningEvent
from station.store.events import new_msg_id


def make_event(i: int, *, alarm: bool = False, ts: float | None = None) -> ScreeningEvent:
    """Return event number ``i`` of station st-01 at gate-a: a pass, or a fever alarm when ``alarm``."""
    return ScreeningEvent(
        event_id=f"ev-{i:06d}-{new_msg_id()[-8:]}",
        station_id="st-01",
        site="gate-a",
        lane="lane-1",
        decision=Decision.DENY_FEVER if alarm else Decision.PASS,
        reason="fever" if alarm else "ok",
        alarm=alarm,
        wall_ts=time.time() if ts is None else ts,
        temperature_c=38.4 if alarm else 36.6,
        temperature={"skin_c": 34.1, "n_pixels": 42, "terms": {"ambient": 0.3}},
        code_colour=CodeColour.GREEN,
        code={"status": "valid", "reason": "ok", "source": "local"},
        face={"box": [1.0, 2.0, 3.0, 4.0], "score": 0.93},
        stage_t={"enter": 1.0, "decision": 1.4},
        latency_ms={"total": 400.0},
        policy={"temperature": "hard"},
        clock_synced=True,
    )
