"""What the board accepts from a station: every value typed and capped when it arrives.

A station (or anything that can publish under its topic) is not trusted: numbers must be finite
numbers in a sane range, strings are length-limited and stripped of control and format characters
(bidi overrides, lone surrogates), enums are checked, unknown keys are dropped. Each ``clean_*``
function takes a decoded JSON object and returns a new dict holding only typed values (a field
that fails its check is absent or None). For any input none raises anything but :class:`Dropped`,
the verdict that the whole message is refused, with its reason.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from typing import Any

SEGMENT = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""A topic's site, station or component segment: the same pattern as config's station.site/id."""
TOKEN = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
"""A device or link state (``connected``, ``reconnecting``, ``auth_failed``…)."""
EVENT_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,80}$")

STATUS_STATES = frozenset({"online", "stopped", "offline"})
DECISIONS = frozenset({"pass", "deny_fever", "deny_code", "retry", "manual_check"})
BLURS = frozenset({"off", "all", "faces"})

TS_RANGE = (1.0e9, 4.2e9)  # 2001 … 2103: a decision time outside this is a broken or hostile clock
TEMP_RANGE = (-40.0, 100.0)
COUNT_MAX = 10**12
TEXT_MAX = 160  # reasons, bounds_alarm, version…
VERSION_MAX = 32

# Payload caps per topic kind, checked before parsing (bytes).
MAX_PAYLOAD = {"status": 4096, "state": 16384, "events": 65536, "snapshot": 1 << 20}


class Dropped(Exception):
    """A message the board does not take; ``reason`` is the verdict's label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def number(v: Any, lo: float, hi: float) -> float | None:
    """Return ``v`` as a float if it is a finite int or float within [lo, hi] (bools are not numbers); else None."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        f = float(v)
    except OverflowError:  # an int too large for a float
        return None
    return f if math.isfinite(f) and lo <= f <= hi else None


def count(v: Any, hi: int = COUNT_MAX) -> int | None:
    """Return ``v`` if it is a non-negative int up to ``hi`` (an integral float is accepted); else None."""
    f = number(v, 0, hi)
    return int(f) if f is not None and f == int(f) else None


def text(v: Any, limit: int = TEXT_MAX) -> str | None:
    """Return ``v`` as a string without control/format characters, cut to ``limit`` characters; else None."""
    if not isinstance(v, str):
        return None
    cleaned = "".join(" " if unicodedata.category(c)[0] == "C" else c for c in v[: limit * 4])
    cleaned = " ".join(cleaned.split())[:limit]
    return cleaned or None


def token(v: Any) -> str | None:
    """Return ``v`` if it is a state word such as ``connected``; else None."""
    return v if isinstance(v, str) and TOKEN.match(v) else None


def enum(v: Any, allowed: frozenset[str]) -> str | None:
    """Return ``v`` if it is one of ``allowed``; else None."""
    return v if isinstance(v, str) and v in allowed else None


def event_id(v: Any) -> str | None:
    """Return ``v`` if it looks like an event id (letters, digits, ``_.:-``, at most 80); else None."""
    return v if isinstance(v, str) and EVENT_ID.match(v) else None


def timestamp(v: Any) -> float | None:
    """Return ``v`` if it is a plausible decision time (:data:`TS_RANGE`); else None."""
    return number(v, *TS_RANGE)


def temperature(v: Any) -> float | None:
    """Return ``v`` if it is a temperature in :data:`TEMP_RANGE` (°C); else None."""
    return number(v, *TEMP_RANGE)


def segment(v: str) -> bool:
    """Return whether ``v`` is a valid site, station or component topic segment."""
    return bool(SEGMENT.match(v))


def decode_object(payload: bytes, limit: int) -> dict[str, Any]:
    """Return the payload as a JSON object; raise :class:`Dropped` with the reason otherwise."""
    if len(payload) > limit:
        raise Dropped("too_large")
    try:
        body = json.loads(payload.decode("utf-8")) if payload else {}
    except UnicodeDecodeError:
        raise Dropped("not_utf8") from None
    except (ValueError, RecursionError):  # bad JSON, a 5000-digit int, nesting too deep
        raise Dropped("not_json") from None
    if not isinstance(body, dict):
        raise Dropped("not_object")
    return body


def clean_status(body: dict[str, Any]) -> dict[str, Any]:
    """Return the typed availability message (state, session, version); raise :class:`Dropped` without a known state."""
    state = enum(body.get("state"), STATUS_STATES)
    if state is None:
        raise Dropped("bad_status")
    return {"state": state, "session": count(body.get("session"), 2**31), "version": text(body.get("version"), VERSION_MAX)}


def clean_outbox(body: dict[str, Any]) -> dict[str, Any]:
    """Return the typed outbox state (depth, age, drops, link state)."""
    return {
        "pending": count(body.get("pending")),
        "alarms_pending": count(body.get("alarms_pending")),
        "oldest_age_s": count(body.get("oldest_age_s")),
        "bytes": count(body.get("bytes")),
        "dropped": count(body.get("dropped")),
        "bounds_alarm": text(body.get("bounds_alarm")),
        "mqtt": token(body.get("mqtt")),
    }


