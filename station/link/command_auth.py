r"""Who may tell a station what to do: signed remote commands and signed code look-up answers.

A command that changes the gate or the station (``SIGNED_COMMANDS``) must arrive as a *signed
envelope* (docs/mqtt.md, *Signed commands*)::

    {"id": "<unique, 1-128 printable chars>", "deadline": <unix s>, "site": "…", "station": "…",
     "command": "open-gate", "args": {…}, "key_id": "<16 hex>", "by": "<signer, 1-64 chars>",
     "sig": "<base64>"}

``sig`` is an Ed25519 signature (or ECDSA P-256 / SHA-256, DER) by a command-centre key over
:func:`command_bytes`: the domain tag ``checkpoint-cmd/v1`` and a newline, then the canonical JSON
(sorted keys, no whitespace, non-ASCII as ``\u`` escapes, shortest round-trip numbers) of every
field but ``sig``. So the signature binds the site, the station, the command name, its arguments,
the id, the deadline and the signer's name; the audit's operator is the signed ``by`` with its
``key_id``, never a field the sender could change. ``key_id`` is the first 8 bytes of SHA-256 of
the key's SubjectPublicKeyInfo (DER), as hex.

:func:`verify_command` is total: any value gives a :class:`CommandVerdict` with one reason from
``REASONS``, never an exception. The id is remembered (:class:`ReplayGuard`, a small SQLite file
in the data dir, so across restarts too) until well after its deadline, which is at most
``max_window_s`` ahead; an id seen before is a ``replay``.

The trusted keys (:class:`CommandKeys`) come from ``centre.command_keys_file`` (PEM public keys
or certificates, one or more) until the centre rotates them with a signed ``command-keys``
command, whose list is stored in ``<data_dir>/command-keys.json`` and used from then on.

Code look-up answers (``lookup/code/result``) are signed by the same keys under another domain
tag (``checkpoint-lookup/v1``), binding the request id, station, site, token hash and result:
:func:`sign_lookup_answer` (the centre's side) and :func:`verify_lookup_answer`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import math
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from station.ops.fileio import atomic_write

log = logging.getLogger("station.link.command_auth")

COMMAND_DOMAIN = b"checkpoint-cmd/v1\n"
LOOKUP_DOMAIN = b"checkpoint-lookup/v1\n"

SIGNED_COMMANDS = frozenset(
    {
        "open-gate",
        "set-threshold",
        "resident-plates",
        "reload-config",
        "trust-list",
        "command-keys",
        "district-key",
        "alarm-ack",
        "watch",
        "resend",
    }
)
"""Commands that change the gate or the station: refused unless signed by a trusted centre key."""
UNSIGNED_COMMANDS = frozenset({"ping", "snapshot"})
"""Read-only commands that may arrive unsigned. Every command not listed here needs a signature."""

MAX_WINDOW_S = 60.0
KEEP_IDS_S = 600.0  # ids outlive their deadline: a wall clock stepped back must not re-admit one
MAX_IDS = 100_000
MAX_KEYS = 16

ENVELOPE_FIELDS = frozenset({"id", "deadline", "site", "station", "command", "args", "key_id", "by", "sig"})
LOOKUP_FIELDS = frozenset({"id", "ok", "result", "station", "site", "token_sha256", "key_id", "by", "sig"})

REASONS = (
    "ok",
    "unsigned",
    "no_keys_configured",
    "unknown_key",
    "bad_signature",
    "expired",
    "deadline_too_far",
    "replay",
    "replay_store_error",
    "wrong_station",
    "wrong_site",
    "wrong_command",
    "malformed",
)
LOOKUP_REASONS = (
    "ok",
    "unsigned",
    "no_keys_configured",
    "unknown_key",
    "bad_signature",
    "wrong_request",
    "wrong_station",
    "wrong_site",
    "wrong_token",
    "malformed",
)

_ID_RE = re.compile(r"^[\x21-\x7e]{1,128}$")
_KEY_ID_RE = re.compile(r"^[0-9a-f]{16}$")
_B64_RE = re.compile(r"^[A-Za-z0-9+/]{40,200}={0,2}$")
_PEM_RE = re.compile(rb"-----BEGIN (PUBLIC KEY|CERTIFICATE)-----.+?-----END \1-----", re.DOTALL)

PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


class KeyListError(ValueError):
    """A key list (a file, or a rotation) that is refused; the message says why."""


# ------------------------------------------------------------------------------- canonical form


def canonical(value: Mapping[str, Any]) -> bytes:
    """Sorted-key compact JSON of ``value`` without ``sig`` (raises ValueError/RecursionError on NaN or depth)."""
    body = {k: v for k, v in value.items() if k != "sig"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def command_bytes(envelope: Mapping[str, Any]) -> bytes:
    """Return the bytes a command signature covers: the command domain tag, then the canonical envelope."""
    return COMMAND_DOMAIN + canonical(envelope)


def lookup_bytes(answer: Mapping[str, Any]) -> bytes:
    """Return the bytes a look-up answer's signature covers: the look-up domain tag, then the canonical answer."""
    return LOOKUP_DOMAIN + canonical(answer)


