"""Who may use the centre's pages: users and roles in PostgreSQL, the board's scrypt hashes and signed session cookies.

* Users are ``centre_users`` rows (``station centre user add NAME --role …``); the hash is the
  board's (``station/board/auth.py``: scrypt, constant-time compare, same work for unknown names).
* Roles, each including the one before: ``viewer`` sees the screen; ``tracer`` also acknowledges and
  closes alarms (and, with the tracing pages, queries); ``admin`` also edits the district tree.
* Sessions are the board's signed cookies (user, role, expiry, random id, a tag of the password
  hash: a new password or a removed user ends them at the next request), under the cookie name
  ``centre_session`` so a board on the same host keeps its own. The signing secret is made once
  and kept in ``centre_meta``, logged-out ids in ``centre_sessions_revoked``: every replica honours
  a login and a logout made on another.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

import psycopg

from station.board.auth import USER_NAME, AuthError, Session, Sessions, User, hash_password, verify_password
from station.centre.screen import Pool

log = logging.getLogger("station.centre.auth")

COOKIE = "centre_session"
RANK = {"viewer": 0, "tracer": 1, "admin": 2}


def allowed(role: str, need: str) -> bool:
    """Return whether ``role`` includes ``need`` (viewer < tracer < admin)."""
    return RANK.get(role, -1) >= RANK[need]


class CentreUsers:
    """The ``centre_users`` table as the session signer's user source."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        # A fixed dummy hash: an unknown user costs the same scrypt as a known one (no user probing by timing).
        self._dummy = hash_password(secrets.token_hex(16))

    def get(self, name: str) -> User | None:
        """Return the user called ``name`` or None; raise :class:`AuthError` when the database cannot be read."""
        if not USER_NAME.match(name):
            return None
        try:
            with self.pool.connection() as conn:
                row = conn.execute("SELECT name, role, password FROM centre_users WHERE name = %s", (name,)).fetchone()
        except psycopg.Error as exc:
            raise AuthError(f"centre users unreadable: {str(exc).strip()[:200]}") from None
        return User(str(row[0]), str(row[1]), str(row[2])) if row else None

    def authenticate(self, name: str, password: str) -> User | None:
        """Return the user if ``password`` is theirs, else None (same work for unknown names)."""
        user = self.get(name)
        ok = verify_password(password, user.password if user else self._dummy)
        return user if ok and user is not None else None


class CentreSessions(Sessions):
    """The board's signed sessions with logouts shared through the database."""

    def __init__(self, secret: bytes, users: CentreUsers, **kw: Any) -> None:
        super().__init__(secret, users, **kw)
        self.pool = users.pool

    def check(self, cookie: str | None) -> Session | None:
        """Return the session if the cookie is valid and not logged out on any replica."""
        session = super().check(cookie)
        if session is None:
            return None
        try:
            with self.pool.connection() as conn:
                gone = conn.execute("SELECT 1 FROM centre_sessions_revoked WHERE sid = %s", (session.sid,)).fetchone()
        except psycopg.Error:
            return None
        return None if gone else session

    def revoke(self, session: Session) -> None:
        """End ``session`` everywhere (its id is refused by every replica until it would have expired)."""
        super().revoke(session)
        with self.pool.connection() as conn:
            conn.execute("DELETE FROM centre_sessions_revoked WHERE expires < now()")
            conn.execute(
                "INSERT INTO centre_sessions_revoked (sid, expires) VALUES (%s, to_timestamp(%s)) ON CONFLICT DO NOTHING",
                (session.sid, session.expires),
            )


def cookie_header(value: str, *, secure: bool, max_age: int) -> str:
    """Return a ``Set-Cookie`` value for the centre's session cookie (empty ``value`` + ``max_age=0`` clears it)."""
    parts = [f"{COOKIE}={value}", "Path=/", "HttpOnly", "SameSite=Strict", f"Max-Age={max_age}"]
    if secure:
        parts.append("Secure")
    return "; ".join(parts)
