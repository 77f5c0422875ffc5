"""The keyed hash of a contact phone number given at an outsider registration (外来车辆登记).

Like the ID card number (``station.codes.idcard.IdHasher``): HMAC-SHA256 under the centre's key
(``idcard.key_file``, hex, at least 16 bytes) when there is one, so the centre can match a number it
is given (e.g. a contact tracing request) without the station ever storing or sending it; without a
key, under the station's own salt (``<data_dir>/codes/salt``): a number given again here still
matches, nowhere else. The message is ``"phone:" + digits`` (a different label from the ID card's, so
a phone number can never collide with an ID number's hash). Only the hash, which key made it
(``hash_key``) and the last four digits are kept.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from station.codes.idcard import HASH_CENTRE, HASH_STATION, load_centre_key


class PhoneHasher:
    """The keyed hash of phone numbers, under the centre's key or the station's salt."""

    def __init__(self, key: bytes, kind: str) -> None:
        if kind not in (HASH_CENTRE, HASH_STATION):
            raise ValueError(f"kind must be {HASH_CENTRE} or {HASH_STATION}")
        self._key = key
        self.kind = kind

    @classmethod
    def from_config(cls, key_file: str, data_dir: Path | None) -> PhoneHasher:
        """Return the hasher for ``idcard.key_file``; without one, keyed by the station's salt."""
        if key_file:
            return cls(load_centre_key(Path(key_file)), HASH_CENTRE)
        from station.codes.judge import station_salt

        return cls(station_salt(data_dir), HASH_STATION)

    def __call__(self, digits: str) -> str:
        """Return the hex HMAC-SHA256 of ``"phone:" + digits`` (digits as checked by station.domain.registration)."""
        return hmac.new(self._key, b"phone:" + digits.encode("ascii", "replace"), hashlib.sha256).hexdigest()

    def __repr__(self) -> str:
        return f"PhoneHasher(kind={self.kind})"