# ------------------------------------------------------------------------------------------ keys


def key_id_of(key: PublicKey) -> str:
    """Return a key's id: the first 8 bytes of the SHA-256 of its SubjectPublicKeyInfo, in hex."""
    spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).digest()[:8].hex()


def public_pem(key: PublicKey) -> str:
    """Return the public key as PEM text."""
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")


def _usable(key: Any, where: str) -> PublicKey:
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise KeyListError(f"{where}: a command key must be Ed25519 or ECDSA P-256, not {type(key).__name__}")


def parse_public_keys(data: bytes, where: str = "keys") -> dict[str, PublicKey]:
    """Return key id → key for every PEM public key or certificate in ``data``; one bad block refuses all."""
    keys: dict[str, PublicKey] = {}
    for n, match in enumerate(_PEM_RE.finditer(data)):
        block = match.group(0)
        try:
            if match.group(1) == b"CERTIFICATE":
                key: Any = x509.load_pem_x509_certificate(block).public_key()
            else:
                key = serialization.load_pem_public_key(block)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise KeyListError(f"{where}: PEM block {n + 1} is not a public key or certificate: {exc}") from None
        usable = _usable(key, f"{where}: PEM block {n + 1}")
        keys[key_id_of(usable)] = usable
    if len(keys) > MAX_KEYS:
        raise KeyListError(f"{where}: {len(keys)} keys, at most {MAX_KEYS}")
    return keys


def load_private_key(path: Path) -> PrivateKey:
    """Load a centre signing key (PEM PKCS#8, unencrypted): Ed25519 or ECDSA P-256."""
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise KeyListError(f"{path}: the signing key must be Ed25519 or ECDSA P-256")


def _sign(key: PrivateKey, data: bytes) -> str:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.sign(data)
    else:
        raw = key.sign(data, ec.ECDSA(hashes.SHA256()))
    return base64.b64encode(raw).decode("ascii")


