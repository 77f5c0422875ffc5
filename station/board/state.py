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

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from station.board import schema
from station.board.history import BoardHistory, local_day
from station.board.schema import Dropped

log = logging.getLogger("station.board")

LEVELS = ("offline", "alarm", "backlog", "fault", "ok")
MAX_STATIONS = 2000
"""Stations the board keeps; a message from one more is dropped and counted (a rogue publisher
inventing station ids must not exhaust the board's memory or bury the real tiles)."""
MAX_DEVICES = 16
RECENT_VEHICLES = 5
"""Vehicle visits and outsider registrations kept per station (newest first; in memory only)."""
"""``state/<component>`` components kept per station."""
RECEIVED_KINDS = frozenset(
    {
        "status",
        "events/screening",
        "events/alarm",
        "events/visit",
        "events/registration",
        "snapshot",
        "state/outbox",
        "state/screening",
        "state/thermal",
        "state/camera",
        "state/detector",
        "state/gate",
    }
)
NOT_SHOWN = ("stats", "events/audit", "events/vehicle", "state/flush", "lookup/code")
"""Topics of a station the board does not show: dropped without counting them as bad."""


@dataclass
class StationView:
    """What the board knows of one station: its present (retained topics) and its last decision."""

    site: str
    station: str
    status: dict[str, Any] = field(default_factory=dict)  # typed retained status: state, session, version
    status_at: float | None = None  # when the board received it
    last: dict[str, Any] = field(default_factory=dict)  # last decision: decision, temperature_c, event_id, ts, alarm
    outbox: dict[str, Any] = field(default_factory=dict)  # typed retained state/outbox
    devices: dict[str, str | None] = field(default_factory=dict)  # component → state token
    station_count_total: int | None = None  # the station's own all-time count (state/screening)
    station_count_today: int | None = None  # the station's own count since its local midnight
    snapshot: bytes | None = None
    snapshot_meta: dict[str, Any] = field(default_factory=dict)
    seen_at: float | None = None
    visits: list[dict[str, Any]] = field(default_factory=list)  # newest first, at most RECENT_VEHICLES
    registrations: list[dict[str, Any]] = field(default_factory=list)  # newest first, at most RECENT_VEHICLES


def _clean_counts(counts: dict[tuple[str, str], dict[str, int]]) -> dict[tuple[str, str], dict[str, int]]:
    """Return history counts with only valid station keys and known decisions (an older board's file may hold others)."""
    out: dict[tuple[str, str], dict[str, int]] = {}
    for (site, station), by in counts.items():
        if schema.segment(site) and schema.segment(station):
            clean = {d: n for d, n in by.items() if (d in schema.DECISIONS or d == "unknown") and isinstance(n, int) and n >= 0}
            if clean:
                out[(site, station)] = clean
    return out


