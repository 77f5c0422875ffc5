"""The live side of the MQTT link: retained component states, periodic stats, and remote commands.

The outbox (``station.link.sync``) carries the *record* (events, alarms) and must never lose a message.
This module carries the *present*: it is re-published on every connect and never queued, because a
stale state or a replayed command is worse than none. Topics (all under
``<prefix>/<site>/<station>/``, JSON with ``"schema": 1``; docs/mqtt.md documents each payload):

* ``state/<component>`` retained, QoS 1: thermal, camera, detector, gate, outbox, mqtt — published
  on connect and whenever a state-like field changes (checked every ``poll_s``);
* ``stats`` QoS 0, every ``stats_interval_s``: counters and depths;
* ``cmd/<name>`` subscribed; every request gets exactly one reply on ``cmd/<name>/result`` that
  echoes the request's ``id`` (the correlation id). Unknown commands and malformed requests get an
  error result, never silence.

Commands run on this module's worker thread, never on paho's network thread: several write SQLite
with an fsync, and paho's thread must keep delivering PUBACKs meanwhile.

Who may ask: every command but the read-only ``ping`` and ``snapshot`` must be a signed envelope
(station.link.command_auth: a command-centre key, bound to this site, station, command, arguments, a
unique id and a deadline at most ``centre.command_max_window_s`` ahead). A refusal gets its own
reason (``unsigned``, ``bad_signature``, ``replay``, ``wrong_station``, …) in the result, a log
line, a per-reason counter (:meth:`StationLink.stats`) and a ``command_audit`` row — rate-limited
for refusals, so a flood cannot fill the disk. Every signed command that passes is audited too,
under the signed signer name.

Intake is bounded: retained ``cmd/`` messages are dropped unread (a command kept by the broker
must not run again at every reconnect), bodies over ``centre.command_max_bytes`` are dropped
unread, and the queue to the command thread is bounded (drops counted); paho's thread never blocks.

The handlers themselves (``open-gate``'s own guards among them) are in ``station.link.handlers``.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from station.link.command_auth import (
    CommandKeys,
    CommandVerifier,
    SignedCommand,
)
from station.link.handlers import CommandError, CommandHandlers
from station.ops.ratelimit import FailureLog, RateLimiter

if TYPE_CHECKING:
    from station.lane.pipeline import Pipeline
    from station.store.events import SqliteEventStore

log = logging.getLogger("station.link.commands")

SCHEMA = 1
COMMAND_IDS_FILE = "command-ids.sqlite3"  # the replay store of signed command ids, in the data dir
MAX_COMMAND_BYTES = 262144
"""Default cap on a ``cmd/`` body: a resident list of ~20 000 plates or a trust list of ~150 signers."""
MAX_ROUTE_BYTES = 4096
QUEUE_SIZE = 32
AUDIT_BODY_CHARS = 2048
SECRET_COMMANDS = frozenset({"district-key"})
"""Commands whose body carries a secret: audited without it."""


def dumps(value: Any) -> bytes:
    """Return ``value`` as compact UTF-8 JSON (NaN refused, anything else unknown as its ``str``)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str, allow_nan=False).encode("utf-8")


def state_like(stats: Mapping[str, Any]) -> dict[str, Any]:
    """Return the fields of a component's stats that describe its *state* (strings, flags), not counters.

    Counters change every frame; publishing retained state on each would flood the broker.
    """
    return {k: v for k, v in stats.items() if v is None or isinstance(v, (str, bool))}


# ------------------------------------------------------------------------------------------- link