def _signature_ok(key: PublicKey, sig_b64: str, data: bytes) -> bool:
    try:
        raw = base64.b64decode(sig_b64, validate=True)
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(raw, data)
        else:
            key.verify(raw, data, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


class CommandKeys:
    """The centre keys this station trusts: the configured file, or the newest signed rotation.

    A rotation (``command-keys``) is stored in ``<data_dir>/command-keys.json`` and wins over the
    configured file from then on (restarts included): the centre is the authority that can also
    *retire* a key. Delete that file to go back to the configured keys.
    """

    FILE = "command-keys.json"

    def __init__(self, configured: Path | None = None, data_dir: Path | None = None) -> None:
        self.configured = Path(configured) if configured else None
        self.stored = Path(data_dir) / self.FILE if data_dir is not None else None
        self._lock = threading.Lock()
        self._keys: dict[str, PublicKey] = {}
        self.version = 0
        self.source = "none"
        self.problem: str | None = None
        self._load()

    def _load(self) -> None:
        if self.stored is not None and self.stored.exists():
            try:
                doc = json.loads(self.stored.read_text(encoding="utf-8"))
                keys = parse_public_keys("".join(doc["keys"]).encode("ascii"), str(self.stored))
                if not keys:
                    raise KeyListError("no keys")
                self._keys, self.version, self.source = keys, int(doc["version"]), "rotated"
                log.info("command keys loaded source=rotated version=%d keys=%s", self.version, ",".join(keys))
                return
            except (OSError, ValueError, KeyError, TypeError) as exc:
                # A damaged stored list falls back to the configured one rather than to nothing.
                self.problem = f"{self.stored}: {exc}"
                log.error("stored command keys not usable path=%s error=%s", self.stored, exc)
        if self.configured is None:
            log.warning(
                "no command-centre keys configured (centre.command_keys_file): every command that "
                "changes the gate or the station is refused reason=no_keys_configured"
            )
            return
        try:
            self._keys = parse_public_keys(self.configured.read_bytes(), str(self.configured))
        except (OSError, KeyListError) as exc:
            self.problem = str(exc)
            log.error("command keys not usable path=%s error=%s: signed commands are refused", self.configured, exc)
            return
        self.source = "configured" if self._keys else "none"
        log.info("command keys loaded source=configured keys=%s", ",".join(self._keys) or "-")

    def get(self, key_id: str) -> PublicKey | None:
        """Return the trusted key with this id, or None."""
        with self._lock:
            return self._keys.get(key_id)

    def __len__(self) -> int:
        with self._lock:
            return len(self._keys)

    def key_ids(self) -> list[str]:
        """Return the trusted key ids, sorted."""
        with self._lock:
            return sorted(self._keys)

    def rotate(self, version: Any, pems: Any, *, by: str, key_id: str, now: float) -> dict[str, Any]:
        """Replace the key list (the caller has verified the command with a current key)."""
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise KeyListError("args.version must be an integer >= 1")
        if not isinstance(pems, list) or not pems or not all(isinstance(p, str) and len(p) <= 8192 for p in pems):
            raise KeyListError("args.keys must be a non-empty list of PEM public keys (strings)")
        keys = parse_public_keys("\n".join(pems).encode("ascii", "replace"), "args.keys")
        if len(keys) != len(pems):
            raise KeyListError(f"args.keys: {len(pems)} entries but {len(keys)} distinct usable PEM public keys")
        if self.stored is None:
            raise KeyListError("this station has no data directory to keep a rotated key list in")
        with self._lock:
            if version <= self.version:
                raise KeyListError(f"version {version} is not newer than the key list in use ({self.version})")
            doc = {"version": version, "keys": [public_pem(k) for k in keys.values()], "by": by, "key_id": key_id, "received_at": now}
            self.stored.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.stored, json.dumps(doc, indent=1, sort_keys=True), backup=False)
            previous = self.version
            self._keys, self.version, self.source = keys, version, "rotated"
        log.warning(
            "command keys rotated version=%d previous=%d keys=%s by=%s signing_key=%s", version, previous, ",".join(keys), by, key_id
        )
        return {"version": version, "previous_version": previous, "key_ids": sorted(keys)}

    def stats(self) -> dict[str, Any]:
        """Return where the keys come from, the list version, the key ids and any problem loading them."""
        with self._lock:
            return {"source": self.source, "version": self.version, "key_ids": sorted(self._keys), "problem": self.problem}


# ---------------------------------------------------------------------------------------- replay


class ReplayGuard:
    """Command ids already accepted, kept until ``KEEP_IDS_S`` after their deadline (bounded)."""

    def __init__(self, path: Path | None, max_ids: int = MAX_IDS) -> None:
        self.path = path
        self.max_ids = max_ids
        self._lock = threading.Lock()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path) if path is not None else ":memory:", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a claimed id must survive a power cut
        self._db.execute("CREATE TABLE IF NOT EXISTS ids (id TEXT PRIMARY KEY, keep_until REAL NOT NULL)")
        self._db.execute("CREATE INDEX IF NOT EXISTS ids_keep ON ids(keep_until)")
        self._purged = float("-inf")

    def claim(self, command_id: str, deadline: float, now: float) -> bool | None:
        """Remember ``command_id`` until its deadline; return True on first use, False if seen, None if the store failed (refuse)."""
        try:
            with self._lock:
                if now - self._purged >= 10.0:
                    self._db.execute("DELETE FROM ids WHERE keep_until < ?", (now,))
                    self._purged = now
                (count,) = self._db.execute("SELECT count(*) FROM ids").fetchone()
                if count >= self.max_ids:
                    log.error("command replay store full ids=%d: refusing signed commands until ids expire", count)
                    return None
                cur = self._db.execute("INSERT OR IGNORE INTO ids(id, keep_until) VALUES (?, ?)", (command_id, deadline + KEEP_IDS_S))
                return cur.rowcount == 1
        except sqlite3.Error as exc:
            log.error("command replay store failed path=%s error=%s", self.path, exc)
            return None

    def close(self) -> None:
        """Close the replay store."""
        with self._lock:
            self._db.close()


# ---------------------------------------------------------------------------------- verification