def _clean_alarms(alarms: dict[tuple[str, str], dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for (site, station), entry in alarms.items():
        if not (schema.segment(site) and schema.segment(station)):
            continue
        recent = [
            {
                "key": schema.text(a.get("key"), 80),
                "ts": schema.number(a.get("ts"), 0, schema.TS_RANGE[1]) or 0.0,
                "kind": schema.token(a.get("kind")) or "alarm",
                "decision": schema.enum(a.get("decision"), schema.DECISIONS),
                "temperature_c": schema.temperature(a.get("temperature_c")),
                "detail": schema.text(a.get("detail")),
            }
            for a in entry.get("recent", [])
        ]
        out[(site, station)] = {"count": int(entry.get("count", 0)), "recent": recent}
    return out


class BoardState:
    """Thread-safe: MQTT handlers write, the web app reads (one lock, short sections)."""

    def __init__(
        self,
        history: BoardHistory,
        topic_prefix: str = "checkpoint/v1",
        *,
        alarm_window_s: float = 900.0,
        backlog_rows: int = 20,
        max_stations: int = MAX_STATIONS,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.history = history
        self.prefix = topic_prefix.rstrip("/")
        self.alarm_window_s = alarm_window_s
        self.backlog_rows = backlog_rows
        self.max_stations = max_stations
        self.wall = wall
        self._lock = threading.Lock()
        self._stations: dict[tuple[str, str], StationView] = {}
        self._counts: dict[tuple[str, str], dict[str, int]] = {}
        self._alarms: dict[tuple[str, str], dict[str, Any]] = {}
        self._forgotten: set[tuple[str, str]] = set()  # removed by an admin until they speak again
        self._day = ""
        self._history_dirty = False
        self.version = 0  # bumped on every change the page should see
        self.messages = 0
        self.received: Counter[str] = Counter()  # per kind: "events/screening", "status", "state/outbox", …
        self.dropped: Counter[str] = Counter()  # per reason: "not_json", "bad_topic", "too_many_stations", …
        self.duplicates = 0
        self.bad_messages = 0
        self.refresh_history()

    # ------------------------------------------------------------------ input

    def _split(self, topic: str) -> tuple[str, str, str] | None:
        if not topic.startswith(self.prefix + "/"):
            return None
        parts = topic[len(self.prefix) + 1 :].split("/", 2)
        if len(parts) < 3:
            return None
        return parts[0], parts[1], parts[2]

    def handle(self, topic: str, payload: bytes) -> str:
        """Take one message from the broker (the subscriber's handler); see :meth:`ingest`."""
        return self.ingest(topic, payload)

    def ingest(self, topic: str, payload: bytes) -> str:
        """Take one message and return ``"accepted"`` or ``"dropped:<reason>"``; never raise for any topic or payload."""
        if not isinstance(topic, str) or not isinstance(payload, (bytes, bytearray)):
            return self._drop("bad_input", topic)
        split = self._split(topic)
        if split is None:
            return "dropped:not_ours"
        site, station, rest = split
        if rest.startswith("cmd/") or rest.startswith(NOT_SHOWN):
            return "dropped:not_shown"  # requests to the station, the flush tool, stats, audit: not the board's
        if not (schema.segment(site) and schema.segment(station)):
            return self._drop("bad_topic", topic)
        if rest == "status":
            kind = "status"
        elif rest in ("events/screening", "events/alarm", "events/visit", "events/registration", "snapshot"):
            kind = rest
        elif rest.startswith("state/") and schema.segment(rest[len("state/") :]):
            kind = "state/" + rest[len("state/") :] if rest in ("state/outbox", "state/screening") else "state/device"
        else:
            return self._drop("bad_topic", topic)
        with self._lock:
            self.messages += 1
            self.received[rest if rest in RECEIVED_KINDS else "state/other"] += 1  # bounded labels, not topic text
        try:
            if kind == "snapshot":
                self._on_snapshot(site, station, bytes(payload))
                return "accepted"
            body = schema.decode_object(bytes(payload), schema.MAX_PAYLOAD[kind.split("/")[0]])
            if kind == "status":
                return self._on_status(site, station, schema.clean_status(body))
            if kind == "state/device":
                return self._on_device(site, station, rest[len("state/") :], schema.clean_device(body))
            if kind == "state/outbox":
                return self._on_outbox(site, station, schema.clean_outbox(body))
            if kind == "state/screening":
                return self._on_screening_state(site, station, schema.clean_screening_state(body))
            if kind == "events/screening":
                return self._on_screening(site, station, schema.clean_event(body.get("event"), body.get("ts")))
            if kind == "events/visit":
                return self._on_recent(site, station, "visits", "visit_id", schema.clean_visit(body.get("visit"), body.get("ts")))
            if kind == "events/registration":
                reg = schema.clean_registration(body.get("registration"), body.get("ts"))
                return self._on_recent(site, station, "registrations", "registration_id", reg)
            return self._on_alarm(site, station, body)
        except Dropped as exc:
            return self._drop(exc.reason, topic)

    def _drop(self, reason: str, topic: Any) -> str:
        with self._lock:
            self.dropped[reason] += 1
            self.bad_messages += 1
            n = self.dropped[reason]
        if n in (1, 10, 100, 1000) or n % 10000 == 0:  # a hostile flood must not flood the journal too
            log.warning(
                "board dropped a message reason=%s count=%d topic=%s",
                reason,
                n,
                schema.text(topic, 200) if isinstance(topic, str) else type(topic).__name__,
            )
        return f"dropped:{reason}"

    def _station(self, site: str, station: str) -> StationView:
        """Return the station's view (lock held); raise :class:`Dropped` when it is new and the board is full."""
        key = (site, station)
        view = self._stations.get(key)
        if view is None:
            if len(self._stations) >= self.max_stations:
                raise Dropped("too_many_stations")
            self._forgotten.discard(key)
            view = self._stations[key] = StationView(site, station)
        view.seen_at = self.wall()
        return view

    def _admit(self, site: str, station: str) -> None:
        """Check before writing the history: a station beyond the cap leaves no rows behind."""
        with self._lock:
            self._station(site, station)

    def _on_status(self, site: str, station: str, status: dict[str, Any]) -> str:
        with self._lock:
            view = self._station(site, station)
            old_session = view.status.get("session")
            new_session = status["session"]
            # A late Will of an older session must not mark a restarted station offline (docs/mqtt.md).
            if status["state"] == "offline" and old_session is not None and new_session is not None and new_session < old_session:
                log.info("board ignored a late Will site=%s station=%s session=%s current=%s", site, station, new_session, old_session)
                return "dropped:late_will"
            view.status, view.status_at = status, self.wall()
            self.version += 1
        return "accepted"

    def _on_device(self, site: str, station: str, component: str, device: dict[str, Any]) -> str:
        with self._lock:
            view = self._station(site, station)
            if component not in view.devices and len(view.devices) >= MAX_DEVICES:
                raise Dropped("too_many_components")
            view.devices[component] = device["state"]
            self.version += 1
        return "accepted"

    def _on_outbox(self, site: str, station: str, outbox: dict[str, Any]) -> str:
        with self._lock:
            self._station(site, station).outbox = outbox
            self.version += 1
        return "accepted"

    def _on_screening_state(self, site: str, station: str, body: dict[str, Any]) -> str:
        with self._lock:
            view = self._station(site, station)
            if body["count_total"] is not None:
                view.station_count_total = body["count_total"]
            if body["count_today"] is not None:
                view.station_count_today = body["count_today"]
            event_id = body["last_event_id"]
            if event_id and event_id != view.last.get("event_id"):
                # The station publishes this after the decision; its ts is the publish time.
                view.last = {
                    "decision": body["last_decision"],
                    "temperature_c": body["last_temperature_c"],
                    "event_id": event_id,
                    "ts": body["ts"],
                    "alarm": bool(body["alarm"]),
                    "decision_source": body["last_decision_source"],
                }
            elif event_id:
                view.last["alarm"] = bool(body["alarm"])
            self.version += 1
        return "accepted"

    def _on_screening(self, site: str, station: str, event: dict[str, Any]) -> str:
        self._admit(site, station)
        new = self.history.record_event(
            site, station, event["event_id"], event["ts"], event["decision"], event["temperature_c"], event["alarm"]
        )
        with self._lock:
            view = self._station(site, station)
            if not new:
                self.duplicates += 1
                return "dropped:duplicate"
            last_ts = view.last.get("ts")
            if last_ts is None or event["ts"] >= last_ts or view.last.get("event_id") == event["event_id"]:
                view.last = {k: event[k] for k in ("decision", "temperature_c", "event_id", "ts", "alarm", "decision_source")}
        self._refresh_station_history()
        return "accepted"

    def _on_recent(self, site: str, station: str, attr: str, key: str, item: dict[str, Any]) -> str:
        """Keep a vehicle visit or registration among the station's newest (de-duplicated by id: delivery is at-least-once)."""
        with self._lock:
            view = self._station(site, station)
            items: list[dict[str, Any]] = getattr(view, attr)
            if any(x[key] == item[key] for x in items):
                self.duplicates += 1
                return "dropped:duplicate"
            items.append(item)
            items.sort(key=lambda x: x["ts"], reverse=True)
            del items[RECENT_VEHICLES:]
            self.version += 1
        return "accepted"

    def _on_alarm(self, site: str, station: str, body: dict[str, Any]) -> str:
        if body.get("kind") == "outbox_overflow":
            key = schema.event_id(body.get("msg_id"))
            if key is None:
                raise Dropped("bad_msg_id")
            ts = schema.timestamp(body.get("ts")) or self.wall()
            dropped = schema.count(body.get("dropped"))
            self._admit(site, station)
            new = self.history.record_alarm(
                site, station, key, ts, "outbox_overflow", detail=f"dropped {dropped if dropped is not None else '?'} rows"
            )
        else:
            event = schema.clean_event(body.get("event"), body.get("ts"))
            kind = "fever" if event["decision"] in ("deny_fever", "manual_check") and event["temperature_c"] else "alarm"
            self._admit(site, station)
            new = self.history.record_alarm(
                site, station, event["event_id"], event["ts"], kind, event["decision"], event["temperature_c"], event["reason"]
            )
        with self._lock:
            self._station(site, station)
            if not new:
                self.duplicates += 1
                return "dropped:duplicate"
        self._refresh_station_history()
        return "accepted"

    def _on_snapshot(self, site: str, station: str, payload: bytes) -> None:
        from station.link.snapshots import decode_snapshot

        if len(payload) > schema.MAX_PAYLOAD["snapshot"]:
            raise Dropped("too_large")
        try:
            jpeg, meta = decode_snapshot(payload)
        except (ValueError, TypeError, RecursionError):  # not JSON, not base64, not a JPEG
            raise Dropped("bad_snapshot") from None
        clean = schema.clean_snapshot_meta(meta)
        with self._lock:
            view = self._station(site, station)
            view.snapshot, view.snapshot_meta = jpeg, clean
            self.version += 1

    def forget(self, site: str, station: str) -> bool:
        """Take a station off the live board (an admin's action); its history stays. True if it was there."""
        with self._lock:
            view = self._stations.pop((site, station), None)
            if view is None:
                return False
            self._forgotten.add((site, station))
            self.version += 1
        log.warning("board forgot a station site=%s station=%s", site, station)
        return True

    # ------------------------------------------------------------------ history

    def _refresh_station_history(self) -> None:
        """Mark the history as changed: the next view re-reads it (a burst of events costs one read, not one each)."""
        with self._lock:
            self._history_dirty = True
            self.version += 1

    def refresh_history(self) -> bool:
        """Re-read today's counts and alarms from SQLite (also written by other replicas); return True if changed."""
        with self._lock:
            self._history_dirty = False  # before the read: an event written during it marks it again
        day = local_day(self.wall())
        counts, alarms = _clean_counts(self.history.counts(day)), _clean_alarms(self.history.alarms(day))
        with self._lock:
            if day == self._day and counts == self._counts and alarms == self._alarms:
                return False
            self._day, self._counts, self._alarms = day, counts, alarms
            for key in sorted(set(counts) | set(alarms)):  # stations known only from history (board restarted)
                if key not in self._stations and key not in self._forgotten and len(self._stations) < self.max_stations:
                    self._stations[key] = StationView(*key)
            self.version += 1
            return True

    # ------------------------------------------------------------------ output

    def snapshot_jpeg(self, site: str, station: str) -> tuple[bytes, dict[str, Any]] | None:
        """Return a station's last snapshot picture and its metadata, or None."""
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
        if (pending is not None and pending >= self.backlog_rows) or v.outbox.get("alarms_pending") or v.outbox.get("bounds_alarm"):
            reasons.append("backlog")
            level = min(level, 2)
        thermal, detector, camera = v.devices.get("thermal"), v.devices.get("detector"), v.devices.get("camera")
        if (
            thermal not in (None, "connected") or detector not in (None, "ok", "ready") or camera not in (None, "ok", "running", "finished")
        ):  # finished: a replayed video ended (demo)
            reasons.append("fault")
            level = min(level, 3)
        return level, reasons

    def view(self) -> dict[str, Any]:
        """Return the page's data: every station's row (worst first), today's totals and the board's counters."""
        if self._history_dirty:
            self.refresh_history()
        now = self.wall()
        with self._lock:
            rows = []
            for key, v in self._stations.items():
                counts = self._counts.get(key, {})
                alarms = self._alarms.get(key, {"count": 0, "recent": []})
                level, reasons = self._assess(v, alarms, now)
                rows.append(
                    {
                        "key": f"{v.site}/{v.station}",
                        "site": v.site,
                        "station": v.station,
                        "level": level,
                        "level_name": LEVELS[level],
                        "reasons": reasons,
                        "state": v.status.get("state") or "unknown",
                        "session": v.status.get("session"),
                        "version": v.status.get("version"),
                        "status_at": v.status_at,
                        "last": dict(v.last) if v.last else None,
                        "today": {"screened": sum(counts.values()), "by_decision": dict(counts), "alarms": alarms["count"]},
                        "recent_alarms": alarms["recent"],
                        "backlog": {
                            k: v.outbox.get(k) for k in ("pending", "alarms_pending", "oldest_age_s", "bounds_alarm", "dropped", "mqtt")
                        }
                        if v.outbox
                        else None,
                        "devices": dict(sorted(v.devices.items())),
                        "station_count_total": v.station_count_total,
                        # The station's own figure, for comparison: the board's count is of events it
                        # received; a board that was down without a session may have fewer.
                        "station_count_today": v.station_count_today,
                        "snapshot": (
                            {
                                "ts": v.snapshot_meta.get("ts"),
                                "blur": v.snapshot_meta.get("blur"),
                                "faces_blurred": v.snapshot_meta.get("faces_blurred"),
                                "width": v.snapshot_meta.get("width"),
                                "height": v.snapshot_meta.get("height"),
                                "url": f"/api/stations/{v.site}/{v.station}/snapshot.jpg?ts={v.snapshot_meta.get('ts')}",
                            }
                            if v.snapshot is not None
                            else None
                        ),
                        "seen_at": v.seen_at,
                        "visits": [dict(x) for x in v.visits],
                        "registrations": [dict(x) for x in v.registrations],
                        # A visit with a denied occupant within the alarm window: shown flagged on the tile.
                        "vehicle_flagged": any(x["flagged"] and now - x["ts"] <= self.alarm_window_s for x in v.visits),
                    }
                )
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
        return {"day": day, "generated_at": now, "version": version, "totals": totals, "stations": rows, "board": self.counters()}

    def counters(self) -> dict[str, Any]:
        """Return what the board took and dropped (``/healthz``, the page's footer)."""
        with self._lock:
            stations = len(self._stations)
            return {
                "messages": self.messages,
                "duplicates": self.duplicates,
                "bad_messages": self.bad_messages,
                "dropped": dict(self.dropped),
                "stations": stations,
                "max_stations": self.max_stations,
            }
