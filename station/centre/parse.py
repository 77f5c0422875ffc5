"""What the centre takes from a station's ``events/…`` message: one typed row, or a verdict with its reason.

Pure: no I/O. :func:`parse_message` is total: for any topic string and any bytes it returns either an
:class:`EventRow` or a :class:`Rejected`, never raises. The value checks are the board's
(``station.board.schema``: sizes, JSON, finite numbers in range, enums, control characters stripped);
this module only adds the envelope the centre needs for de-duplication and gap detection (``msg_id``,
``session``, ``seq``, docs/mqtt.md) and decides which column each kind of message fills.

Kinds (the topic's last segment under ``events/``):

* ``screening`` — one decision; consumes a ``seq``;
* ``alarm`` — either the alarm copy of a screening (same ``seq`` and ``event_id`` as its screening
  message: the centre keeps the event even when the station's outbox bound dropped the screening
  copy) or an ``outbox_overflow`` notice (``kind = overflow``, ``dropped`` rows, carries the current
  ``seq`` without consuming one);
* ``vehicle`` — a plate reading at the vehicle lane; consumes a ``seq`` (the plate itself is not kept);
* ``audit`` — an action carried out or refused at the station; carries the current ``seq`` only;
* ``visit`` — a vehicle visit (its kind, direction, flagged); consumes a ``seq``;
* ``registration`` — an outsider vehicle registered at the lane (its reason); consumes a ``seq``;
* ``clock`` — a clock correction (:class:`ClockCorrection`): the offset to add to the records the
  station stamped while its clock was unsynchronised; consumes no ``seq``.

A record stamped ``clock_synced: false`` may carry any time from 1970 on (a Pi boots at 1970): it is
kept with that time (the writer files it under ``events_misdated``) so its correction can date it.

Tracing (station/codes/trace_key.py): a screening's ``code.trace_ref`` (the holder under the
district key) and a vehicle's or visit's ``plate_ref`` are kept with their ``trace_key`` (the key's
id) — 128-bit keyed hashes, never the holder id or the plate.

Only what a row lists is kept: no code payload, no name, no plate, no ID number reaches the database.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from station.board import schema
from station.board.schema import Dropped

MAX_EVENT_PAYLOAD = schema.MAX_PAYLOAD["events"]
KINDS = ("screening", "alarm", "vehicle", "audit", "visit", "registration", "clock")
SEQ_KINDS = ("screening", "alarm", "vehicle", "visit", "registration")
"""Row kinds whose ``seq`` is the number of a record the station made (gap detection counts them)."""
CODE_COLOURS = frozenset({"green", "yellow", "red"})
SESSION_MAX = 2**31
SEQ_MAX = 2**62
TRACE_REF = re.compile(r"^[0-9a-f]{32}$")
TRACE_KEY = re.compile(r"^[0-9a-f]{16}$")
MAX_CLOCK_PAYLOAD = 256 * 1024
"""A correction names up to 2000 ids of up to 80 characters (``station.ops.clock.MAX_IDS``): more than an event's cap."""
MAX_CORRECTION_IDS = 2000
WAIT_MS_MAX = 3_600_000.0
"""A screening's time at the gate above an hour is not a wait but a broken stamp: not kept (the row is)."""
OFFSET_MS_MAX = 80 * 366 * 86_400_000
"""A correction moves records by at most 80 years either way (a 1970 boot to today is 56)."""
UNSYNCED_TS_RANGE = (0.0, schema.TS_RANGE[1])
CORRECTED_KINDS = {"event_ids": "event", "vehicle_ids": "vehicle", "visit_ids": "visit", "registration_ids": "registration"}
"""The id lists of a correction and the record kind each names (``event`` = a screening and its alarm copy)."""


