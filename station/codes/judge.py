"""The verifier chain and the guards that apply whatever verifier judged: salted hash, replay.

:class:`CodeJudge` is the one ``CodeVerifier`` the pipeline is given. It asks the configured
verifiers in order (``codes.verifiers``); the first that recognises the payload's format decides
(``unknown_format`` passes it on; when nobody recognises it the reason is ``garbage``). Then:

* **salted hash** — every verdict carries ``detail["payload_hash"]``: HMAC-SHA256 of the payload
  under a per-station salt (``<data_dir>/codes/salt``, 32 random bytes made on first start, mode
  0600). It lets an audit match a code the holder shows again *at this station* without the raw
  payload being kept anywhere, and cannot be matched across stations. The raw payload is never put
  into a verdict, so it never reaches the event store, the outbox or MQTT.
* **replay** — a code judged valid is remembered by its salted hash (``<data_dir>/codes/seen.sqlite3``,
  so it survives a restart). The same code judged valid again more than ``replay_grace_s`` after its
  first use and within ``replay_window_s`` is ``replay`` (unverifiable → manual check): a shared
  screenshot or a borrowed phone. The grace covers the holder who keeps the phone up while the
  station re-reads it, or steps back and comes again after a ``retry``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from station.domain.model import CodeStatus, CodeVerdict, DecodedCode
from station.domain.screening import JUDGED_UNSYNCED
from station.ops.fileio import atomic_write
from station.ops.ratelimit import FailureLog

log = logging.getLogger("station.codes.judge")

CODES_DIR = "codes"
SALT_FILE = "salt"
SEEN_DB = "seen.sqlite3"


def station_salt(data_dir: Path | None) -> bytes:
    """Return the station's salt, created on first use; without a data dir, a per-process salt (CLI tools)."""
    if data_dir is None:
        return os.urandom(32)
    folder = Path(data_dir) / CODES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SALT_FILE
    try:
        salt = bytes.fromhex(path.read_text(encoding="ascii").strip())
        if len(salt) >= 16:
            return salt
        log.error("salt file too short, making a new one path=%s", path)
    except FileNotFoundError:
        pass
    except ValueError:
        log.error("salt file unreadable, making a new one path=%s", path)
    salt = os.urandom(32)
    atomic_write(path, salt.hex(), backup=False, private=True)
    log.info("station code salt created path=%s", path)
    return salt


def _as_bytes(payload: Any) -> bytes:
    """Return what a reader handed over as bytes: text (odd unicode included) as UTF-8, anything else as its type's repr."""
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, (bytearray, memoryview)):
        return bytes(payload)
    if isinstance(payload, str):
        return payload.encode("utf-8", "surrogatepass")
    return repr(type(payload)).encode()  # not a payload at all: nothing to judge, but a stable hash


def salted_hash(salt: bytes, payload: bytes) -> str:
    """Return the payload's HMAC-SHA256 under the station's salt (128 bits, hex): matchable here, nowhere else."""
    return hmac.new(salt, b"code:" + payload, hashlib.sha256).hexdigest()[:32]


def holder_ref_fn(salt: bytes) -> Callable[[str], str]:
    """Return the function that turns a holder id into this station's salted, non-reversible reference."""

    def ref(holder: str) -> str:
        return hmac.new(salt, b"holder:" + holder.encode("utf-8"), hashlib.sha256).hexdigest()[:16]

    return ref


DATE_REASONS = frozenset({"not_yet_valid", "stale_dynamic"})
"""Refusals a verifier gives only from comparing a code's dates with the wall clock."""


def judged_by_dates(verdict: CodeVerdict) -> bool:
    """Return whether the verdict came from comparing the code's own dates (expiry, issue time) with the wall clock."""
    if verdict.status is CodeStatus.EXPIRED or verdict.reason in DATE_REASONS:
        return True
    # In date: hc1 and the online answer carry the expiry they checked, local claims their exp.
    return verdict.status is CodeStatus.VALID and any(k in verdict.detail for k in ("expires", "exp"))