@dataclass(frozen=True, slots=True)
class SignedCommand:
    """A command envelope whose signature verified: what to do, for whom, until when, and who signed it."""

    id: str
    deadline: float
    site: str
    station: str
    command: str
    args: dict[str, Any]
    key_id: str
    by: str

    @property
    def signer(self) -> str:
        """Who the audit names: the signed signer name and the key that vouches for it."""
        return f"{self.by} (key {self.key_id})"


@dataclass(frozen=True, slots=True)
class CommandVerdict:
    """The judgement on one command request: ``ok``, or the reason (and detail) it is refused."""

    ok: bool
    reason: str
    command: SignedCommand | None = None
    detail: str = ""


def _refuse(reason: str, detail: str = "", command: SignedCommand | None = None) -> CommandVerdict:
    return CommandVerdict(False, reason, command, detail)


def _short_text(value: Any, limit: int) -> bool:
    return isinstance(value, str) and 0 < len(value) <= limit and value.isprintable()


def _parse_envelope(request: Any) -> SignedCommand | str:
    """Return the typed envelope, or why it is ``malformed``."""
    if not isinstance(request, dict):
        return "the request must be a JSON object"
    extra = set(request) - ENVELOPE_FIELDS
    if extra:
        return f"unknown field(s) {sorted(extra)[:5]}"
    missing = ENVELOPE_FIELDS - set(request)
    if missing:
        return f"missing field(s) {sorted(missing)}"
    cid, deadline, args, key_id = request["id"], request["deadline"], request["args"], request["key_id"]
    if not isinstance(cid, str) or not _ID_RE.match(cid):
        return "id must be 1-128 printable ASCII characters"
    if isinstance(deadline, bool) or not isinstance(deadline, (int, float)) or not math.isfinite(deadline):
        return "deadline must be a number (unix seconds)"
    if not isinstance(args, dict):
        return "args must be a JSON object"
    if not isinstance(key_id, str) or not _KEY_ID_RE.match(key_id):
        return "key_id must be 16 lower-case hex digits"
    for name in ("site", "station", "command"):
        if not _short_text(request[name], 64):
            return f"{name} must be a string of 1-64 characters"
    if not _short_text(request["by"], 64):
        return "by (the signer) must be a string of 1-64 printable characters"
    sig = request["sig"]
    if not isinstance(sig, str) or not _B64_RE.match(sig):
        return "sig must be base64"
    return SignedCommand(cid, float(deadline), request["site"], request["station"], request["command"], args, key_id, request["by"])


def verify_command(
    request: Any,
    *,
    command: str,
    station: str,
    site: str,
    keys: CommandKeys,
    now: float,
    replay: ReplayGuard | None,
    max_window_s: float = MAX_WINDOW_S,
) -> CommandVerdict:
    """Judge one received command body for ``cmd/<command>`` at this station. Total: never raises."""
    try:
        if not len(keys):
            return _refuse("no_keys_configured", "this station trusts no command-centre key")
        if not isinstance(request, dict):
            return _refuse("malformed", "the request must be a JSON object")
        if "sig" not in request:
            return _refuse("unsigned", "this command must be signed by a command-centre key")
        env = _parse_envelope(request)
        if isinstance(env, str):
            return _refuse("malformed", env)
        key = keys.get(env.key_id)
        if key is None:
            return _refuse("unknown_key", f"key {env.key_id} is not trusted here")
        if not _signature_ok(key, request["sig"], command_bytes(request)):
            return _refuse("bad_signature", f"the signature does not verify with key {env.key_id}")
        # Signed from here on: the fields are what the centre said.
        if env.command != command:
            return _refuse("wrong_command", f"signed for {env.command!r}, received on cmd/{command}", env)
        if env.station != station:
            return _refuse("wrong_station", f"signed for station {env.station!r}", env)
        if env.site != site:
            return _refuse("wrong_site", f"signed for site {env.site!r}", env)
        if now > env.deadline:
            return _refuse("expired", f"deadline passed {now - env.deadline:.1f} s ago", env)
        if env.deadline - now > max_window_s:
            return _refuse("deadline_too_far", f"deadline more than {max_window_s:.0f} s ahead", env)
        if replay is not None:
            claimed = replay.claim(env.id, env.deadline, now)
            if claimed is None:
                return _refuse("replay_store_error", "the replay store failed; refused to be safe", env)
            if not claimed:
                return _refuse("replay", "this command id was already used", env)
        return CommandVerdict(True, "ok", env)
    except (ValueError, TypeError, RecursionError, OverflowError, UnicodeError) as exc:
        # NaN or a nesting too deep to encode: not a body the centre's tool produces.
        return _refuse("malformed", f"{type(exc).__name__}")


