"""Who may see the board: a users file with scrypt-hashed passwords, roles, signed session cookies.

* The **users file** (JSON, written 0600): ``{"users": {"<name>": {"role": "viewer|admin",
  "password": "scrypt$<n>$<r>$<p>$<salt hex>$<hash hex>"}}}``. Managed with
  ``stationctl board-user add NAME --role viewer --users FILE`` (password prompted, or read from
  stdin with ``--password-stdin``). The board re-reads it when it changes: a removed user or a new
  password ends that user's sessions at their next request.
* **Roles**: ``viewer`` sees every page, stream and picture; ``admin`` also may change what the
  board shows (every mutating endpoint requires it).
* **Sessions**: a cookie ``<payload>.<HMAC-SHA256>`` signed with a server secret (``board-session.key``
  in the data dir, 32 random bytes, created 0600 if absent). The payload names the user, the role,
  an expiry, a random id (logout revokes it) and a tag of the user's password hash (a changed or
  removed password voids the cookie). HttpOnly, SameSite=Strict, Secure when served over TLS.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from station.ops.fileio import atomic_write, private_secret

log = logging.getLogger("station.board.auth")

ROLES = ("viewer", "admin")
USER_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
PASSWORD_MIN = 10
PASSWORD_MAX = 1024
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1  # 16 MiB and ~50 ms per guess on the board's host
COOKIE = "board_session"
SECRET_NAME = "board-session.key"
USERS_NAME = "board-users.json"


class AuthError(ValueError):
    """A users file or a password that cannot be used (message says why)."""


def hash_password(password: str, *, n: int = SCRYPT_N) -> str:
    """Return ``scrypt$n$r$p$salt$hash`` of ``password`` with a fresh 16-byte salt."""
    check_password(password)
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=SCRYPT_R, p=SCRYPT_P, dklen=32, maxmem=256 * n * SCRYPT_R)
    return f"scrypt${n}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    """Return whether ``password`` matches a stored scrypt hash (constant time); False for any malformed hash."""
    try:
        algo, n_text, r_text, p_text, salt_hex, digest_hex = stored.split("$")
        n, r, p = int(n_text), int(r_text), int(p_text)
        if algo != "scrypt" or not (2**10 <= n <= 2**17 and 1 <= r <= 16 and 1 <= p <= 4):
            return False
        digest = hashlib.scrypt(
            password.encode("utf-8", "surrogatepass")[: PASSWORD_MAX * 4],
            salt=bytes.fromhex(salt_hex),
            n=n,
            r=r,
            p=p,
            dklen=len(digest_hex) // 2,
            maxmem=256 * n * r + 1024,
        )
    except (ValueError, TypeError, MemoryError):
        return False
    return hmac.compare_digest(digest.hex(), digest_hex)


def check_password(password: str) -> None:
    """Raise :class:`AuthError` for a new password shorter or longer than a board password may be."""
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        raise AuthError(f"a board password must be {PASSWORD_MIN} to {PASSWORD_MAX} characters")


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data, backup=False, private=True)


@dataclass(frozen=True)
class User:
    """One board user as the users file holds them."""

    name: str
    role: str
    password: str  # the stored hash

    @property
    def tag(self) -> str:
        """Return a short fingerprint of the stored hash: a session signed under an older password is void."""
        return hashlib.sha256(self.password.encode()).hexdigest()[:16]


class UsersFile:
    """The users file, re-read when it changes (inode, mtime or size)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._users: dict[str, User] = {}
        # A fixed dummy hash: an unknown user costs the same scrypt as a known one (no user probing by timing).
        self._dummy = hash_password(secrets.token_hex(16))

    def users(self) -> dict[str, User]:
        """Return every valid user by name ({} without a file); raise :class:`AuthError` for a file that is not a users file.

        Entries with a bad name, role or hash are skipped (logged), the rest still log in.
        """
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return {}
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)  # a save is an atomic replace: a new inode
        with self._lock:
            if stamp != self._stamp:
                self._users = self._parse(self.path.read_bytes())
                self._stamp = stamp
                if st.st_mode & 0o077:
                    log.warning("board users file is readable by others path=%s mode=%o: chmod 600", self.path, st.st_mode & 0o777)
            return dict(self._users)

    @staticmethod
    def _parse(raw: bytes) -> dict[str, User]:
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise AuthError(f"board users file is not JSON: {exc}") from None
        entries = data.get("users") if isinstance(data, dict) else None
        if not isinstance(entries, dict):
            raise AuthError('board users file: expected {"users": {name: {"role": ..., "password": ...}}}')
        out: dict[str, User] = {}
        for name, entry in entries.items():
            if (
                not USER_NAME.match(name)
                or not isinstance(entry, dict)
                or entry.get("role") not in ROLES
                or not isinstance(entry.get("password"), str)
            ):
                log.warning("board users file: entry skipped (bad name, role or password hash) user=%r", name[:64])
                continue
            out[name] = User(name, entry["role"], entry["password"])
        return out

    def get(self, name: str) -> User | None:
        """Return the user called ``name``, or None."""
        return self.users().get(name)

    def authenticate(self, name: str, password: str) -> User | None:
        """Return the user if ``password`` is theirs, else None (same work for unknown names)."""
        user = self.get(name) if USER_NAME.match(name) else None
        ok = verify_password(password, user.password if user else self._dummy)
        return user if ok and user is not None else None

    def _save(self, users: dict[str, User]) -> None:
        body = {"users": {u.name: {"role": u.role, "password": u.password} for u in sorted(users.values(), key=lambda u: u.name)}}
        _write_private(self.path, (json.dumps(body, indent=2) + "\n").encode("utf-8"))

    def add(self, name: str, role: str, password: str) -> None:
        """Add a user or replace their role and password."""
        if not USER_NAME.match(name):
            raise AuthError(f"user name {name!r}: letters, digits and _ . @ - only, at most 64")
        if role not in ROLES:
            raise AuthError(f"role {role!r}: one of {', '.join(ROLES)}")
        users = self.users()
        users[name] = User(name, role, hash_password(password))
        self._save(users)

    def remove(self, name: str) -> bool:
        """Remove a user; return False if there was none by that name."""
        users = self.users()
        if users.pop(name, None) is None:
            return False
        self._save(users)
        return True