class SeenCodes:
    """Salted hashes of codes judged valid, with their first-use time; SQLite, or memory only."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(path) if path is not None else ":memory:", check_same_thread=False)
        self._lock = threading.Lock()
        self._unsaved: dict[str, float] = {}  # uses that could not be written (disk full); first-use time
        self.write_errors = 0
        with self._lock, self._conn:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS seen_codes (hash TEXT PRIMARY KEY, first_wall REAL NOT NULL, "
                "last_wall REAL NOT NULL, uses INTEGER NOT NULL)"
            )

    def use(self, code_hash: str, now_wall: float, window_s: float) -> float | None:
        """Record a use; return the first-use time of an earlier use still inside the window.

        A database that cannot be written (disk full, I/O error) must not stop the lane: the use is kept in
        memory instead (replay protection then lasts until restart) and the failure is counted and logged.
        """
        with self._lock:
            cutoff = now_wall - window_s
            self._unsaved = {h: t for h, t in self._unsaved.items() if t >= cutoff}
            remembered = self._unsaved.get(code_hash)
            try:
                with self._conn:
                    self._conn.execute("DELETE FROM seen_codes WHERE first_wall < ?", (cutoff,))
                    row = self._conn.execute("SELECT first_wall FROM seen_codes WHERE hash = ?", (code_hash,)).fetchone()
                    if row is None and remembered is None:
                        self._conn.execute("INSERT INTO seen_codes VALUES (?, ?, ?, 1)", (code_hash, now_wall, now_wall))
                        return None
                    if row is not None:
                        self._conn.execute("UPDATE seen_codes SET last_wall = ?, uses = uses + 1 WHERE hash = ?", (now_wall, code_hash))
                        return float(row[0]) if remembered is None else min(float(row[0]), remembered)
                    return remembered
            except sqlite3.Error as exc:
                self.write_errors += 1
                log.warning(
                    "seen-codes store not writable, replay memory kept in RAM error=%s path=%s errors=%d", exc, self.path, self.write_errors
                )
                if remembered is None:
                    self._unsaved[code_hash] = now_wall
                return remembered

    def close(self) -> None:
        """Close the store."""
        with self._lock:
            self._conn.close()


class CodeJudge:
    """The verifier chain with the guards; what the pipeline calls for every decoded code."""

    name = "judge"

    def __init__(
        self,
        verifiers: Sequence[Any],
        *,
        salt: bytes,
        seen: SeenCodes | None,
        replay_window_s: float = 86400.0,
        replay_grace_s: float = 20.0,
        clock_synced: Callable[[], bool] | None = None,
    ) -> None:
        self.verifiers = list(verifiers)
        # The station's clock: a verdict that compared a code's dates with it while unsynchronised is
        # marked (JUDGED_UNSYNCED) and the lane applies policy.unsynced_clock_validity. None: not marked (CLI tools).
        self.clock_synced = clock_synced
        self.salt = salt
        self.seen = seen
        self.replay_window_s = replay_window_s
        self.replay_grace_s = replay_grace_s
        self.failures = FailureLog(log, "code verifier")  # per verifier and exception type; in stats()

    def verify(self, payload: bytes, now_wall: float) -> CodeVerdict:
        """Judge a payload seen without its frame (verifiers that need the pixels cannot judge it)."""
        return self.verify_in_frame(DecodedCode(payload, "QRCODE", None, "-"), None, now_wall)

    def _ask(self, verifier: Any, code: DecodedCode, image: np.ndarray | None, now_wall: float) -> CodeVerdict:
        """Return one verifier's verdict; one that raises or answers nonsense is a ``malformed`` verdict, never a dead lane."""
        name = getattr(verifier, "name", type(verifier).__name__)
        try:
            in_frame = getattr(verifier, "verify_in_frame", None)
            verdict = in_frame(code, image, now_wall) if in_frame is not None else verifier.verify(code.payload, now_wall)
        except Exception as exc:  # noqa: BLE001 - the verifiers' own backstops should have caught it: a bug to fix
            self.failures.report(f"{name}:{type(exc).__name__}", exc)
            return CodeVerdict(CodeStatus.INVALID, None, "malformed", str(name), None, {"error": type(exc).__name__})
        if not isinstance(verdict, CodeVerdict) or not isinstance(verdict.detail, dict):
            self.failures.report(f"{name}:not_a_verdict")
            return CodeVerdict(CodeStatus.INVALID, None, "malformed", str(name), None, {"error": "not_a_verdict"})
        return verdict

    def verify_in_frame(self, code: DecodedCode, image: np.ndarray | None, now_wall: float) -> CodeVerdict:
        """Judge a decoded code: the first verifier that knows its format decides, then the salted hash and the replay guard apply."""
        payload = _as_bytes(code.payload)
        if payload is not code.payload:
            code = replace(code, payload=payload)
        code_hash = salted_hash(self.salt, payload)
        verdict: CodeVerdict | None = None
        for verifier in self.verifiers:
            verdict = self._ask(verifier, code, image, now_wall)
            if not (verdict.status is CodeStatus.INVALID and verdict.reason == "unknown_format"):
                break
        else:
            verdict = CodeVerdict(CodeStatus.INVALID, None, "garbage", "none", None, {})
        assert verdict is not None
        detail = dict(verdict.detail, payload_hash=code_hash)
        if self.clock_synced is not None and judged_by_dates(verdict) and not self.clock_synced():
            detail[JUDGED_UNSYNCED] = True
        if verdict.status is CodeStatus.VALID and self.seen is not None and self.replay_window_s > 0:
            first = self.seen.use(code_hash, now_wall, self.replay_window_s)
            if first is not None and now_wall - first > self.replay_grace_s:
                log.warning("health code replayed code_hash=%s first_use_ago_s=%.0f", code_hash, now_wall - first)
                detail["first_use"] = round(first, 3)
                return replace(verdict, status=CodeStatus.UNVERIFIABLE, reason="replay", detail=detail)
        return replace(verdict, detail=detail)

    def stats(self) -> dict[str, Any]:
        """Return what a technician needs to see: each verifier's trust list / look-up counters, replay-store errors."""
        out: dict[str, Any] = {
            "verifiers": [getattr(v, "name", type(v).__name__) for v in self.verifiers],
            "replay_store_write_errors": self.seen.write_errors if self.seen is not None else None,
        }
        failures = self.failures.snapshot()
        for v in self.verifiers:
            own = getattr(v, "failures", None)
            if isinstance(own, FailureLog):
                failures.update({f"{v.name}:{k}": n for k, n in own.snapshot().items()})
        out["malformed_backstop"] = failures  # each count is an input no check foresaw: a bug to fix, not an attack to fear
        for v in self.verifiers:
            trust_stats = getattr(getattr(v, "trust", None), "stats", None)
            if trust_stats is not None:  # hc1: which trust list is in force
                out["trust_list"] = trust_stats()
            counters = getattr(v, "counters", None)
            if isinstance(counters, dict):  # online look-ups: requests, answered, timeouts, no_network
                out[f"{v.name}_lookups"] = dict(counters)
        return out

    def close(self) -> None:
        """Close every verifier that holds resources, and the replay store."""
        for v in self.verifiers:
            closer = getattr(v, "close", None)
            if closer is not None:
                closer()
        if self.seen is not None:
            self.seen.close()
