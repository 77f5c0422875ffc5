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

``open-gate`` is the one command that moves hardware, so the handler guards it again (it also serves
the operator display, station/web): it must carry a ``deadline`` (unix seconds) no further than
``MAX_OPEN_WINDOW_S`` ahead; a request past its deadline is refused; and its ``id`` may be used
once — the audit row in ``gate_actions`` (``event_id = "cmd:<id>"``) is written for every
open-gate request that reaches the handler, carried out or refused, and a second request with the
same id is refused as a replay, across restarts too.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from station.domain.model import Decision, GateAction, GateCommand, GateResult
from station.link.command_auth import (
    CommandKeys,
    CommandVerifier,
    KeyListError,
    SignedCommand,
)
from station.ops.ratelimit import FailureLog, RateLimiter

if TYPE_CHECKING:
    from station.lane.pipeline import Pipeline
    from station.store.events import SqliteEventStore

log = logging.getLogger("station.link.commands")

SCHEMA = 1
MAX_OPEN_WINDOW_S = 60.0
"""An open-gate deadline further ahead than this is refused: it would make the request replayable
for too long."""

TRUST_LIST_DIR = "trust-list"  # same folder as station.codes.trust_list.TRUST_DIR
COMMAND_IDS_FILE = "command-ids.sqlite3"  # the replay store of signed command ids, in the data dir
MAX_COMMAND_BYTES = 262144
"""Default cap on a ``cmd/`` body: a resident list of ~20 000 plates or a trust list of ~150 signers."""
MAX_ROUTE_BYTES = 4096
QUEUE_SIZE = 32
AUDIT_BODY_CHARS = 2048


def dumps(value: Any) -> bytes:
    """Return ``value`` as compact UTF-8 JSON (NaN refused, anything else unknown as its ``str``)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str, allow_nan=False).encode("utf-8")


def state_like(stats: Mapping[str, Any]) -> dict[str, Any]:
    """Return the fields of a component's stats that describe its *state* (strings, flags), not counters.

    Counters change every frame; publishing retained state on each would flood the broker.
    """
    return {k: v for k, v in stats.items() if v is None or isinstance(v, (str, bool))}


class CommandError(Exception):
    """A command was refused; the message goes back in the result's ``error``."""


# ---------------------------------------------------------------------------------------- handlers


def set_config_value(path: Path, key: str, value: Any) -> tuple[Any, Any]:
    """Change one setting in a TOML file keeping its comments; return (old, new).

    The new text is validated before anything is written, and written atomically with a ``.bak``
    (stationctl's writer).
    """
    import tomlkit
    import tomlkit.items

    from station.config import validate_text
    from station.ops.fileio import atomic_write

    text = path.read_text(encoding="utf-8") if path.exists() else ""
    doc = tomlkit.parse(text)
    parts = key.split(".")
    node: Any = doc
    for part in parts[:-1]:
        if part not in node:
            node[part] = tomlkit.table()
        node = node[part]
    old = node.get(parts[-1])
    old = old.unwrap() if isinstance(old, tomlkit.items.Item) else old
    node[parts[-1]] = value
    new_text = tomlkit.dumps(doc)
    problems = validate_text(new_text, path.name)
    if problems:
        raise CommandError("; ".join(str(p) for p in problems))
    atomic_write(path, new_text)
    return old, value


