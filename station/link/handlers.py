"""Remote command handlers: what each ``cmd/<name>`` does once its signature has been checked.

``open-gate`` is the one command that moves hardware, so the handler guards it again (it also serves
the operator display, station/web): it must carry a ``deadline`` (unix seconds) no further than
``MAX_OPEN_WINDOW_S`` ahead; a request past its deadline is refused; and its ``id`` may be used
once — the audit row in ``gate_actions`` (``event_id = "cmd:<id>"``) is written for every
open-gate request that reaches the handler, carried out or refused, and a second request with the
same id is refused as a replay, across restarts too.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from station.domain.model import Decision, GateAction, GateCommand, GateResult
from station.link.command_auth import (
    CommandKeys,
    KeyListError,
)
from station.ops.ratelimit import RateLimiter

if TYPE_CHECKING:
    pass

log = logging.getLogger("station.link.commands")
ALARM_EVENT_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,80}$")  # station/board/schema.py EVENT_ID

log = logging.getLogger("station.link.handlers")

MAX_OPEN_WINDOW_S = 60.0
"""An open-gate deadline further ahead than this is refused: it would make the request replayable
for too long."""

RESEND_BURST = 10
"""``resend`` commands carried out per minute at most (the centre's repair loop sends far fewer)."""

TRUST_LIST_DIR = "trust-list"  # same folder as station.codes.trust_list.TRUST_DIR


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
        district_keys: Any = None,
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
        self.district_keys = district_keys  # station.codes.trace_key.DistrictKeys, shared with the code judge
        self.started_wall = wall()
        self.started_mono = monotonic()  # uptime survives a wall-clock step
        self.handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "ping": self.ping,
            "snapshot": self.snapshot,
            "reload-config": self.reload_config,
            "open-gate": self.open_gate,
            "set-threshold": self.set_threshold,
            "trust-list": self.trust_list,
            "resident-plates": self.resident_plates,
            "command-keys": self.rotate_command_keys,
            "district-key": self.district_key,
            "alarm-ack": self.alarm_ack,
            "watch": self.watch,
            "resend": self.resend,
        }
        # At most RESEND_BURST re-sends a minute, whoever signs them: each may re-queue thousands of messages.
        self.resend_limit = RateLimiter(RESEND_BURST, 60.0, monotonic=monotonic)
        # The snapshot publisher's watch (station/link/snapshots.py), set once snapshots run; None: snapshots off.
        self.snapshot_watch: Callable[[float], dict[str, Any]] | None = None

    @staticmethod
    def _args(request: dict[str, Any]) -> dict[str, Any]:
        args = request.get("args", {})
        if not isinstance(args, dict):
            raise CommandError("args must be a JSON object")
        return args

    def ping(self, request: dict[str, Any]) -> dict[str, Any]:
        """Return that the station answers, with its session and uptime."""
        return {"pong": True, "session": getattr(self.store, "session", None), "uptime_s": round(self.monotonic() - self.started_mono, 1)}

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

    def district_key(self, request: dict[str, Any]) -> dict[str, Any]:
        """Install a newer district tracing key (``args.version``, ``args.key`` hex, optional ``args.key_id``).

        The result names the key by its id only; the key itself is never echoed, logged or audited.
        """
        from station.codes.trace_key import DistrictKeyError, DistrictKeys

        if self.district_keys is None:
            self.district_keys = DistrictKeys(self.data_dir)
        args = self._args(request)
        try:
            return dict(
                self.district_keys.install(
                    args.get("version"), args.get("key"), key_id=args.get("key_id"), signed_by=str(request.get("signed_by", ""))
                )
            )
        except (DistrictKeyError, OSError) as exc:
            raise CommandError(f"district key refused, the current key stays: {exc}") from None

    def watch(self, request: dict[str, Any]) -> dict[str, Any]:
        """Publish snapshots at the watched rate for ``args.lease_s`` seconds (someone at the centre has the picture open).

        The lease ends by itself; the station caps it at ``snapshots.watch_max_lease_s``.
        """
        lease = self._args(request).get("lease_s")
        if isinstance(lease, bool) or not isinstance(lease, (int, float)) or not math.isfinite(lease) or lease <= 0:
            raise CommandError("args.lease_s must be a number of seconds > 0")
        if self.snapshot_watch is None:
            raise CommandError("snapshots are off at this station (snapshots.enabled, or no broker): nothing to watch")
        return self.snapshot_watch(float(lease))

    def resend(self, request: dict[str, Any]) -> dict[str, Any]:
        """Queue the records numbered ``args.first_seq``..``args.last_seq`` again, with their original ``msg_id`` (the centre's gap repair).

        At most :data:`station.store.resend.MAX_RANGE` numbers per command and :data:`RESEND_BURST`
        commands a minute; ``args.session`` (optional) is only echoed: ``seq`` is per station, never reused.
        """
        from station.store.resend import MAX_RANGE, requeue_range

        args = self._args(request)
        first, last, session = args.get("first_seq"), args.get("last_seq"), args.get("session")
        if not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 2**62 for v in (first, last)):
            raise CommandError("args.first_seq and args.last_seq must be whole numbers >= 1")
        assert isinstance(first, int) and isinstance(last, int)
        if last < first or last - first + 1 > MAX_RANGE:
            raise CommandError(f"args.first_seq..last_seq must name 1 to {MAX_RANGE} numbers, first <= last")
        if session is not None and (isinstance(session, bool) or not isinstance(session, int)):
            raise CommandError("args.session must be a whole number when given")
        if not self.resend_limit.allow():
            raise CommandError(f"refused: at most {RESEND_BURST} resend commands a minute")
        result = requeue_range(self.store, first, last).as_dict()
        log.warning("records re-queued for the centre first_seq=%d last_seq=%d result=%s", first, last, result)
        return {**result, "session": session}

    def alarm_ack(self, request: dict[str, Any]) -> dict[str, Any]:
        """Record that the centre acknowledged or closed an alarm (``args.event_id``, ``state``, ``operator``, ``note``).

        Written as the operator display's own acknowledgement (an ``ack`` operator action, audited and
        sent to the centre like any), so the page shows the alarm acknowledged by ``centre:<operator>``.
        """
        args = self._args(request)
        event_id, state, note = args.get("event_id"), args.get("state", "acknowledged"), args.get("note")
        if not isinstance(event_id, str) or not ALARM_EVENT_ID.match(event_id):
            raise CommandError("args.event_id must be an event id (1-80 of A-Z a-z 0-9 _ . : -)")
        if state not in ("acknowledged", "closed"):
            raise CommandError("args.state must be 'acknowledged' or 'closed'")
        if note is not None and (not isinstance(note, str) or len(note) > 500):
            raise CommandError("args.note must be text of at most 500 characters")
        event = self.store.event(event_id)
        if event is None or not event.get("alarm"):
            raise CommandError(f"no alarm with event id {event_id!r}")
        operator = " ".join(str(args.get("operator") or request.get("signed_by") or "").split())
        who = f"centre:{operator}"[:40] if operator else "centre"
        detail = {"state": state, "note": note, "signed_by": request.get("signed_by")}
        rowid = self.store.record_operator_action("ack", who, True, "ok", event_id=event_id, detail=detail)
        log.info("alarm acknowledged by the centre event_id=%s state=%s operator=%s", event_id, state, who)
        return {"event_id": event_id, "state": state, "operator": who, "audit_row": rowid}

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