def load_secret(data_dir: Path) -> bytes:
    """Return the session-signing secret from ``data_dir``, created (0600) if absent."""
    path = Path(data_dir) / SECRET_NAME
    text = private_secret(path, lambda: secrets.token_hex(32))
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        raise AuthError(f"{path}: not a hex secret (delete it to make a new one; every session ends)") from None
    if len(secret) < 16:
        raise AuthError(f"{path}: the secret is too short")
    return secret


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Session:
    """A logged-in user as a valid cookie carries them."""

    user: str
    role: str
    sid: str
    expires: float


class UserSource(Protocol):
    """Where sessions look their users up: the board's users file, or the centre's database (station/centre/auth.py)."""

    def get(self, name: str) -> User | None:
        """Return the user called ``name``, or None; raise :class:`AuthError` when the source cannot be read."""
        ...


class Sessions:
    """Sign and check session cookies; remember logged-out session ids until they would expire."""

    def __init__(self, secret: bytes, users: UserSource, ttl_s: float = 7 * 86400.0, wall: Callable[[], float] = time.time) -> None:
        self.secret = secret
        self.users = users
        self.ttl_s = ttl_s
        self.wall = wall
        self._revoked: dict[str, float] = {}
        self._lock = threading.Lock()

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self.secret, payload.encode("ascii"), hashlib.sha256).digest())

    def issue(self, user: User) -> tuple[str, Session]:
        """Return a new signed cookie value for ``user`` and the session it carries."""
        session = Session(user.name, user.role, secrets.token_hex(12), self.wall() + self.ttl_s)
        body = {"u": user.name, "r": user.role, "s": session.sid, "e": int(session.expires), "t": user.tag}
        payload = _b64(json.dumps(body, separators=(",", ":")).encode("utf-8"))
        return f"{payload}.{self._sign(payload)}", session

    def check(self, cookie: str | None) -> Session | None:
        """Return the session a cookie carries if its signature, expiry, user, role and password tag still hold; else None."""
        if not cookie or len(cookie) > 1024 or cookie.count(".") != 1:
            return None
        payload, mac = cookie.split(".")
        try:
            if not hmac.compare_digest(self._sign(payload), mac):
                return None
            body = json.loads(_unb64(payload))
        except (ValueError, TypeError, UnicodeEncodeError):
            return None
        if not isinstance(body, dict):
            return None
        name, role, sid, expires, tag = (body.get(k) for k in ("u", "r", "s", "e", "t"))
        if not (isinstance(name, str) and isinstance(sid, str) and isinstance(expires, int)) or expires <= self.wall():
            return None
        with self._lock:
            if sid in self._revoked:
                return None
        try:
            user = self.users.get(name)
        except AuthError:
            return None
        if user is None or user.role != role or not hmac.compare_digest(user.tag, str(tag)):
            return None
        return Session(name, user.role, sid, float(expires))

    def revoke(self, session: Session) -> None:
        """End ``session`` (logout): its cookie is refused until it would have expired anyway."""
        now = self.wall()
        with self._lock:
            for sid in [s for s, exp in self._revoked.items() if exp <= now]:
                del self._revoked[sid]
            self._revoked[session.sid] = session.expires


def cookie_header(value: str, *, secure: bool, max_age: int) -> str:
    """Return a ``Set-Cookie`` value for the session cookie (empty ``value`` + ``max_age=0`` clears it)."""
    parts = [f"{COOKIE}={value}", "Path=/", "HttpOnly", "SameSite=Strict", f"Max-Age={max_age}"]
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


def describe(users: UsersFile) -> list[dict[str, Any]]:
    """Return every user's name and role, sorted by name (never the hashes)."""
    return [{"user": u.name, "role": u.role} for u in sorted(users.users().values(), key=lambda u: u.name)]
