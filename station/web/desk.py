"""What the operator page shows and does: status, alarms, live events, PIN-guarded actions.

Live events (``decision``, ``alarm``, ``ack``, ``action``) are pushed to every connected page
over server-sent events. The decision listener runs on the pipeline's executor thread, so it only
formats the message and hands it to each subscriber's event loop (bounded queue; a stuck page
loses old messages, never blocks the gate).

Every action needs the operator PIN and is audited, carried out or refused, in
``operator_actions`` plus an ``events/audit`` outbox message (``store.record_operator_action``).
"open gate once" goes through the same audited path as the MQTT ``cmd/open-gate``
(``station.link.handlers.CommandHandlers.open_gate``: deadline, replay guard, ``gate_actions`` row).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from station.domain.model import Decision
from station.domain.prompts import reason_words
from station.domain.registration import REASONS as REGISTRATION_REASONS
from station.domain.registration import FormError, check_form
from station.lane.capture import CROP_KINDS
from station.lane.pipeline import Decided
from station.link.handlers import CommandError, CommandHandlers
from station.ops.ratelimit import FailureLog, RateLimiter
from station.store.retention import CROPS_DIR
from station.web.pin import PinGuard, pin_is_short, verify_pin
from station.web.registration import PUBLIC_KEYS, Registrar

log = logging.getLogger("station.web.desk")

OPEN_DEADLINE_S = 5.0  # the open-gate request is void if not carried out within this
SUBSCRIBER_QUEUE = 64
CLINICAL_RANGE_C = (30.0, 45.0)
ACTIONS = ("ack", "open_gate", "recheck", "staff_check", "register_outsider")
STAFF_CHECK_REASONS = ("id_checked", "paper_certificate", "escorted")
"""Why staff may decide for a person without a smartphone: ID checked by hand, a paper certificate, escorted."""
STAFF_CHECK_DECISIONS = ("pass", "deny_code", "manual_check")
STAFF_CHECK_REFUSALS = {
    "nobody_at_gate": "nobody is at the gate: the person must stand in front of the camera",
    "fever": "the person's temperature is a fever: re-check with a clinical thermometer instead",
    "no_temperature": "the person's temperature has not been taken yet: let the station measure first",
    "bad_decision": "staff may decide only pass, deny_code or manual_check",
    "lane_busy": "the lane is busy: try again",
    "lane_not_answering": "the lane did not answer: try again",
}
REFUSALS_AUDITED_PER_MIN = 20
"""Refused attempts written to the audit (row + outbox message) per minute; the rest are counted
(``refusals_unaudited`` in the status) and logged once a minute: a PIN-guessing script must not fill the disk."""


class ActionRefused(Exception):
    """An operator action was refused; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, reason: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.extra = extra


@dataclass(frozen=True, slots=True)
class DeskSettings:
    """The operator page's settings from ``[http]`` and the screening policy (see ``station.config``)."""

    language: str = "zh"
    pin_hash: str = ""
    pin_max_failures: int = 5
    pin_lock_s: float = 60.0
    pin_lock_max_s: float = 3600.0
    overrides_per_min: int = 6
    fever_threshold_c: float = 37.3
    command_ttl_s: float = 0.5


def decision_message(d: Decided) -> dict[str, Any]:
    """Return what the page shows of a decision (no face, no code payload)."""
    e = d.event
    return {
        "event_id": e.event_id,
        "ts": e.wall_ts,
        "decision": e.decision.value,
        "reason": e.reason,
        "words": reason_words(e.reason, e.decision.value).as_dict(),  # the reason as the public reads it
        "alarm": e.alarm,
        "temperature_c": e.temperature_c,
        "code_colour": e.code_colour.value if e.code_colour else None,
        "code_status": e.code.get("status"),
        "decision_source": e.decision_source,
        "gate": {"action": d.gate.action.value, "executed": d.gate.executed, "reason": d.gate.reason},
    }


def start_of_today(now_wall: float) -> float:
    """Return the local midnight before ``now_wall``: "today" follows the clock where the operator stands."""
    local = dt.datetime.fromtimestamp(now_wall).astimezone()
    return local.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