def clean_screening_state(body: dict[str, Any]) -> dict[str, Any]:
    """Return the typed screening state (counts, last decision, alarm flag)."""
    alarm = body.get("alarm")
    return {
        "count_total": count(body.get("count_total")),
        "count_today": count(body.get("count_today")),
        "last_event_id": event_id(body.get("last_event_id")),
        "last_decision": enum(body.get("last_decision"), DECISIONS),
        "last_decision_source": token(body.get("last_decision_source")),
        "last_temperature_c": temperature(body.get("last_temperature_c")),
        "alarm": alarm if isinstance(alarm, bool) else None,
        "ts": timestamp(body.get("ts")),
    }


def clean_device(body: dict[str, Any]) -> dict[str, Any]:
    """Return the typed state of one device."""
    return {"state": token(body.get("state"))}


def clean_event(event: Any, envelope_ts: Any = None) -> dict[str, Any]:
    """Return the typed screening (or alarm) event: id, ts, decision, temperature, alarm, reason.

    ``ts`` falls back to the envelope's; raise :class:`Dropped` without an event id or a usable time.
    """
    if not isinstance(event, dict):
        raise Dropped("no_event")
    eid = event_id(event.get("event_id"))
    if eid is None:
        raise Dropped("bad_event_id")
    ts = timestamp(event.get("ts"))
    if ts is None:
        ts = timestamp(envelope_ts)
    if ts is None:
        raise Dropped("bad_ts")
    alarm = event.get("alarm")
    return {
        "event_id": eid,
        "ts": ts,
        "decision": enum(event.get("decision"), DECISIONS),
        "temperature_c": temperature(event.get("temperature_c")),
        "alarm": alarm is True,
        "reason": text(event.get("reason")),
        "decision_source": token(event.get("decision_source")),  # station | staff (the operator-assisted check)
    }


def clean_snapshot_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """Return the typed metadata of a snapshot picture (time, blur mode, size)."""
    return {
        "ts": timestamp(meta.get("ts")),
        "blur": enum(meta.get("blur"), BLURS),
        "faces_blurred": count(meta.get("faces_blurred"), 10_000),
        "width": count(meta.get("width"), 20_000),
        "height": count(meta.get("height"), 20_000),
    }


VISIT_KINDS = frozenset({"resident_vehicle", "outsider_vehicle", "unread_vehicle"})
DIRECTIONS = frozenset({"entry", "exit", "unknown"})
REGISTRATION_REASONS = frozenset({"visit", "delivery", "work", "official", "pickup"})
PLATE_MAX = 12
OCCUPANTS_MAX = 100
LAST4 = re.compile(r"^[0-9]{4}$")


def _envelope_ts(record: dict[str, Any], key: str, envelope_ts: Any) -> float:
    ts = timestamp(record.get(key))
    if ts is None:
        ts = timestamp(envelope_ts)
    if ts is None:
        raise Dropped("bad_ts")
    return ts


def clean_visit(visit: Any, envelope_ts: Any = None) -> dict[str, Any]:
    """Return the typed vehicle visit: id, times, plate, kind, direction, occupants' summary, flagged, registration.

    Raise :class:`Dropped` without a visit id or a usable time. Counts that are not counts are None;
    ``flagged`` is true only when the station said so *or* its own summary counts a denied occupant.
    """
    if not isinstance(visit, dict):
        raise Dropped("no_visit")
    vid = event_id(visit.get("visit_id"))
    if vid is None:
        raise Dropped("bad_visit_id")
    raw = visit.get("summary")
    summary: dict[str, Any] = raw if isinstance(raw, dict) else {}
    occupants = count(summary.get("occupants"), OCCUPANTS_MAX)
    fever = count(summary.get("fever"), OCCUPANTS_MAX)
    denied = count(summary.get("denied"), OCCUPANTS_MAX)
    return {
        "visit_id": vid,
        "ts": _envelope_ts(visit, "closed_ts", envelope_ts),
        "plate": text(visit.get("plate"), PLATE_MAX),
        "kind": enum(visit.get("kind"), VISIT_KINDS),
        "direction": enum(visit.get("direction"), DIRECTIONS),
        "occupants": occupants,
        "fever": fever,
        "denied": denied,
        "flagged": visit.get("flagged") is True or bool(denied),
        "registered": visit.get("registered") is True,
        "registration_id": event_id(visit.get("registration_id")),
    }


def clean_registration(reg: Any, envelope_ts: Any = None) -> dict[str, Any]:
    """Return the typed outsider registration: id, time, plate, reason, destination, last four phone digits.

    Raise :class:`Dropped` without a registration id or a usable time. The phone's hash is not kept.
    """
    if not isinstance(reg, dict):
        raise Dropped("no_registration")
    rid = event_id(reg.get("registration_id"))
    if rid is None:
        raise Dropped("bad_registration_id")
    last4 = reg.get("phone_last4")
    return {
        "registration_id": rid,
        "ts": _envelope_ts(reg, "ts", envelope_ts),
        "plate": text(reg.get("plate"), PLATE_MAX),
        "reason": enum(reg.get("reason"), REGISTRATION_REASONS),
        "destination": text(reg.get("destination"), 40),
        "phone_last4": last4 if isinstance(last4, str) and LAST4.match(last4) else None,
    }
