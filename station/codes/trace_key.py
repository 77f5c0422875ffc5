"""The district tracing key: keyed references to code holders, ID numbers and plates that link across checkpoints.

A station's own references (``holder_ref_fn``: the station salt) match only at that station. For
tracing (issue 19 item 4) the district's centre pushes one secret *district key* to every station
with the signed ``district-key`` command; with it set, an event names its code holder (and a vehicle
its plate) by ``trace_ref`` = HMAC-SHA256(district key, ``"trace:<domain>:" + value``), 128 bits as
hex, next to ``trace_key``, the key's id. The same person at two checkpoints gets the same
``trace_ref`` under the same key, so the centre links them without ever seeing the holder id, the
payload, the ID number or the plate.

Where the key lives: ``<data_dir>/codes/district-key.json`` (mode 0600, no ``.bak``), read at start
and replaced by a newer push (a higher ``version``). It is never published, never put in an event,
a command result, a log line or the command audit (``station.link.commands`` redacts it). The centre
keeps no copy beside its data: a tracer's query is turned into a reference with the key file held
by the district's key officer (``station centre trace --key-file``), and the database holds
references and key ids only.

The key id is derived, not chosen: the first 8 bytes of SHA-256 of ``"district-key-id:" + key`` as
hex, so a push cannot name a key by another key's id. Rotation replaces the key: events from then on
carry the new id; references made under an older key are found with that key's file.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from station.ops.fileio import atomic_write

log = logging.getLogger("station.codes.trace_key")

KEY_FILE = "district-key.json"
CODES_DIR = "codes"  # = station.codes.judge.CODES_DIR
MIN_KEY_BYTES = 32
MAX_KEY_BYTES = 64
DOMAINS = frozenset({"holder", "idcard", "plate"})
_HEX = re.compile(r"^[0-9a-f]+$")


class DistrictKeyError(ValueError):
    """A pushed or stored district key that cannot be used; the message says why (never the key)."""


def key_id_of(key: bytes) -> str:
    """Return the id of a district key: 16 hex characters of SHA-256 over a domain tag and the key."""
    return hashlib.sha256(b"district-key-id:" + key).hexdigest()[:16]


def parse_key(text: Any) -> bytes:
    """Return the key of a hex string (32-64 bytes); raise :class:`DistrictKeyError` naming what is wrong."""
    if not isinstance(text, str):
        raise DistrictKeyError("key must be a hex string")
    text = text.strip().lower()
    if not _HEX.match(text) or len(text) % 2:
        raise DistrictKeyError("key is not hex")
    key = bytes.fromhex(text)
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise DistrictKeyError(f"key has {len(key)} bytes, {MIN_KEY_BYTES}-{MAX_KEY_BYTES} are allowed")
    return key


def normalise(domain: str, value: str) -> str:
    """Return the form of ``value`` that is hashed: plates upper case without separators, ID numbers' ``x`` upper case."""
    if domain == "plate":
        return "".join(ch for ch in value.upper() if ch not in " -·.•_")
    if domain == "idcard":
        return value.strip().upper()
    return value


def trace_ref(key: bytes, domain: str, value: str) -> str:
    """Return HMAC-SHA256(key, ``"trace:<domain>:" + value``) truncated to 128 bits, hex."""
    if domain not in DOMAINS:
        raise ValueError(f"domain {domain!r}: expected one of {', '.join(sorted(DOMAINS))}")
    msg = f"trace:{domain}:{normalise(domain, value)}".encode("utf-8", "surrogatepass")
    return hmac.new(key, msg, hashlib.sha256).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class _Installed:
    key: bytes
    key_id: str
    version: int
    installed_at: float
    signed_by: str


