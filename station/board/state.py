"""What the board knows about every station, built from the stations' MQTT messages.

``BoardState.handle(topic, payload, retained)`` takes any message under ``<prefix>/<site>/<station>/``
(docs/mqtt.md) and updates the station's live view; screenings and alarms also go to the SQLite
history (de-duplicated there). ``view()`` is the JSON the page and ``/api/stations`` show, sorted by
what needs attention:

0. offline — retained ``status`` is ``offline`` (the broker's Will: crash, power, network) or
   ``stopped``, or no status was ever seen;
1. alarm — a fever alarm (or outbox overflow notice) within ``alarm_window_s``, or the station's
   last decision raised one;
2. backlog — the outbox holds ``backlog_rows`` or more, alarms wait in it, or a bound is near;
3. fault — thermal module, camera or face detector not working;
4. ok.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from station.board.history import BoardHistory, local_day

log = logging.getLogger("station.board")

LEVELS = ("offline", "alarm", "backlog", "fault", "ok")


@dataclass
class StationView:
    site: str
    station: str
    status: dict[str, Any] = field(default_factory=dict)  # retained status payload
    status_at: float | None = None  # when the board received it
    last: dict[str, Any] = field(default_factory=dict)  # last decision: decision, temperature_c, event_id, ts, alarm
    outbox: dict[str, Any] = field(default_factory=dict)  # retained state/outbox
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)  # thermal, camera, detector, gate
    station_count_total: int | None = None  # the station's own all-time count (state/screening)
    station_count_today: int | None = None  # the station's own count since its local midnight
    snapshot: bytes | None = None
    snapshot_meta: dict[str, Any] = field(default_factory=dict)
    seen_at: float | None = None


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


class BoardState:
    """Thread-safe: MQTT handlers write, the web app reads (one lock, short sections)."""

    def __init__(
        self,
        history: BoardHistory,
        topic_prefix: str = "checkpoint/v1",
        *,
        alarm_window_s: float = 900.0,
        backlog_rows: int = 20,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.history = history
        self.prefix = topic_prefix.rstrip("/")
        self.alarm_window_s = alarm_window_s
        self.backlog_rows = backlog_rows
        self.wall = wall
        self._lock = threading.Lock()
        self._stations: dict[tuple[str, str], StationView] = {}
        self._counts: dict[tuple[str, str], dict[str, int]] = {}
        self._alarms: dict[tuple[str, str], dict[str, Any]] = {}
        self._day = ""
        self.version = 0  # bumped on every change the page should see
        self.messages = 0
        self.received: Counter[str] = Counter()  # per kind: "events/screening", "status", "state/outbox", …
        self.duplicates = 0
        self.bad_messages = 0
        self.refresh_history()

    # ------------------------------------------------------------------ input

    def _split(self, topic: str) -> tuple[str, str, str] | None:
        if not topic.startswith(self.prefix + "/"):
            return None
        parts = topic[len(self.prefix) + 1:].split("/", 2)
        if len(parts) < 3:
            return None
        return parts[0], parts[1], parts[2]

    def handle(self, topic: str, payload: bytes) -> None:
        """One message from the broker. Never raises for a bad payload (counted and logged)."""
        split = self._split(topic)
        if split is None:
            return
        site, station, rest = split
        if rest.startswith("cmd/") or rest == "state/flush":
            return  # requests to the station and the flush tool's own availability: not the station's state
        self.messages += 1
        self.received[rest] += 1
        try:
            if rest == "snapshot":
                self._on_snapshot(site, station, payload)
                return
            body = json.loads(payload) if payload else {}
            if not isinstance(body, dict):
                raise ValueError("payload is not a JSON object")
            if rest == "status":
                self._on_status(site, station, body)
            elif rest.startswith("state/"):
                self._on_state(site, station, rest[len("state/"):], body)
            elif rest == "events/screening":
                self._on_screening(site, station, body)
            elif rest == "events/alarm":
                self._on_alarm(site, station, body)
            else:
                return  # stats, audit, vehicles: not shown on the board
        except (ValueError, TypeError, KeyError) as exc:
            self.bad_messages += 1
            log.warning("board ignored a bad message topic=%s error=%s", topic, exc)

    def _station(self, site: str, station: str) -> StationView:
        key = (site, station)
        view = self._stations.get(key)
        if view is None:
            view = self._stations[key] = StationView(site, station)
        view.seen_at = self.wall()
        return view

    def _on_status(self, site: str, station: str, body: dict[str, Any]) -> None:
        with self._lock:
            view = self._station(site, station)
            old_session = view.status.get("session")
            new_session = body.get("session")
            # A late Will of an older session must not mark a restarted station offline (docs/mqtt.md).
            if (body.get("state") == "offline" and isinstance(old_session, int) and isinstance(new_session, int)
                    and new_session < old_session):
                log.info("board ignored a late Will site=%s station=%s session=%s current=%s", site, station, new_session, old_session)
                return
            view.status, view.status_at = body, self.wall()
            self.version += 1

    def _on_state(self, site: str, station: str, component: str, body: dict[str, Any]) -> None:
        with self._lock:
            view = self._station(site, station)
            if component == "outbox":
                view.outbox = body
            elif component == "screening":
                if isinstance(body.get("count_total"), int):
                    view.station_count_total = body["count_total"]
                if isinstance(body.get("count_today"), int):
                    view.station_count_today = body["count_today"]
                event_id = body.get("last_event_id")
                if event_id and event_id != view.last.get("event_id"):
                    # The station publishes this after the decision; its ts is the publish time.
                    view.last = {"decision": body.get("last_decision"), "temperature_c": _num(body.get("last_temperature_c")),
                                 "event_id": event_id, "ts": _num(body.get("ts")),
                                 "alarm": bool(body.get("alarm"))}
                elif event_id:
                    view.last["alarm"] = bool(body.get("alarm"))
            else:
                view.devices[component] = body
            self.version += 1

    def _on_screening(self, site: str, station: str, body: dict[str, Any]) -> None:
        event = body["event"]
        if not isinstance(event, dict) or not isinstance(event.get("event_id"), str):
            raise ValueError("events/screening without event.event_id")
        ts = _num(event.get("ts")) or _num(body.get("ts"))
        if ts is None:
            raise ValueError("events/screening without ts")
        temp = _num(event.get("temperature_c"))
        new = self.history.record_event(site, station, event["event_id"], ts, event.get("decision"), temp, bool(event.get("alarm")))
        with self._lock:
            view = self._station(site, station)
            if not new:
                self.duplicates += 1
                return
            last_ts = view.last.get("ts")
            if last_ts is None or ts >= last_ts or view.last.get("event_id") == event["event_id"]:
                view.last = {"decision": event.get("decision"), "temperature_c": temp, "event_id": event["event_id"], "ts": ts,
                             "alarm": bool(event.get("alarm"))}
        self._refresh_station_history()

    def _on_alarm(self, site: str, station: str, body: dict[str, Any]) -> None:
        ts = _num(body.get("ts")) or self.wall()
        if body.get("kind") == "outbox_overflow":
            key, kind = str(body.get("msg_id")), "outbox_overflow"
            new = self.history.record_alarm(site, station, key, ts, kind, detail=f"dropped {body.get('dropped')} rows")
        else:
            event = body.get("event")
            if not isinstance(event, dict) or not isinstance(event.get("event_id"), str):
                raise ValueError("events/alarm without event.event_id")
            ts = _num(event.get("ts")) or ts
            kind = "fever" if event.get("decision") in ("deny_fever", "manual_check") and _num(event.get("temperature_c")) else "alarm"
            new = self.history.record_alarm(site, station, event["event_id"], ts, kind, event.get("decision"),
                                            _num(event.get("temperature_c")), event.get("reason"))
        with self._lock:
            self._station(site, station)
            if not new:
                self.duplicates += 1
                return
        self._refresh_station_history()

    def _on_snapshot(self, site: str, station: str, payload: bytes) -> None:
        from station.snapshots import decode_snapshot

        jpeg, meta = decode_snapshot(payload)
        with self._lock:
            view = self._station(site, station)
            view.snapshot, view.snapshot_meta = jpeg, meta
            self.version += 1

    # ------------------------------------------------------------------ history

    def _refresh_station_history(self) -> None:
        self.refresh_history()

    def refresh_history(self) -> bool:
        """Re-read today's counts and alarms from SQLite (also written by other replicas); True if changed."""
        day = local_day(self.wall())
        counts = self.history.counts(day)
        alarms = self.history.alarms(day)
        with self._lock:
            if day == self._day and counts == self._counts and alarms == self._alarms:
                return False
            self._day, self._counts, self._alarms = day, counts, alarms
            for key in set(counts) | set(alarms):  # stations known only from history (board restarted)
                if key not in self._stations:
                    self._stations[key] = StationView(*key)
            self.version += 1
            return True

    # ------------------------------------------------------------------ output

    def snapshot_jpeg(self, site: str, station: str) -> tuple[bytes, dict[str, Any]] | None:
        with self._lock:
            view = self._stations.get((site, station))
            if view is None or view.snapshot is None:
                return None
            return view.snapshot, dict(view.snapshot_meta)

    def _assess(self, v: StationView, alarms: dict[str, Any], now: float) -> tuple[int, list[str]]:
        reasons: list[str] = []
        state = v.status.get("state")
        level = 4
        if state != "online":
            reasons.append("offline" if state == "offline" else ("stopped" if state == "stopped" else "no_status"))
            level = 0
        recent = [a for a in alarms.get("recent", []) if now - a["ts"] <= self.alarm_window_s]
        if recent or v.last.get("alarm"):
            reasons.append("alarm")
            level = min(level, 1)
        pending = v.outbox.get("pending")
        if (isinstance(pending, int) and pending >= self.backlog_rows) or v.outbox.get("alarms_pending") or v.outbox.get("bounds_alarm"):
            reasons.append("backlog")
            level = min(level, 2)
        thermal = v.devices.get("thermal", {}).get("state")
        detector = v.devices.get("detector", {}).get("state")
        camera = v.devices.get("camera", {}).get("state")
        if (thermal not in (None, "connected") or detector not in (None, "ok", "ready")
                or camera not in (None, "ok", "running", "finished")):  # finished: a replayed video ended (demo)
            reasons.append("fault")
            level = min(level, 3)
        return level, reasons

    def view(self) -> dict[str, Any]:
        now = self.wall()
        with self._lock:
            rows = []
            for key, v in self._stations.items():
                counts = self._counts.get(key, {})
                alarms = self._alarms.get(key, {"count": 0, "recent": []})
                level, reasons = self._assess(v, alarms, now)
                rows.append({
                    "key": f"{v.site}/{v.station}", "site": v.site, "station": v.station,
                    "level": level, "level_name": LEVELS[level], "reasons": reasons,
                    "state": v.status.get("state") or "unknown", "session": v.status.get("session"),
                    "version": v.status.get("version"), "status_at": v.status_at,
                    "last": dict(v.last) if v.last else None,
                    "today": {"screened": sum(counts.values()), "by_decision": dict(counts), "alarms": alarms["count"]},
                    "recent_alarms": alarms["recent"],
                    "backlog": {k: v.outbox.get(k) for k in ("pending", "alarms_pending", "oldest_age_s", "bounds_alarm", "dropped", "mqtt")}
                    if v.outbox else None,
                    "devices": {name: d.get("state") for name, d in sorted(v.devices.items())},
                    "station_count_total": v.station_count_total,
                    # The station's own figure, for comparison: the board's count is of events it
                    # received; a board that was down without a session may have fewer.
                    "station_count_today": v.station_count_today,
                    "snapshot": ({"ts": v.snapshot_meta.get("ts"), "blur": v.snapshot_meta.get("blur"),
                                  "faces_blurred": v.snapshot_meta.get("faces_blurred"),
                                  "width": v.snapshot_meta.get("width"), "height": v.snapshot_meta.get("height"),
                                  "url": f"/api/stations/{v.site}/{v.station}/snapshot.jpg?ts={v.snapshot_meta.get('ts')}"}
                                 if v.snapshot is not None else None),
                    "seen_at": v.seen_at,
                })
            day = self._day
            version = self.version
        rows.sort(key=lambda r: (r["level"], r["site"], r["station"]))
        totals = {
            "stations": len(rows),
            "online": sum(1 for r in rows if r["state"] == "online"),
            "offline": sum(1 for r in rows if r["state"] != "online"),
            "screened": sum(r["today"]["screened"] for r in rows),
            "alarms": sum(r["today"]["alarms"] for r in rows),
            "backlog": sum((r["backlog"] or {}).get("pending") or 0 for r in rows),
        }
        return {"day": day, "generated_at": now, "version": version, "totals": totals, "stations": rows,
                "board": {"messages": self.messages, "duplicates": self.duplicates, "bad_messages": self.bad_messages}}
