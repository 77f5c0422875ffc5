"""The operator PIN: stored only as a salted PBKDF2 hash, guarded against guessing.

``python -m station.web.pin`` asks for a PIN and prints the ``http.pin_hash`` value to put in
``station.toml``. The PIN itself is never written anywhere, logged or audited. New PINs have at
least 6 digits; an older 4-5 digit PIN still verifies, and the operator page's status and the log
say to replace it (the hash cannot tell its length, so this is noticed at its first use).
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import secrets
import sys
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

ITERATIONS = 120_000  # ~0.1 s on a Raspberry Pi 4: slow for a guesser, unnoticeable at the screen
ALGO = "pbkdf2_sha256"


PIN_MIN_DIGITS = 6
PIN_MIN_DIGITS_LEGACY = 4  # PINs set before the 6-digit rule still verify


def hash_pin(pin: str, *, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """Return ``pbkdf2_sha256$<iterations>$<salt hex>$<hash hex>`` for a new ``pin`` (6-12 digits)."""
    check_pin_text(pin)
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", pin.encode("utf-8"), salt, iterations)
    return f"{ALGO}${iterations}${salt.hex()}${digest.hex()}"


def verify_pin(pin: str, stored: str) -> bool:
    """Return whether ``pin`` matches the stored hash; False for an empty or malformed hash (nothing matches)."""
    try:
        algo, iterations, salt_hex, digest_hex = stored.split("$")
        if algo != ALGO or not 1 <= int(iterations) <= 10_000_000 or len(pin) > 64:
            return False
        digest = hashlib.pbkdf2_hmac("sha256", pin.encode("utf-8"), bytes.fromhex(salt_hex), int(iterations))
    except ValueError:
        return False
    return hmac.compare_digest(digest.hex(), digest_hex)


def check_pin_text(pin: str) -> None:
    """Refuse a new PIN that is not 6 to 12 ASCII digits."""
    if not (pin.isdigit() and pin.isascii() and PIN_MIN_DIGITS <= len(pin) <= 12):
        raise ValueError(f"the operator PIN must be {PIN_MIN_DIGITS} to 12 digits")


def pin_is_short(pin: str) -> bool:
    """Return whether a PIN that verified is shorter than new PINs may be (set before the 6-digit rule)."""
    return len(pin) < PIN_MIN_DIGITS


@dataclass(frozen=True, slots=True)
class Attempt:
    """One PIN attempt's slot: ``granted`` = the PIN may be checked; else the guard is locked for ``locked_s``."""

    granted: bool
    left: int = 0  # attempts left before the lock if this one is wrong (0 = this one locked it)
    locked_s: float = 0.0


class PinGuard:
    """Lock PIN actions after ``max_failures`` wrong PINs in a row; allow at most ``per_min`` overrides in any 60 s.

    One guard per station: the kiosk is one screen.

    An attempt takes its slot under the lock *before* the PIN is hashed (counted as a failure until
    it proves right), so parallel requests cannot each get a guess while the first is hashing. Each
    lockout lasts twice the one before (``lock_s``, 2×, 4×… up to ``max_lock_s``); a right PIN, or
    a quiet ``max_lock_s`` with no wrong PIN, starts again from ``lock_s``.
    """

    def __init__(self, max_failures: int, lock_s: float, per_min: int, clock: Callable[[], float], max_lock_s: float | None = None) -> None:
        self.max_failures = max_failures
        self.lock_s = lock_s
        self.max_lock_s = max(lock_s, max_lock_s if max_lock_s is not None else lock_s * 64)
        self.per_min = per_min
        self.clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._lockouts = 0
        self._last_failure = float("-inf")
        self._locked_until = 0.0
        self._overrides: deque[float] = deque()
        self.evaluated = 0  # attempts granted a check (tests and status)

    def locked_for(self) -> float:
        """Return the seconds the lock still holds (0 = not locked)."""
        with self._lock:
            return max(0.0, self._locked_until - self.clock())

    def begin(self) -> Attempt:
        """Take one attempt's slot (before hashing): counted as a failure until :meth:`succeeded`."""
        with self._lock:
            now = self.clock()
            if now < self._locked_until:
                return Attempt(False, 0, self._locked_until - now)
            if now - self._last_failure > self.max_lock_s:
                self._lockouts = 0  # quiet long enough: the next lock is short again
            self._last_failure = now
            self._failures += 1
            self.evaluated += 1
            if self._failures >= self.max_failures:
                self._failures = 0
                self._lockouts += 1
                self._locked_until = now + self.lock_duration(self._lockouts)
                return Attempt(True, 0, self._locked_until - now)
            return Attempt(True, self.max_failures - self._failures)

    def lock_duration(self, lockouts: int) -> float:
        """Return how long the ``lockouts``-th lock in a row lasts: doubling from ``lock_s`` up to ``max_lock_s``."""
        return min(self.max_lock_s, self.lock_s * 2.0 ** min(max(lockouts - 1, 0), 30))

    def failed(self) -> int:
        """Count a wrong PIN without a slot taken first (legacy callers); return attempts left (0 = now locked)."""
        attempt = self.begin()
        return attempt.left if attempt.granted else 0

    def succeeded(self) -> None:
        """Record that the attempt's PIN was right: give its slot back, clear the failure count and lock history."""
        with self._lock:
            self._failures = 0
            self._lockouts = 0
            self._locked_until = 0.0

    def take_override(self) -> bool:
        """Use one override from the per-minute budget; return False when it is spent."""
        now = self.clock()
        with self._lock:
            while self._overrides and self._overrides[0] <= now - 60.0:
                self._overrides.popleft()
            if len(self._overrides) >= self.per_min:
                return False
            self._overrides.append(now)
            return True


def main() -> None:
    """Ask for a new PIN twice and print the ``http.pin_hash`` line for it."""
    pin = getpass.getpass(f"operator PIN ({PIN_MIN_DIGITS}-12 digits): ")
    if pin != getpass.getpass("again: "):
        sys.exit("the two PINs differ")
    try:
        print(f'pin_hash = "{hash_pin(pin)}"')
    except ValueError as exc:
        sys.exit(str(exc))


if __name__ == "__main__":
    main()