class CommandHandlers:
    """Carry out each ``cmd/<name>``.

    Each handler takes the request dict and returns the result dict, or raises
    :class:`CommandError` to refuse.
    """

    def __init__(
        self,
        *,
        store: Any,
        gate: Any,
        monotonic: Callable[[], float],
        config_path: Path | None,
        data_dir: Path,
        snapshot: Callable[[], dict[str, Any]],
        command_ttl_s: float = 0.5,
        wall: Callable[[], float] = time.time,
        trust_list_signer: Path | None = None,
        command_keys: CommandKeys | None = None,
    ) -> None:
        self.store = store
        self.gate = gate
        self.monotonic = monotonic
        self.wall = wall
        self.config_path = config_path
        self.data_dir = data_dir
        self.snapshot_fn = snapshot
        self.command_ttl_s = command_ttl_s
        self.trust_list_signer = trust_list_signer  # PEM key/cert that must have signed a pushed trust list
        self.command_keys = command_keys  # rotated by the command-keys command
        self.started_wall = wall()
        self.handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "ping": self.ping,
            "snapshot": self.snapshot,
            "reload-config": self.reload_config,
            "open-gate": self.open_gate,
            "set-threshold": self.set_threshold,
            "trust-list": self.trust_list,
            "resident-plates": self.resident_plates,
            "command-keys": self.rotate_command_keys,
        }

    @staticmethod
    def _args(request: dict[str, Any]) -> dict[str, Any]:
        args = request.get("args", {})
        if not isinstance(args, dict):
            raise CommandError("args must be a JSON object")
        return args

    def ping(self, request: dict[str, Any]) -> dict[str, Any]:
        """Return that the station answers, with its session and uptime."""
        return {"pong": True, "session": getattr(self.store, "session", None), "uptime_s": round(self.wall() - self.started_wall, 1)}

    def snapshot(self, request: dict[str, Any]) -> dict[str, Any]:
        """Return the station's status, outbox, link and last event in one reply."""
        return self.snapshot_fn()

    def reload_config(self, request: dict[str, Any]) -> dict[str, Any]:
        """Validate the config file; applying it needs a restart (live reload is not implemented)."""
        from station.config import ConfigError, load_config

        if self.config_path is None:
            raise CommandError("this station runs without a config file (demo); nothing to reload")
        try:
            load_config(self.config_path)
        except ConfigError as exc:
            raise CommandError("invalid configuration, nothing applied: " + "; ".join(str(p) for p in exc.problems)) from None
        return {
            "file": str(self.config_path),
            "valid": True,
            "applied": False,
            "note": "restart required: live reload is not implemented; the file is valid",
        }

    def set_threshold(self, request: dict[str, Any]) -> dict[str, Any]:
        """Persist ``args.fever_threshold_c`` in the config file; it takes effect at the next restart."""
        args = self._args(request)
        value = args.get("fever_threshold_c")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise CommandError("args.fever_threshold_c must be a number (°C)")
        if self.config_path is None:
            raise CommandError("this station runs without a config file (demo); nothing to persist to")
        old, new = set_config_value(self.config_path, "screening.fever_threshold_c", float(value))
        log.warning("fever threshold changed by command old=%s new=%s file=%s id=%s", old, new, self.config_path, request.get("id"))
        return {
            "key": "screening.fever_threshold_c",
            "old": old,
            "new": new,
            "persisted": True,
            "applied": False,
            "note": "takes effect at the next restart (live reload is not implemented)",
        }

    def trust_list(self, request: dict[str, Any]) -> dict[str, Any]:
        """Replace the HC1 trust list when signed by the configured trust-list signer and newer than the stored one.

        On any refusal the old list stays in use. The running verifier picks the new list up at
        its next code (station.codes.trust_list.TrustStore).
        """
        from station.codes.trust_list import (
            TrustListError,
            accept_push,
            load_signer_key,
        )

        args = self._args(request)
        version, document = args.get("version"), args.get("document")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise CommandError("args.version must be an integer >= 1")
        if not isinstance(document, dict):
            raise CommandError("args.document must be a JSON object")
        if document.get("version") != version:
            raise CommandError("args.version differs from the signed document.version; the old list is kept")
        if self.trust_list_signer is None:
            raise CommandError("no trust-list signer configured (codes.trust_list_signer_file); the old list is kept")
        try:
            signer = load_signer_key(self.trust_list_signer)
            result = accept_push(self.data_dir, document, signer, self.wall())
        except (TrustListError, OSError, ValueError) as exc:
            log.warning("trust list refused version=%s id=%s error=%s", version, request.get("id"), exc)
            raise CommandError(f"trust list refused, the old list is kept: {exc}") from None
        return {**result, "signature_verified": True}

    def resident_plates(self, request: dict[str, Any]) -> dict[str, Any]:
        """Replace the resident plate list, every entry validated first, in one atomic file replace.

        One bad plate refuses the whole list and the old one stays; the plate thread re-reads the
        file at its next vehicle. ``args.version`` (optional) must be newer than the stored one, so
        a replayed or reordered older push cannot undo a newer list.
        """
        from station.store import residents

        args = self._args(request)
        asked = args.get("version")
        if asked is not None and (isinstance(asked, bool) or not isinstance(asked, int) or asked < 1):
            raise CommandError("args.version must be an integer >= 1 when given")
        try:
            plates = residents.check_list(args.get("plates"))
        except residents.PlateTextError as exc:
            raise CommandError(f"list refused, the old list is kept: {exc}") from None
        path = residents.resident_path(self.data_dir)
        have = residents.version(path)
        if asked is not None and asked <= have:
            raise CommandError(f"version {asked} is not newer than the stored version {have}; the old list is kept")
        new_version = asked if asked is not None else have + 1
        residents.save(path, plates, list_version=new_version)
        log.info(
            "resident plate list replaced count=%d version=%d previous_version=%d id=%s", len(plates), new_version, have, request.get("id")
        )
        return {"count": len(plates), "version": new_version, "previous_version": have, "file": str(path)}

    def rotate_command_keys(self, request: dict[str, Any]) -> dict[str, Any]:
        """Replace the trusted command-centre keys with a newer ``args.version`` of the list.

        The request was signed by a current key (the link checked). The list is stored in the data
        dir, so it survives restarts; from the next command on only the new keys are trusted.
        """
        if self.command_keys is None:
            raise CommandError("this station keeps no command key list")
        args = self._args(request)
        try:
            return self.command_keys.rotate(
                args.get("version"),
                args.get("keys"),
                by=str(request.get("signed_by", "")),
                key_id=str(request.get("key_id", "")),
                now=self.wall(),
            )
        except (KeyListError, OSError) as exc:
            raise CommandError(f"key list refused, the old keys stay in use: {exc}") from None

    def open_gate(self, request: dict[str, Any]) -> dict[str, Any]:
        """Open the gate once for a request with a fresh id and a near deadline; audited, carried out or refused."""
        corr = request.get("id")
        if not isinstance(corr, str) or not corr:
            raise CommandError("open-gate needs an id (it is the replay guard)")
        audit_id = f"cmd:{corr}"
        deadline = request.get("deadline")
        now_wall, now_mono = self.wall(), self.monotonic()
        reason = self._open_gate_refusal(audit_id, deadline, now_wall)
        if reason is not None:
            self._audit(GateResult(audit_id, GateAction.OPEN, False, f"refused: {reason}", now_mono), request)
            raise CommandError(f"refused: {reason}")
        # The gate enforces the deadline too, on the monotonic clock, at most command_ttl_s away.
        left = min(float(deadline) - now_wall, self.command_ttl_s)  # type: ignore[arg-type]
        command = GateCommand(audit_id, GateAction.OPEN, Decision.PASS, now_mono, now_mono + left)
        result = self.gate.execute(command, self.monotonic())
        self._audit(result, request)
        # Over MQTT the operator is the signed signer; the operator display passes its own name in args.
        operator = request.get("signed_by") or self._args(request).get("operator")
        log.warning("gate opened by remote command id=%s executed=%s reason=%s operator=%s", corr, result.executed, result.reason, operator)
        if not result.executed:
            raise CommandError(f"gate did not open: {result.reason}")
        return {"executed": True, "audit_id": audit_id}

    def _open_gate_refusal(self, audit_id: str, deadline: Any, now_wall: float) -> str | None:
        if isinstance(deadline, bool) or not isinstance(deadline, (int, float)) or not math.isfinite(deadline):
            return "a deadline (unix seconds) is required"
        if now_wall > deadline:
            return f"stale: deadline passed {now_wall - deadline:.1f} s ago"
        if deadline - now_wall > MAX_OPEN_WINDOW_S:
            return f"deadline more than {MAX_OPEN_WINDOW_S:.0f} s ahead"
        if self.store.gate_actions(audit_id):
            return "replay: this command id was already used"
        return None

    def _audit(self, result: GateResult, request: dict[str, Any]) -> None:
        self.store.record_remote_gate_action(result, request)


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
            "last_temperature_c": event.temperature_c if event else None,
            "last_event_id": event.event_id if event else None,
            "alarm": bool(event.alarm) if event else False,
            "count_total": sum(self.store.counts().values()),
            # Decisions since local midnight: what the command-centre board shows per station.
            "count_today": sum(self.store.counts(since_ts=_local_midnight()).values()),
        }

    def outbox(self) -> dict[str, Any]:
        """Return the outbox depth with the broker link's state."""
        stats = dict(self.store.outbox_stats())
        stats["oldest_age_s"] = int(stats["oldest_age_s"])  # whole seconds: not a change every poll
        return dict(stats, mqtt=self.mqtt_state())