class StationLink:
    """Publishes states and stats and serves commands over a connected publisher."""

    def __init__(
        self,
        publisher: Any,
        base_topic: str,
        identity: Mapping[str, str],
        states: Mapping[str, Callable[[], Mapping[str, Any]]],
        stats: Callable[[], Mapping[str, Any]],
        commands: CommandHandlers,
        *,
        verifier: CommandVerifier | None = None,
        stats_interval_s: float = 60.0,
        poll_s: float = 2.0,
        on_connected_extra: list[Callable[[], None]] | None = None,
        max_command_bytes: int = MAX_COMMAND_BYTES,
        queue_size: int = QUEUE_SIZE,
        refused_audit_per_min: int = 10,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.publisher = publisher
        self.base = base_topic
        self.identity = dict(identity)
        self.states = dict(states)
        self.stats_fn = stats
        self.commands = commands
        # Without a verifier (no keys given) every command that needs a signature is refused.
        self.verifier = verifier or CommandVerifier(
            CommandKeys(), None, site=self.identity.get("site", ""), station=self.identity.get("station_id", "")
        )
        self.stats_interval_s = stats_interval_s
        self.poll_s = poll_s
        self.max_command_bytes = max_command_bytes
        self.extra_on_connect = list(on_connected_extra or [])
        self._queue: queue.Queue[tuple[str, str, bytes]] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._reconnected = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_state: dict[str, dict[str, Any]] = {}
        self._last_stats = 0.0
        self._routes: dict[str, Callable[[str, bytes], None]] = {}
        self.cmd_filter = f"{self.base}/cmd/+"
        self.replies = 0
        self.errors = 0
        # A step that fails on every message or poll (a broken state source, a route fed junk) must
        # not write a traceback each time: one line per kind per minute, every failure counted.
        self.failures = FailureLog(log, "station link step", monotonic=monotonic)
        self.queue_dropped = 0
        self.refused: Counter[str] = Counter()
        self.accepted: Counter[str] = Counter()
        self.audit_suppressed = 0
        self.audit_failed = 0
        self._audit_limit = RateLimiter(refused_audit_per_min, 60.0, monotonic=monotonic)
        self._log_limit = RateLimiter(5, 60.0, monotonic=monotonic)  # refusal log lines per reason

    # -- lifecycle

    def start(self) -> None:
        """Subscribe to ``cmd/+`` and start the worker thread."""
        self.publisher.on_connected.append(self._on_connected)
        self.publisher.subscribe(self.cmd_filter, self._on_command, accept_retained=False, max_bytes=self.max_command_bytes)
        if self.publisher.connected():  # connected before this link existed: catch up now
            self._on_connected()
        self._thread = threading.Thread(target=self._run, name="station-link", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the worker thread (waiting at most ``timeout`` s)."""
        self._stop.set()
        self._enqueue("stop", "", b"")  # wakes the worker; if the queue is full it sees _stop next
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def route(self, topic_filter: str, handler: Callable[[str, bytes], None]) -> None:
        """Run ``handler(topic, payload)`` on this link's worker for messages on ``topic_filter``."""
        kind = f"route:{topic_filter}"
        self._routes[kind] = handler
        # Routes carry small control messages (Home Assistant's birth): anything large is not one.
        self.publisher.subscribe(topic_filter, lambda t, p: self._enqueue(kind, t, p), max_bytes=MAX_ROUTE_BYTES)

    def stats(self) -> dict[str, Any]:
        """Counters of the command intake: replies, refusals per reason, drops, audit rows suppressed."""
        drops = self.publisher.intake_drops(self.cmd_filter) if hasattr(self.publisher, "intake_drops") else {}
        return {
            "replies": self.replies,
            "errors": self.errors,
            "failures": self.failures.snapshot(),
            "accepted": dict(self.accepted),
            "refused": dict(self.refused),
            "queue_dropped": self.queue_dropped,
            "queue_depth": self._queue.qsize(),
            "retained_dropped": drops.get("retained", 0),
            "oversize_dropped": drops.get("oversize", 0),
            "audit_suppressed": self.audit_suppressed,
            "audit_failed": self.audit_failed,
            "keys": self.verifier.keys.stats(),
        }

    # -- paho's thread: enqueue only, never block

    def _enqueue(self, kind: str, topic: str, payload: bytes) -> None:
        try:
            self._queue.put_nowait((kind, topic, payload))
        except queue.Full:
            if kind in ("stop", "connected"):
                return  # the worker sees _stop / _reconnected on its next turn anyway
            self.queue_dropped += 1
            if self.queue_dropped & (self.queue_dropped - 1) == 0:  # 1, 2, 4, 8, …: bounded logging
                log.warning("command queue full, message dropped kind=%s topic=%s dropped_total=%d", kind, topic[:200], self.queue_dropped)

    def _on_connected(self) -> None:
        self._reconnected.set()
        self._enqueue("connected", "", b"")

    def _on_command(self, topic: str, payload: bytes) -> None:
        self._enqueue("cmd", topic, payload)

    # -- worker

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                kind, topic, payload = self._queue.get(timeout=self.poll_s)
            except queue.Empty:
                kind, topic, payload = "tick", "", b""
            try:
                if kind == "stop" or self._stop.is_set():
                    break
                if self._reconnected.is_set():
                    self._reconnected.clear()
                    self._last_state.clear()  # re-publish every state on a new connection
                    for hook in self.extra_on_connect:
                        hook()
                if kind == "cmd":
                    self._serve(topic, payload)
                elif kind in self._routes:
                    self._routes[kind](topic, payload)
                self._publish_states()
                self._maybe_stats()
            except Exception as exc:  # noqa: BLE001 - counted and logged (FailureLog); the link keeps serving
                self.errors += 1
                self.failures.report(f"{kind.split(':', 1)[0]}:{type(exc).__name__}", exc, topic=topic[:200])

    def _envelope(self, **body: Any) -> dict[str, Any]:
        return {"schema": SCHEMA, **self.identity, "ts": round(time.time(), 3), **body}

    def _publish_states(self) -> None:
        if not self.publisher.connected():
            return
        for name, source in self.states.items():
            try:
                state = dict(source())
            except Exception as exc:  # noqa: BLE001 - counted and logged; the other states still go out
                self.failures.report(f"state:{name}:{type(exc).__name__}", exc)
                state = {"state": "unknown", "error": "state source failed"}
            if self._last_state.get(name) == state:
                continue
            if self.publisher.publish_direct(
                f"{self.base}/state/{name}", dumps(self._envelope(component=name, **state)), qos=1, retain=True
            ):
                self._last_state[name] = state

    def _maybe_stats(self) -> None:
        if self.stats_interval_s <= 0 or not self.publisher.connected():
            return
        now = time.monotonic()
        if now - self._last_stats < self.stats_interval_s:
            return
        self._last_stats = now
        self.publisher.publish_direct(f"{self.base}/stats", dumps(self._envelope(**self.stats_fn())), qos=0, retain=False)

    def _serve(self, topic: str, payload: bytes) -> None:
        reply = self.handle(topic.rsplit("/", 1)[-1], payload)
        self.replies += 1
        if not self.publisher.publish_direct(f"{topic}/result", dumps(reply), qos=1, retain=False):
            log.warning("command result not sent, link down name=%s id=%s", reply.get("command"), reply.get("id"))

    def handle(self, name: str, payload: bytes) -> dict[str, Any]:
        """Judge and (when allowed) carry out one ``cmd/<name>`` body; the result message to send."""
        name = name[:64]  # a topic level can be 64 KiB long: never echoed whole
        corr: Any = None
        reason = "ok"
        result: Any = None
        error: str | None = None
        try:
            try:
                request: Any = json.loads(payload) if payload else {}
            except (ValueError, RecursionError):  # not UTF-8, not JSON, or nested beyond reason
                request = None
            if isinstance(request, dict):
                raw_id = request.get("id")
                corr = raw_id if isinstance(raw_id, str) and len(raw_id) <= 128 else None
            handler = self.commands.handlers.get(name)
            if handler is None:
                reason, error = "unknown_command", (f"unknown command {name!r} (known: {', '.join(sorted(self.commands.handlers))})")
            elif self.verifier.needs_signature(name):
                verdict = self.verifier.verify(name, request)
                if not verdict.ok:
                    reason, error = verdict.reason, f"refused: {verdict.reason}: {verdict.detail}"
                    self._refused(name, corr, verdict.reason, verdict.detail, verdict.command, payload)
                else:
                    assert verdict.command is not None
                    reason, result, error = self._run_signed(name, handler, verdict.command, payload)
            elif not isinstance(request, dict):
                reason, error = "malformed", "the request must be a JSON object"
            else:
                deadline = request.get("deadline")
                if isinstance(deadline, (int, float)) and not isinstance(deadline, bool) and time.time() > deadline:
                    reason, error = "expired", "stale: deadline passed"
                else:
                    result = handler(request)
        except (CommandError, ValueError, OSError) as exc:
            reason, result, error = "command_error", None, str(exc)
        except Exception as exc:  # logged with traceback; the requester still gets its one reply
            log.exception("command failed name=%s id=%s", name, corr)
            reason, result, error = "internal_error", None, f"internal error: {type(exc).__name__}: {exc}"
        log.info("command served name=%s id=%s ok=%s reason=%s", name, corr, error is None, reason)
        return self._envelope(command=name, id=corr, ok=error is None, reason=reason, result=result, error=error)

    def _run_signed(
        self, name: str, handler: Callable[[dict[str, Any]], dict[str, Any]], cmd: SignedCommand, payload: bytes
    ) -> tuple[str, Any, str | None]:
        """Carry out a verified command under its signer's name; audited whatever the handler says."""
        request = {"id": cmd.id, "deadline": cmd.deadline, "args": cmd.args, "signed_by": cmd.signer, "key_id": cmd.key_id}
        try:
            result, reason, error = handler(request), "ok", None
        except (CommandError, ValueError, OSError) as exc:
            result, reason, error = None, "command_error", str(exc)
        except Exception as exc:  # logged with traceback; still audited and answered
            log.exception("signed command failed name=%s id=%s", name, cmd.id)
            result, reason, error = None, "internal_error", f"internal error: {type(exc).__name__}: {exc}"
        self.accepted[reason] += 1
        log.warning("signed command name=%s id=%s signer=%s ok=%s error=%s", name, cmd.id, cmd.signer, error is None, error)
        self._audit(name, cmd.id, error is None, reason if error is None else f"{reason}: {error}"[:300], cmd.signer, payload, priority=1)
        return reason, result, error

    def _refused(self, name: str, corr: str | None, reason: str, detail: str, cmd: SignedCommand | None, payload: bytes) -> None:
        self.refused[reason] += 1
        # A refusal after the signature verified names its signer; before that nobody is named.
        signer = cmd.signer if cmd is not None else None
        if self._log_limit.allow(reason):
            log.warning(
                "command refused name=%s id=%s reason=%s detail=%s signer=%s refused_total=%d",
                name,
                corr,
                reason,
                detail[:200],
                signer,
                self.refused[reason],
            )
        if not self._audit_limit.allow("refused"):
            self.audit_suppressed += 1
            return
        self._audit(name, corr, False, reason, signer, payload, priority=5)

    def _audit(self, name: str, corr: str | None, ok: bool, reason: str, signer: str | None, payload: bytes, *, priority: int) -> None:
        body = payload[: AUDIT_BODY_CHARS * 4].decode("utf-8", "replace")[:AUDIT_BODY_CHARS]
        if name in SECRET_COMMANDS:  # a secret in the audit table would outlive its rotation: only that it came
            body = "(secret arguments not kept)"
        try:
            self.commands.store.record_command_audit(name, corr, ok, reason, signer=signer, body=body, priority=priority)
        except Exception:  # logged and counted: the reply still goes out, the refusal still holds
            self.audit_failed += 1
            log.exception("command audit row not written name=%s id=%s", name, corr)


# ------------------------------------------------------------------------------------ state sources


def _local_midnight(now: float | None = None) -> float:
    t = time.localtime(time.time() if now is None else now)
    return time.mktime((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0, 0, 0, -1))


class StationStates:
    """Compute the retained ``state/<component>`` bodies from the running lane, store and broker link."""

    def __init__(
        self,
        *,
        pipeline: Pipeline,
        store: SqliteEventStore,
        mqtt_state: Callable[[], str],
        detector_state: Callable[[], str],
        stage_health: Callable[[], dict[str, Any]],
    ) -> None:
        """Read state from ``pipeline`` and ``store``; the broker and detector states come from the callables."""
        self.pipeline = pipeline
        self.store = store
        self.mqtt_state = mqtt_state
        self.detector_state = detector_state
        self.stage_health = stage_health

    def sources(self) -> dict[str, Callable[[], Mapping[str, Any]]]:
        """Return one state source per component, as :class:`StationLink` publishes them."""
        return {
            "thermal": self.thermal,
            "camera": self.camera,
            "detector": self.detector,
            "gate": self.gate,
            "screening": self.screening,
            "outbox": self.outbox,
            "storage": self.storage,
            # Pipeline stage health: in-process restarts, contained failures per kind, given-up stages.
            "stages": self.stage_health,
        }

    def thermal(self) -> dict[str, Any]:
        """Return the thermal source's state fields."""
        return state_like(self.pipeline.thermal.stats())

    def camera(self) -> dict[str, Any]:
        """Return the camera's state fields."""
        return state_like(self.pipeline.camera.stats())

    def detector(self) -> dict[str, Any]:
        """Return the face detector's state (``ok`` or ``degraded: <reason>``) and model name."""
        return {"state": self.detector_state(), "model": self.pipeline.detector.name}

    def gate(self) -> dict[str, Any]:
        """Return the gate's last action and whether it was carried out."""
        last = self.pipeline.last_decided
        if last is None:
            return {"state": "idle", "last_action": None}
        return {
            "state": "ok" if last.gate.executed or last.gate.reason == "ok" else "refused",
            "last_action": last.gate.action.value,
            "last_reason": last.gate.reason,
            "last_event_id": last.event.event_id,
        }

    def screening(self) -> dict[str, Any]:
        """Return the last decision and the decision counts, in total and since local midnight."""
        last = self.pipeline.last_decided
        event = last.event if last is not None else None
        return {
            "last_decision": event.decision.value if event else None,
            "last_decision_source": event.decision_source if event else None,
            "last_temperature_c": event.temperature_c if event else None,
            "last_event_id": event.event_id if event else None,
            "alarm": bool(event.alarm) if event else False,
            "count_total": sum(self.store.counts().values()),
            # Decisions since local midnight: what the command-centre board shows per station.
            "count_today": sum(self.store.counts(since_ts=_local_midnight()).values()),
        }

    def storage(self) -> dict[str, Any]:
        """Return whether the data directory takes writes (an alarm when not) and the decisions held in memory meanwhile."""
        health = self.store.storage.snapshot()
        return {
            "state": health["state"],  # ok | read_only | full | file_too_large | io_error
            "alarm": health["state"] != "ok",
            "error": health["error"],
            "since_ts": health["since_ts"],
            "held": self.pipeline.stats()["unrecorded_pending"],
            "faults": health["faults"],
        }

    def outbox(self) -> dict[str, Any]:
        """Return the outbox depth with the broker link's state."""
        stats = dict(self.store.outbox_stats())
        stats["oldest_age_s"] = int(stats["oldest_age_s"])  # whole seconds: not a change every poll
        return dict(stats, mqtt=self.mqtt_state())