@dataclass(frozen=True, slots=True)
class EventRow:
    """One message as the centre stores it (``events`` table); ``ts`` is the station's event time (unix s)."""

    msg_id: str
    ts: float
    site: str
    station: str
    session: int | None
    seq: int | None
    kind: str  # screening | alarm | vehicle | audit | overflow
    event_id: str | None = None  # screening/alarm: the decision's id; vehicle: vehicle_id; audit: audit_id
    decision: str | None = None
    reason: str | None = None
    temperature_c: float | None = None
    alarm: bool = False
    code_colour: str | None = None
    decision_source: str | None = None
    detail: str | None = None  # vehicle: resident/outsider; audit: the action; overflow: the bounds exceeded
    dropped: int | None = None  # overflow: rows the station's outbox bound dropped
    clock_synced: bool | None = None
    trace_ref: str | None = None  # the holder (screening) or plate (vehicle, visit) under the district key
    trace_key: str | None = None  # that key's id
    wait_ms: float | None = None  # screening/alarm: the station's latency_ms.total (entering the zone -> decision)


@dataclass(frozen=True, slots=True)
class ClockCorrection:
    """One ``events/clock`` message: true time = record ``ts`` + ``offset_ms`` for the records it names (docs/mqtt.md)."""

    msg_id: str
    site: str
    station: str
    correction_id: str
    offset_ms: int
    seq_first: int | None
    seq_last: int | None
    count: int
    ids_complete: bool
    late: bool
    records: tuple[tuple[str, str], ...]  # (record kind: event | vehicle | visit | registration, its id)


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message the centre counts and drops; ``reason`` is a short label (``not_json``, ``bad_ts``, …)."""

    reason: str


def split_topic(prefix: str, topic: str) -> tuple[str, str, str] | Rejected:
    """Return ``(site, station, kind)`` of ``<prefix>/<site>/<station>/events/<kind>``; else :class:`Rejected`."""
    if not topic.startswith(prefix + "/"):
        return Rejected("not_ours")
    parts = topic[len(prefix) + 1 :].split("/")
    if len(parts) != 4 or parts[2] != "events":
        return Rejected("bad_topic")
    site, station, _, kind = parts
    if not (schema.segment(site) and schema.segment(station)):
        return Rejected("bad_topic")
    if kind not in KINDS:
        return Rejected("unknown_kind")
    return site, station, kind


def parse_message(prefix: str, topic: Any, payload: Any) -> EventRow | ClockCorrection | Rejected:
    """Return the typed row of one ``events/…`` message, or why it is dropped; never raise."""
    try:
        if not isinstance(topic, str) or not isinstance(payload, (bytes, bytearray, memoryview)):
            return Rejected("bad_input")
        split = split_topic(prefix.rstrip("/"), topic)
        if isinstance(split, Rejected):
            return split
        site, station, kind = split
        body = schema.decode_object(bytes(payload), MAX_CLOCK_PAYLOAD if kind == "clock" else MAX_EVENT_PAYLOAD)
        if kind == "clock":
            return _correction(site, station, body)
        return _row(site, station, kind, body)
    except Dropped as exc:
        return Rejected(exc.reason)
    except Exception as exc:  # a check this module missed: still a verdict, named by its type, never a dead consumer
        return Rejected(f"parser_{type(exc).__name__}"[:40])


def _envelope(site: str, station: str, body: dict[str, Any]) -> dict[str, Any]:
    """Return the checked envelope fields; raise :class:`Dropped` when one the centre relies on is unusable."""
    msg_id = schema.event_id(body.get("msg_id"))
    if msg_id is None:
        raise Dropped("bad_msg_id")
    # The envelope names the sender too: a message whose body claims another station than its topic
    # is someone publishing under a topic that is not theirs (the broker's ACL should prevent it).
    for key, want in (("station_id", station), ("site", site)):
        if key in body and body[key] != want:
            raise Dropped("sender_mismatch")
    seq = schema.count(body.get("seq"), SEQ_MAX)
    session = schema.count(body.get("session"), SESSION_MAX)
    synced = body.get("clock_synced")
    return {"msg_id": msg_id, "seq": seq, "session": session, "clock_synced": synced if isinstance(synced, bool) else None}


def _trace(record: Any, ref_field: str) -> tuple[str | None, str | None]:
    """Return ``(trace_ref, trace_key)`` of a record when both are well formed (else neither: never a half pair)."""
    if not isinstance(record, dict):
        return None, None
    ref, key = record.get(ref_field), record.get("trace_key")
    if isinstance(ref, str) and isinstance(key, str) and TRACE_REF.match(ref) and TRACE_KEY.match(key):
        return ref, key
    return None, None


def _trace_fields(record: Any) -> dict[str, Any]:
    ref, key = _trace(record, "plate_ref")
    return {"trace_ref": ref, "trace_key": key}


RECORD_TIME = {
    "screening": ("event", "ts"),
    "alarm": ("event", "ts"),
    "vehicle": ("vehicle", "ts"),
    "visit": ("visit", "closed_ts"),
    "registration": ("registration", "ts"),
}
"""Per record kind: the body's key of the record and the record's time field."""


def _early_ts(kind: str, body: dict[str, Any]) -> float | None:
    """Return a record's time before 2001 when the station says its clock was unsynchronised (else None: the usual checks)."""
    if body.get("clock_synced") is not False or kind not in RECORD_TIME or body.get("kind") == "outbox_overflow":
        return None
    key, field = RECORD_TIME[kind]
    record = body.get(key)
    raw = record.get(field) if isinstance(record, dict) else None
    if raw is None:
        raw = body.get("ts")
    if schema.timestamp(raw) is not None:
        return None
    return schema.number(raw, *UNSYNCED_TS_RANGE)