class OperatorDesk:
    """The operator display's state and actions, independent of HTTP."""

    def __init__(
        self,
        *,
        store: Any,
        gate: Any,
        identity: dict[str, str],
        settings: DeskSettings,
        devices: Callable[[], dict[str, Any]],
        direction_counts: Callable[[], dict[str, int]] = dict,
        staff_check: Callable[[Decision, str], tuple[Any, str]] | None = None,
        registrar: Registrar | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.identity = identity
        self.settings = settings
        self.devices = devices
        self.direction_counts = direction_counts
        self.lane_staff_check = staff_check  # Pipeline.staff_check: the lane decides its current person
        self.registrar = registrar  # outsider vehicle registration (vehicle lanes only)
        self.monotonic = monotonic
        self.wall = wall
        self.guard = PinGuard(
            settings.pin_max_failures, settings.pin_lock_s, settings.overrides_per_min, monotonic, max_lock_s=settings.pin_lock_max_s
        )
        self.refusal_audit = RateLimiter(REFUSALS_AUDITED_PER_MIN, 60.0, monotonic=monotonic)
        self.refusal_log = FailureLog(log, "operator refusal audit", monotonic=monotonic)
        self.refusals_unaudited = 0
        self.pin_short = False  # the configured PIN verified but has fewer than 6 digits: replace it
        # The very handlers that serve MQTT cmd/open-gate: one audited path for opening the gate.
        self.commands = CommandHandlers(
            store=store,
            gate=gate,
            monotonic=monotonic,
            config_path=None,
            data_dir=Path(store.path).parent,
            snapshot=self.status,
            command_ttl_s=settings.command_ttl_s,
            wall=wall,
        )
        self.last: dict[str, Any] | None = None
        last = store.last_event()
        if last is not None:  # after a restart the page shows the last decision, not an empty lane
            keys = ("event_id", "ts", "decision", "reason", "alarm", "temperature_c", "code_colour", "decision_source")
            self.last = {k: last.get(k) for k in keys}
            self.last["words"] = reason_words(str(last.get("reason") or ""), str(last.get("decision") or "")).as_dict()
        self.prompt: dict[str, Any] | None = None  # the lane's next step (station.lane.prompting)
        self._subs: set[tuple[asyncio.AbstractEventLoop, asyncio.Queue[str | None]]] = set()
        self._lock = threading.Lock()
        self.viewer_seen = threading.Event()  # set when the first page connects (the demo waits for it)
        self.published = 0
        self.lost = 0

    # -- live events ------------------------------------------------------------------------------
    def subscribe(self) -> asyncio.Queue[str | None]:
        """Return a new page's queue of SSE messages (``None`` ends the stream); call on its event loop."""
        q: asyncio.Queue[str | None] = asyncio.Queue(maxsize=SUBSCRIBER_QUEUE)
        with self._lock:
            self._subs.add((asyncio.get_running_loop(), q))
        self.viewer_seen.set()
        return q

    def unsubscribe(self, q: asyncio.Queue[str | None]) -> None:
        """Stop sending to a page's queue (the page went away)."""
        with self._lock:
            self._subs = {s for s in self._subs if s[1] is not q}

    def subscribers(self) -> int:
        """Return how many pages are connected."""
        with self._lock:
            return len(self._subs)

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        """Send one SSE message to every page; callable from any thread."""
        text = f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False, default=str)}\n\n"
        self._fan_out(text)

    def close(self) -> None:
        """End every SSE stream (the server is stopping)."""
        self._fan_out(None)

    def _fan_out(self, item: str | None) -> None:
        with self._lock:
            subs = list(self._subs)
        self.published += 1
        for loop, q in subs:
            try:
                loop.call_soon_threadsafe(self._put, q, item)
            except RuntimeError:  # that page's loop is gone (server stopped): nothing to deliver to
                self.unsubscribe(q)

    def _put(self, q: asyncio.Queue[str | None], item: str | None) -> None:
        if q.full():  # a stalled page: drop its oldest message, keep the newest
            q.get_nowait()
            self.lost += 1
        q.put_nowait(item)

    def on_decided(self, d: Decided) -> None:
        """Remember and broadcast a decision (pipeline listener, on the executor thread)."""
        msg = decision_message(d)
        self.last = msg
        self.publish("decision", msg)
        if d.event.alarm:
            self.publish("alarm", {**msg, "ack": None})

    def on_prompt(self, msg: dict[str, Any]) -> None:
        """Remember and broadcast the lane's next-step prompt (prompt watcher thread)."""
        self.prompt = msg
        self.publish("prompt", msg)

    # -- reads ------------------------------------------------------------------------------------
    def counts_today(self) -> dict[str, Any]:
        """Return today's decision counts, grouped as the page shows them, and the direction counts."""
        by = self.store.counts(since_ts=start_of_today(self.wall()))
        return {
            "total": sum(by.values()),
            "pass": by.get("pass", 0),
            "deny": by.get("deny_fever", 0) + by.get("deny_code", 0),
            "fever": by.get("deny_fever", 0),
            "retry": by.get("retry", 0),
            "manual_check": by.get("manual_check", 0),
            "by_decision": by,
            **{f"direction_{k}": v for k, v in self.direction_counts().items()},
        }

    def alarms(self, limit: int = 20) -> list[dict[str, Any]]:
        """Return today's latest ``limit`` alarms with their acknowledgements and the kinds of crop kept (``crops``)."""
        rows = list(self.store.alarms(limit=limit, since_ts=start_of_today(self.wall())))
        kept = self.store.crops([a["event_id"] for a in rows])
        for a in rows:
            a["crops"] = sorted(kept.get(a["event_id"], {}))
        return rows

    def crop_file(self, event_id: str, kind: str) -> Path | None:
        """Return the kept crop file of ``kind`` (face, thermal) for ``event_id``, or None when there is none."""
        if kind not in CROP_KINDS:
            return None
        name = self.store.crops([event_id]).get(event_id, {}).get(kind)
        if not name or Path(name).name != name:  # a file name in crops/, never a path
            return None
        path = Path(self.store.path).parent / CROPS_DIR / name
        return path if path.is_file() else None

    def status(self) -> dict[str, Any]:
        """Return everything the page draws: identity, devices, counts, last decision, alarms, PIN state."""
        alarms = self.alarms()
        return {
            "station": dict(self.identity),
            "ui": {
                "language": self.settings.language,
                "pin_configured": bool(self.settings.pin_hash),
                "fever_threshold_c": self.settings.fever_threshold_c,
                "staff_check_reasons": list(STAFF_CHECK_REASONS),
                "staff_check_decisions": list(STAFF_CHECK_DECISIONS),
                "registration_reasons": list(REGISTRATION_REASONS) if self.registrar is not None else [],
            },
            "registration": self.registration_status(),
            "devices": self.devices(),
            "counts": self.counts_today(),
            "last_decision": self.last,
            "prompt": self.prompt,
            "alarms": alarms,
            "unacknowledged": sum(1 for a in alarms if a["ack"] is None),
            "pin_locked_s": round(self.guard.locked_for(), 1),
            "pin_short": self.pin_short,
            "refusals_unaudited": self.refusals_unaudited,
            "ts": self.wall(),
        }

    def registration_status(self) -> dict[str, Any] | None:
        """Return the outsider vehicle to offer for registration and today's registrations, or None without a vehicle lane."""
        if self.registrar is None:
            return None
        return {"outsider": self.registrar.latest_outsider(), "recent": self.registrar.recent(start_of_today(self.wall()))}

    # -- actions ----------------------------------------------------------------------------------
    def _authorise(self, action: str, operator: str, pin: str, event_id: str | None, override: bool) -> None:
        """Refuse (audited) unless the PIN is right and the budgets allow; the PIN is never recorded."""

        def refuse(status: int, reason: str, message: str, **extra: Any) -> ActionRefused:
            if self.refusal_audit.allow("refused"):
                self.store.record_operator_action(action, operator, False, reason, event_id=event_id, detail=extra)
                log.warning("operator action refused action=%s operator=%s reason=%s", action, operator, reason)
            else:  # counted, logged once a minute, not written: the audit stays bounded under a guessing script
                self.refusals_unaudited += 1
                self.refusal_log.report("rate_limited", action=action, reason=reason, unaudited=self.refusals_unaudited)
            self.publish("action", {"action": action, "operator": operator, "ok": False, "reason": reason})
            return ActionRefused(status, reason, message, **extra)

        if not self.settings.pin_hash:
            raise refuse(403, "no_pin_configured", "no operator PIN is configured on this station (http.pin_hash)")
        # The slot is taken before the (slow) hash: parallel requests cannot each get a guess.
        attempt = self.guard.begin()
        if not attempt.granted:
            locked = math.ceil(attempt.locked_s)
            raise refuse(429, "locked", f"too many wrong PINs: locked for {locked} s", retry_after_s=locked)
        if not verify_pin(pin, self.settings.pin_hash):
            if attempt.left == 0:
                raise refuse(
                    403,
                    "wrong_pin",
                    f"wrong PIN; locked for {math.ceil(attempt.locked_s)} s",
                    attempts_left=0,
                    retry_after_s=math.ceil(attempt.locked_s),
                )
            raise refuse(403, "wrong_pin", f"wrong PIN; {attempt.left} attempts left", attempts_left=attempt.left)
        self.guard.succeeded()
        if pin_is_short(pin) and not self.pin_short:
            self.pin_short = True
            log.warning("operator PIN has fewer than 6 digits: set a new one (python -m station.web.pin, http.pin_hash)")
        if override and not self.guard.take_override():
            raise refuse(429, "rate_limited", f"at most {self.settings.overrides_per_min} overrides per minute")

    @staticmethod
    def _who(operator: str) -> str:
        who = " ".join(str(operator).split())[:40]
        return who or "operator"

    def acknowledge(self, event_id: str, operator: str, pin: str) -> dict[str, Any]:
        """Acknowledge the alarm ``event_id`` (PIN checked, audited); raise :class:`ActionRefused` if refused."""
        who = self._who(operator)
        event = self.store.event(event_id)
        if event is None or not event.get("alarm"):
            raise ActionRefused(404, "no_such_alarm", f"no alarm with event id {event_id!r}")
        self._authorise("ack", who, pin, event_id, override=False)
        rowid = self.store.record_operator_action("ack", who, True, "ok", event_id=event_id)
        ack = {"event_id": event_id, "operator": who, "ts": self.wall(), "audit_row": rowid}
        log.info("alarm acknowledged event_id=%s operator=%s", event_id, who)
        self.publish("ack", ack)
        return ack

    def open_gate(self, operator: str, pin: str) -> dict[str, Any]:
        """Open the gate by hand through the remote-command path (PIN checked, audited).

        Raise :class:`ActionRefused` when the PIN, the budgets or the gate refuse.
        """
        who = self._who(operator)
        self._authorise("open_gate", who, pin, None, override=True)
        corr = f"operator-{uuid.uuid4().hex}"
        request = {"id": corr, "deadline": self.wall() + OPEN_DEADLINE_S, "args": {"operator": who, "source": "operator-display"}}
        try:
            result = self.commands.open_gate(request)
            ok, reason = True, "ok"
        except CommandError as exc:
            result, ok, reason = {"executed": False, "audit_id": f"cmd:{corr}"}, False, str(exc)
        rowid = self.store.record_operator_action("open_gate", who, ok, reason, detail={"gate_audit_id": f"cmd:{corr}"})
        self.publish("action", {"action": "open_gate", "operator": who, "ok": ok, "reason": reason})
        if not ok:
            raise ActionRefused(409, "gate_refused", reason, audit_row=rowid)
        return {**result, "operator": who, "audit_row": rowid}

    def recheck(self, event_id: str, clinical_c: Any, operator: str, pin: str) -> dict[str, Any]:
        """Record a clinical thermometer reading against screening ``event_id`` (PIN checked, audited).

        Raise :class:`ActionRefused` for an unknown event, a value that is not a plausible body
        temperature, or a refused PIN.
        """
        who = self._who(operator)
        event = self.store.event(event_id)
        if event is None:
            raise ActionRefused(404, "no_such_event", f"no screening with event id {event_id!r}")
        if isinstance(clinical_c, bool) or not isinstance(clinical_c, (int, float)) or not math.isfinite(clinical_c):
            raise ActionRefused(400, "bad_value", "clinical_c must be a number (°C)")
        lo, hi = CLINICAL_RANGE_C
        if not lo <= clinical_c <= hi:
            raise ActionRefused(400, "bad_value", f"clinical_c must be within {lo}-{hi} °C")
        self._authorise("recheck", who, pin, event_id, override=True)
        detail = {
            "clinical_c": round(float(clinical_c), 2),
            "station_c": event.get("temperature_c"),
            "decision": event.get("decision"),
            "fever": clinical_c >= self.settings.fever_threshold_c,
        }
        rowid = self.store.record_operator_action("recheck", who, True, "ok", event_id=event_id, detail=detail)
        log.warning(
            "reading re-checked with a clinical thermometer event_id=%s operator=%s clinical_c=%.2f station_c=%s",
            event_id,
            who,
            clinical_c,
            event.get("temperature_c"),
        )
        self.publish("action", {"action": "recheck", "operator": who, "ok": True, "event_id": event_id, **detail})
        return {"event_id": event_id, "operator": who, "audit_row": rowid, **detail}

    def staff_check(self, reason: Any, decision: Any, operator: str, pin: str) -> dict[str, Any]:
        """Decide the person at the gate as staff checked them by hand (PIN checked, rate-limited, audited).

        The operator-assisted check for a person without a smartphone: ``reason`` from
        :data:`STAFF_CHECK_REASONS`, ``decision`` from :data:`STAFF_CHECK_DECISIONS` (``pass`` when
        not given). The lane records the decision as an event with ``decision_source`` ``staff``
        and reason ``staff:<reason>``; the audit row names that event. Raise :class:`ActionRefused`
        for an unknown reason or decision (400, with the allowed values), a refused PIN or budget,
        or when the lane cannot decide (409: nobody at the gate, a fever, no temperature yet).
        """
        who = self._who(operator)
        if not isinstance(reason, str) or reason not in STAFF_CHECK_REASONS:
            raise ActionRefused(
                400, "bad_reason", f"reason must be one of {', '.join(STAFF_CHECK_REASONS)}", allowed=list(STAFF_CHECK_REASONS)
            )
        decision = "pass" if decision is None else decision
        if not isinstance(decision, str) or decision not in STAFF_CHECK_DECISIONS:
            raise ActionRefused(
                400, "bad_decision", f"decision must be one of {', '.join(STAFF_CHECK_DECISIONS)}", allowed=list(STAFF_CHECK_DECISIONS)
            )
        if self.lane_staff_check is None:
            raise ActionRefused(503, "no_lane", "this station has no screening lane to decide")
        self._authorise("staff_check", who, pin, None, override=True)
        detail = {"reason": reason, "decision": decision}
        verdict, why = self.lane_staff_check(Decision(decision), reason)
        if verdict is None:
            rowid = self.store.record_operator_action("staff_check", who, False, why, detail=detail)
            log.warning("staff check refused by the lane operator=%s reason=%s refusal=%s", who, reason, why)
            self.publish("action", {"action": "staff_check", "operator": who, "ok": False, "reason": why})
            raise ActionRefused(409, why, STAFF_CHECK_REFUSALS.get(why, why), audit_row=rowid)
        event_id = str(verdict.event_id)
        rowid = self.store.record_operator_action("staff_check", who, True, "ok", event_id=event_id, detail=detail)
        log.warning("screening decided by staff event_id=%s operator=%s decision=%s reason=%s", event_id, who, decision, reason)
        self.publish("action", {"action": "staff_check", "operator": who, "ok": True, "event_id": event_id, **detail})
        return {"event_id": event_id, "operator": who, "audit_row": rowid, "decision_source": "staff", **detail}

    def register_outsider(self, plate: Any, reason: Any, destination: Any, phone: Any, operator: str, pin: str) -> dict[str, Any]:
        """Register an outsider vehicle (外来车辆登记): form checked, PIN checked, rate-limited, stored, synced, audited.

        Raise :class:`ActionRefused` for a field that is not acceptable (400, naming the field and,
        for the reason, the allowed values), a refused PIN or budget, or a station without a vehicle
        lane (503). The audit row names the registration, never the plate or the phone.
        """
        who = self._who(operator)
        if self.registrar is None:
            raise ActionRefused(503, "no_vehicle_lane", "this station reads no plates (vehicle.mode = off): nothing to register")
        try:
            form = check_form(plate, reason, destination, phone)
        except FormError as exc:
            extra: dict[str, Any] = {"field": exc.field}
            if exc.allowed is not None:
                extra["allowed"] = exc.allowed
            raise ActionRefused(400, exc.reason, str(exc), **extra) from None
        self._authorise("register_outsider", who, pin, None, override=True)
        record = self.registrar.register(form, who)
        rid = record["registration_id"]
        rowid = self.store.record_operator_action(
            "register_outsider", who, True, "ok", detail={"registration_id": rid, "reason": form.reason}
        )
        log.info("outsider vehicle registered registration_id=%s operator=%s reason=%s", rid, who, form.reason)
        shown = {k: record.get(k) for k in PUBLIC_KEYS}
        self.publish("registration", shown)
        return {**shown, "audit_row": rowid}