class DistrictKeys:
    """The station's district key (at most one current), kept 0600 in the data dir; thread-safe."""

    def __init__(self, data_dir: Path | None) -> None:
        self.path = Path(data_dir) / CODES_DIR / KEY_FILE if data_dir is not None else None
        self._lock = threading.Lock()
        self._current: _Installed | None = None
        self.load_error: str | None = None
        self._file_sig: tuple[int, int] | None = None
        self._checked_at = -1e18
        self.check_interval_s = 1.0
        self._refresh(force=True)

    def _refresh(self, force: bool = False) -> None:
        """Re-read the file when it changed (another instance in this process, or a technician, installed a key)."""
        now = time.monotonic()
        if self.path is None or (not force and now - self._checked_at < self.check_interval_s):
            return
        self._checked_at = now
        try:
            st = os.stat(self.path)
        except OSError:
            return
        sig = (st.st_mtime_ns, st.st_size)
        if sig == self._file_sig:
            return
        with self._lock:
            self._file_sig = sig
            try:
                self._current = self._read(self.path)
                self.load_error = None
            except DistrictKeyError as exc:  # tracing off, the lane unaffected; the status names why
                self.load_error = str(exc)
                log.error("district key unusable, tracing references off path=%s error=%s", self.path, exc)

    @staticmethod
    def _read(path: Path) -> _Installed:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DistrictKeyError(f"{path}: cannot read: {type(exc).__name__}") from None
        if not isinstance(doc, dict):
            raise DistrictKeyError(f"{path}: not a JSON object")
        key = parse_key(doc.get("key"))
        version = doc.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise DistrictKeyError(f"{path}: version must be an integer >= 1")
        return _Installed(key, key_id_of(key), version, float(doc.get("installed_at") or 0.0), str(doc.get("signed_by") or ""))

    def install(self, version: Any, key_hex: Any, *, key_id: Any = None, signed_by: str = "", now: float | None = None) -> dict[str, Any]:
        """Store a newer key (``version`` above the current one) and use it from the next reference; return its status.

        ``key_id``, when given, must be the key's derived id (a check that the pusher means this key).
        """
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise DistrictKeyError("version must be an integer >= 1")
        key = parse_key(key_hex)
        kid = key_id_of(key)
        if key_id is not None and key_id != kid:
            raise DistrictKeyError(f"key_id {str(key_id)[:32]!r} is not this key's id")
        if self.path is None:
            raise DistrictKeyError("this station has no data directory to keep a district key in")
        self._refresh(force=True)
        with self._lock:
            have = self._current.version if self._current is not None else 0
            if version <= have:
                raise DistrictKeyError(f"version {version} is not newer than the stored version {have}; the current key stays")
            when = time.time() if now is None else now
            doc = {"version": version, "key": key.hex(), "key_id": kid, "installed_at": when, "signed_by": signed_by}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, json.dumps(doc), backup=False, private=True)
            previous = self._current.key_id if self._current is not None else None
            self._current = _Installed(key, kid, version, when, signed_by)
            self.load_error = None
            st = os.stat(self.path)
            self._file_sig = (st.st_mtime_ns, st.st_size)
        log.warning("district key installed key_id=%s version=%d previous_key_id=%s signer=%s", kid, version, previous, signed_by)
        return {**self.status(), "previous_key_id": previous}

    def ref(self, domain: str, value: str) -> tuple[str, str] | None:
        """Return ``(trace_ref, key_id)`` of ``value`` under the current key, or None when no key is set."""
        self._refresh()
        current = self._current
        if current is None or not value:
            return None
        return trace_ref(current.key, domain, value), current.key_id

    def holder_ref(self, holder: str) -> tuple[str, str] | None:
        """Return the reference of a code holder's id (HC1 holder), or None without a key."""
        return self.ref("holder", holder)

    def annotate_plate(self, record: dict[str, Any]) -> dict[str, Any]:
        """Return ``record`` with ``plate_ref`` and ``trace_key`` added when it has a plate and a key is set."""
        plate = record.get("plate")
        got = self.ref("plate", plate) if isinstance(plate, str) and plate else None
        if got is None:
            return record
        return {**record, "plate_ref": got[0], "trace_key": got[1]}

    def status(self) -> dict[str, Any]:
        """Return what may be shown about the key: its id, version and when it came (never the key)."""
        self._refresh()
        current = self._current
        if current is None:
            return {"key_id": None, "version": 0, "installed_at": None, "error": self.load_error}
        return {"key_id": current.key_id, "version": current.version, "installed_at": current.installed_at, "error": None}
