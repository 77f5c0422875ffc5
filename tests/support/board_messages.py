"""Station messages as the board receives them: a screening event and a retained status."""

from __future__ import annotations

import json
import time
import uuid

P = "checkpoint/v1"


def screening(
    station: str, event_id: str, decision: str = "pass", temp: float = 36.6, alarm: bool = False, ts: float | None = None, site: str = "s1"
) -> tuple[str, bytes]:
    ts = time.time() if ts is None else ts
    body = {
        "schema": 1,
        "msg_id": uuid.uuid4().hex,
        "station_id": station,
        "site": site,
        "seq": 1,
        "session": 1,
        "ts": ts,
        "clock_synced": True,
        "event": {"event_id": event_id, "ts": ts, "decision": decision, "reason": "x", "alarm": alarm, "temperature_c": temp},
    }
    return f"{P}/{site}/{station}/events/screening", json.dumps(body).encode()


def status(station: str, state: str, session: int, site: str = "s1") -> tuple[str, bytes]:
    return f"{P}/{site}/{station}/status", json.dumps({"state": state, "session": session, "version": "0.1.0"}).encode()
