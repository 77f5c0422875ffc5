"""The operator PIN: stored only as a salted PBKDF2 hash, guarded against guessing.

``python -m station.web.pin`` asks for a PIN and prints the ``http.pin_hash`` value to put in
``station.toml``. The PIN itself is never written anywhere, logged or audited.
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

ITERATIONS = 120_000  # ~0.1 s on a Raspberry Pi 4: slow for a guesser, unnoticeable at the screen
ALGO = "pbkdf2_sha256"


def hash_pin(pin: str, *, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """``pbkdf2_sha256$<iterations>$<salt hex>$<hash hex>`` for ``pin`` (4-12 digits)."""
    check_pin_text(pin)
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", pin.encode("utf-8"), salt, iterations)
    return f"{ALGO}${iterations}${salt.hex()}${digest.hex()}"


def verify_pin(pin: str, stored: str) -> bool:
    """Does ``pin`` match the stored hash? False for an empty or malformed hash (nothing matches)."""
    try:
        algo, iterations, salt_hex, digest_hex = stored.split("$")
        if algo != ALGO:
            return False
        digest = hashlib.pbkdf2_hmac("sha256", pin.encode("utf-8"), bytes.fromhex(salt_hex), int(iterations))
    except ValueError:
        return False
    return hmac.compare_digest(digest.hex(), digest_hex)


def check_pin_text(pin: str) -> None:
    if not (pin.isdigit() and pin.isascii() and 4 <= len(pin) <= 12):
        raise ValueError("the operator PIN must be 4 to 12 digits")


class PinGuard:
    """Locks PIN actions after ``max_failures`` wrong PINs in a row (for ``lock_s``) and allows at
    most ``per_min`` overrides in any 60 s. One guard per station: the kiosk is one screen."""

    def __init__(self, max_failures: int, lock_s: float, per_min: int, clock: Callable[[], float]) -> None:
        self.max_failures = max_failures
        self.lock_s = lock_s
        self.per_min = per_min
        self.clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._locked_until = 0.0
        self._overrides: deque[float] = deque()

    def locked_for(self) -> float:
        """Seconds the lock still holds (0 = not locked)."""
        with self._lock:
            return max(0.0, self._locked_until - self.clock())

    def failed(self) -> int:
        """Count a wrong PIN; returns how many attempts are left before the lock (0 = now locked)."""
        with self._lock:
            self._failures += 1
            if self._failures >= self.max_failures:
                self._failures = 0
                self._locked_until = self.clock() + self.lock_s
                return 0
            return self.max_failures - self._failures

    def succeeded(self) -> None:
        with self._lock:
            self._failures = 0

    def take_override(self) -> bool:
        """Use one override from the per-minute budget; False when it is spent."""
        now = self.clock()
        with self._lock:
            while self._overrides and self._overrides[0] <= now - 60.0:
                self._overrides.popleft()
            if len(self._overrides) >= self.per_min:
                return False
            self._overrides.append(now)
            return True


def main() -> None:
    pin = getpass.getpass("operator PIN (4-12 digits): ")
    if pin != getpass.getpass("again: "):
        sys.exit("the two PINs differ")
    try:
        print(f'pin_hash = "{hash_pin(pin)}"')
    except ValueError as exc:
        sys.exit(str(exc))


if __name__ == "__main__":
    main()