def _row(site: str, station: str, kind: str, body: dict[str, Any]) -> EventRow:
    early = _early_ts(kind, body)
    if early is None:
        return _typed_row(site, station, kind, body)
    # Checked like any record with a stand-in time, then given its own: the correction dates it later.
    stand_in = schema.TS_RANGE[0]
    key, field = RECORD_TIME[kind]
    record = body.get(key)
    restamped = {**body, "ts": stand_in}
    if isinstance(record, dict):
        restamped[key] = {**record, field: stand_in}
    return dataclasses.replace(_typed_row(site, station, kind, restamped), ts=early)


def _ids(correction: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """Return the (record kind, id) pairs a correction names; raise :class:`Dropped` for a bad or too long list."""
    out: list[tuple[str, str]] = []
    for field, kind in CORRECTED_KINDS.items():
        ids = correction.get(field, [])
        if not isinstance(ids, list):
            raise Dropped("bad_ids")
        if len(out) + len(ids) > MAX_CORRECTION_IDS:
            raise Dropped("too_many_ids")
        for rid in ids:
            if schema.event_id(rid) is None:
                raise Dropped("bad_ids")
            out.append((kind, rid))
    return tuple(dict.fromkeys(out))


def _correction(site: str, station: str, body: dict[str, Any]) -> ClockCorrection:
    """Return the checked correction of an ``events/clock`` message; raise :class:`Dropped` when any part is unusable."""
    env = _envelope(site, station, body)
    c = body.get("correction")
    if not isinstance(c, dict):
        raise Dropped("no_correction")
    correction_id = schema.event_id(c.get("correction_id"))
    if correction_id is None:
        raise Dropped("bad_correction_id")
    offset = schema.number(c.get("offset_ms"), -OFFSET_MS_MAX, OFFSET_MS_MAX)
    if offset is None or offset != int(offset):
        raise Dropped("bad_offset")
    raw_first, raw_last = c.get("seq_first"), c.get("seq_last")
    first, last = schema.count(raw_first, SEQ_MAX), schema.count(raw_last, SEQ_MAX)
    if (raw_first is None) != (raw_last is None) or (raw_first is not None and (first is None or last is None or first > last)):
        raise Dropped("bad_seq_range")
    count = schema.count(c.get("count"))
    complete, late = c.get("ids_complete"), c.get("late", False)
    if count is None or not isinstance(complete, bool) or not isinstance(late, bool):
        raise Dropped("bad_correction")
    records = _ids(c)
    if not records and first is None:
        raise Dropped("empty_correction")
    return ClockCorrection(
        msg_id=env["msg_id"],
        site=site,
        station=station,
        correction_id=correction_id,
        offset_ms=int(offset),
        seq_first=first,
        seq_last=last,
        count=count,
        ids_complete=complete,
        late=late,
        records=records,
    )


def _typed_row(site: str, station: str, kind: str, body: dict[str, Any]) -> EventRow:
    env = _envelope(site, station, body)
    base = {"site": site, "station": station, **env}
    if kind in ("screening", "alarm") and not (kind == "alarm" and body.get("kind") == "outbox_overflow"):
        event = schema.clean_event(body.get("event"), body.get("ts"))
        if env["seq"] is None:
            raise Dropped("bad_seq")  # a record without its number would hide a gap
        raw = body.get("event")
        colour = schema.enum(raw.get("code_colour"), CODE_COLOURS) if isinstance(raw, dict) else None
        trace_ref, trace_key = _trace(raw.get("code"), "trace_ref") if isinstance(raw, dict) else (None, None)
        latency = raw.get("latency_ms") if isinstance(raw, dict) else None
        wait_ms = schema.number(latency.get("total"), 0.0, WAIT_MS_MAX) if isinstance(latency, dict) else None
        return EventRow(
            ts=event["ts"],
            kind=kind,
            event_id=event["event_id"],
            decision=event["decision"],
            reason=event["reason"],
            temperature_c=event["temperature_c"],
            alarm=event["alarm"],
            code_colour=colour,
            decision_source=event["decision_source"],
            trace_ref=trace_ref,
            trace_key=trace_key,
            wait_ms=wait_ms,
            **base,
        )
    ts = schema.timestamp(body.get("ts"))
    if ts is None:
        raise Dropped("bad_ts")
    if kind == "alarm":  # the outbox_overflow notice
        dropped = schema.count(body.get("dropped"))
        reasons = body.get("reasons")
        detail = ",".join(r for r in reasons if isinstance(r, str) and schema.TOKEN.match(r))[:64] if isinstance(reasons, list) else None
        return EventRow(ts=ts, kind="overflow", dropped=dropped, detail=detail or None, alarm=True, **base)
    if kind == "vehicle":
        vehicle = body.get("vehicle")
        if not isinstance(vehicle, dict):
            raise Dropped("no_vehicle")
        vid = schema.event_id(vehicle.get("vehicle_id"))
        if vid is None:
            raise Dropped("bad_event_id")
        if env["seq"] is None:
            raise Dropped("bad_seq")
        vts = schema.timestamp(vehicle.get("ts"))
        return EventRow(
            ts=vts if vts is not None else ts,
            kind="vehicle",
            event_id=vid,
            detail=schema.token(vehicle.get("type")),
            **_trace_fields(vehicle),
            **base,
        )
    if kind in ("visit", "registration"):
        if env["seq"] is None:
            raise Dropped("bad_seq")
        record = body.get(kind)
        if kind == "visit":  # the plate is read for its checks and not kept; its keyed reference is
            visit = schema.clean_visit(record, ts)
            return EventRow(
                ts=visit["ts"],
                kind="visit",
                event_id=visit["visit_id"],
                detail=visit["kind"],
                reason=visit["direction"],
                alarm=visit["flagged"],
                **_trace_fields(record),
                **base,
            )
        reg = schema.clean_registration(record, ts)
        return EventRow(
            ts=reg["ts"], kind="registration", event_id=reg["registration_id"], detail=reg["reason"], **_trace_fields(record), **base
        )
    # audit: who did what is kept at the station; the centre keeps that it happened and the action's name.
    return EventRow(
        ts=ts,
        kind="audit",
        event_id=schema.event_id(body.get("audit_id")),
        detail=schema.token(body.get("action")) or schema.token(body.get("kind")),
        reason=schema.text(body.get("reason")),
        **base,
    )