class CommandVerifier:
    """:func:`verify_command` bound to this station's keys, replay store, identity and clock."""

    def __init__(
        self,
        keys: CommandKeys,
        replay: ReplayGuard | None,
        *,
        site: str,
        station: str,
        max_window_s: float = MAX_WINDOW_S,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.keys = keys
        self.replay = replay
        self.site = site
        self.station = station
        self.max_window_s = max_window_s
        self.wall = wall

    @staticmethod
    def needs_signature(command: str) -> bool:
        """Return whether ``command`` must be signed (every command but the read-only ones)."""
        return command not in UNSIGNED_COMMANDS

    def verify(self, command: str, request: Any) -> CommandVerdict:
        """Judge one request for ``command`` against the trusted keys, this station and the replay store."""
        return verify_command(
            request,
            command=command,
            station=self.station,
            site=self.site,
            keys=self.keys,
            now=self.wall(),
            replay=self.replay,
            max_window_s=self.max_window_s,
        )


# -------------------------------------------------------------------------------------- signing


def sign_command(
    key: PrivateKey,
    *,
    site: str,
    station: str,
    command: str,
    args: Mapping[str, Any],
    by: str,
    ttl_s: float = 20.0,
    now: float | None = None,
    command_id: str | None = None,
) -> dict[str, Any]:
    """Return a signed command body for ``<prefix>/<site>/<station>/cmd/<command>`` (the centre's side)."""
    now = time.time() if now is None else now
    envelope: dict[str, Any] = {
        "id": command_id or uuid.uuid4().hex,
        "deadline": round(now + ttl_s, 3),
        "site": site,
        "station": station,
        "command": command,
        "args": dict(args),
        "key_id": key_id_of(key.public_key()),
        "by": by,
    }
    envelope["sig"] = _sign(key, command_bytes(envelope))
    return envelope


def sign_lookup_answer(
    key: PrivateKey,
    *,
    request_id: str,
    station: str,
    site: str,
    token_sha256: str,
    result: Mapping[str, Any] | None,
    ok: bool = True,
    by: str = "centre",
) -> dict[str, Any]:
    """Return a signed ``lookup/code/result`` answer to one request (the centre's side)."""
    answer: dict[str, Any] = {
        "id": request_id,
        "ok": ok,
        "result": dict(result) if result is not None else None,
        "station": station,
        "site": site,
        "token_sha256": token_sha256,
        "key_id": key_id_of(key.public_key()),
        "by": by,
    }
    answer["sig"] = _sign(key, lookup_bytes(answer))
    return answer


def verify_lookup_answer(
    answer: Any, *, request_id: str, station: str, site: str, token_sha256: str, keys: CommandKeys | None
) -> tuple[bool, str]:
    """(ok, reason) for one look-up answer; only ``ok`` answers may decide a colour. Total."""
    try:
        if keys is None or not len(keys):
            return False, "no_keys_configured"
        if not isinstance(answer, dict) or "sig" not in answer:
            return False, "unsigned"
        if set(answer) != LOOKUP_FIELDS:
            return False, "malformed"
        key_id, sig = answer["key_id"], answer["sig"]
        if not isinstance(key_id, str) or not _KEY_ID_RE.match(key_id) or not isinstance(sig, str):
            return False, "malformed"
        key = keys.get(key_id)
        if key is None:
            return False, "unknown_key"
        if not _signature_ok(key, sig, lookup_bytes(answer)):
            return False, "bad_signature"
        if answer["id"] != request_id:
            return False, "wrong_request"
        if answer["station"] != station:
            return False, "wrong_station"
        if answer["site"] != site:
            return False, "wrong_site"
        if answer["token_sha256"] != token_sha256:
            return False, "wrong_token"
        return True, "ok"
    except (ValueError, TypeError, RecursionError, OverflowError, UnicodeError):
        return False, "malformed"


def new_signing_key() -> ed25519.Ed25519PrivateKey:
    """Return a new Ed25519 signing key."""
    return ed25519.Ed25519PrivateKey.generate()


def private_pem(key: PrivateKey) -> bytes:
    """Return the private key as unencrypted PEM PKCS#8."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
