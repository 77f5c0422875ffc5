"""Judging a resident ID card read: the keyed hash of the ID number, and the verdict the lane decides on.

A person without a smartphone swipes their ID card; the card reader (``drivers/idcard``) hands over
``CardFacts`` only: a keyed hash of the ID number, its masked form (first and last character) and the
validity dates. The ID number itself is never stored, sent or logged.

**The keyed hash.** HMAC-SHA256 under the centre's key (``idcard.key_file``: the key as hex, at least
16 bytes), over ``"idcard:" + ID number`` (ASCII, ``x`` upper-cased), hex. The centre indexes its
residents by the same hash, so the station can ask about a person without naming them. Without a
key file the hash is keyed with this station's own salt (``<data_dir>/codes/salt``): it still lets an
audit match a card shown again here, but the centre cannot look it up, and the verdict says so
(``no_centre_key``).

**The verdict** (a ``CodeVerdict`` with ``source = "idcard"``, judged by the lane like a health code):

* an expired card: ``unverifiable``/``card_expired`` (no look-up is made);
* no centre key: ``unverifiable``/``no_centre_key``; no link to the centre: ``online_unreachable``;
* the centre's signed answer (``station.codes.online``, on ``<base>/lookup/idcard``): a colour →
  ``valid`` with that colour (green → ``pass``, red → ``deny_code``, yellow → ``policy.yellow_code``);
  a person the centre does not know: ``unverifiable``/``idcard_unknown``; a timeout or an answer
  that is not signed: the look-up's own reason.

Every ``unverifiable`` ID card verdict is decided by ``policy.idcard_unknown`` (default
``manual_check``): staff look at the card.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from station.domain.model import CodeColour, CodeStatus, CodeVerdict
from station.domain.screening import JUDGED_UNSYNCED

log = logging.getLogger("station.codes.idcard")

SOURCE = "idcard"  # = station.domain.screening.IDCARD_SOURCE: the lane applies policy.idcard_unknown to it

MIN_KEY_BYTES = 16
HASH_CENTRE = "centre"
HASH_STATION = "station"


@dataclass(frozen=True, slots=True)
class CardFacts:
    """What leaves the driver from one card: a keyed hash and a masked form of the ID number, the validity dates.

    ``valid_to`` is None for a long-term card (长期). No name, address, nation or photo is ever here.
    """

    id_hash: str
    id_masked: str
    hash_key: str  # "centre": keyed with the centre's key (look-up possible) | "station": the station's own salt
    valid_from: dt.date
    valid_to: dt.date | None
    trace_ref: str | None = None  # the ID number under the district key (station.codes.trace_key): links checkpoints
    trace_key: str | None = None

    def expired(self, today: dt.date) -> bool:
        """Return True when the card's validity ended before ``today``."""
        return self.valid_to is not None and self.valid_to < today

    def as_record(self) -> dict[str, str | None]:
        """Return the facts as JSON-able text (dates ISO, None for a long-term card)."""
        return {
            "id_hash": self.id_hash,
            "id_masked": self.id_masked,
            "hash_key": self.hash_key,
            "valid_from": self.valid_from.isoformat(),
            "valid_to": self.valid_to.isoformat() if self.valid_to else None,
        }


def mask_id(id_number: str) -> str:
    """Return the masked form: the first and the last character, every other one ``*``."""
    if len(id_number) <= 2:
        return "*" * len(id_number)
    return id_number[0] + "*" * (len(id_number) - 2) + id_number[-1]


class KeyFileError(ValueError):
    """The centre key file exists but cannot be used (unreadable, not hex, too short)."""


def load_centre_key(path: Path) -> bytes:
    """Return the centre's ID-card key from ``path`` (hex text); raise KeyFileError with the reason."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{path}: cannot read the ID card key: {exc}") from exc
    try:
        key = bytes.fromhex(text)
    except ValueError as exc:
        raise KeyFileError(f"{path}: the ID card key is not hex") from exc
    if len(key) < MIN_KEY_BYTES:
        raise KeyFileError(f"{path}: the ID card key has {len(key)} bytes, at least {MIN_KEY_BYTES} are needed")
    return key


class IdHasher:
    """The keyed hash of ID numbers, under the centre's key (look-up possible) or the station's salt (not)."""

    def __init__(self, key: bytes, kind: str) -> None:
        if kind not in (HASH_CENTRE, HASH_STATION):
            raise ValueError(f"kind must be {HASH_CENTRE} or {HASH_STATION}")
        self._key = key
        self.kind = kind

    @classmethod
    def from_config(cls, key_file: str, data_dir: Path | None) -> IdHasher:
        """Return the hasher for ``idcard.key_file``; without one, keyed by the station's salt."""
        if key_file:
            return cls(load_centre_key(Path(key_file)), HASH_CENTRE)
        from station.codes.judge import station_salt

        return cls(station_salt(data_dir), HASH_STATION)

    def __call__(self, id_number: str) -> str:
        """Return the hex HMAC-SHA256 of ``"idcard:" + id_number``."""
        return hmac.new(self._key, b"idcard:" + id_number.encode("ascii", "replace"), hashlib.sha256).hexdigest()

    def __repr__(self) -> str:
        return f"IdHasher(kind={self.kind})"


class HashLookup(Protocol):
    """The centre look-up of one hash (``station.codes.online.OnlineVerifier.lookup``)."""

    def lookup(self, subject_hash: str, now_wall: float) -> CodeVerdict:
        """Ask the centre about ``subject_hash``; any failure is a verdict with a reason."""
        ...


def _today(now_wall: float) -> dt.date:
    # The card's dates are local calendar dates, as printed on it.
    return dt.datetime.fromtimestamp(now_wall).date()


def mark_unsynced(facts: CardFacts, verdict: CodeVerdict, clock_synced: bool) -> CodeVerdict:
    """Return ``verdict`` marked (policy.unsynced_clock_validity) when its dates were judged by an unsynchronised clock.

    Dated: the card's own end date decided it (expired, or valid and not long-term), or the centre's
    answer carried an expiry that was compared with the wall clock.
    """
    if clock_synced:
        return verdict
    dated = verdict.reason == "card_expired" or (
        verdict.status in (CodeStatus.VALID, CodeStatus.EXPIRED) and (facts.valid_to is not None or "expires" in verdict.detail)
    )
    return replace(verdict, detail={**verdict.detail, JUDGED_UNSYNCED: True}) if dated else verdict


def judge_card(facts: CardFacts, now_wall: float, lookup: HashLookup | None) -> CodeVerdict:
    """Return the verdict on one card read; never raises, never sends anything but the centre-keyed hash."""
    detail: dict[str, Any] = {
        "id_masked": facts.id_masked,
        "id_hash_key": facts.hash_key,
        "card_valid_to": facts.valid_to.isoformat() if facts.valid_to else "long_term",
    }
    if facts.trace_ref and facts.trace_key:
        detail.update(trace_ref=facts.trace_ref, trace_key=facts.trace_key)

    def verdict(status: CodeStatus, reason: str, code_colour: CodeColour | None = None, **more: Any) -> CodeVerdict:
        return CodeVerdict(status, code_colour, reason, SOURCE, facts.id_hash, {**detail, **more})

    if facts.expired(_today(now_wall)):
        return verdict(CodeStatus.UNVERIFIABLE, "card_expired")
    if facts.hash_key != HASH_CENTRE:
        return verdict(CodeStatus.UNVERIFIABLE, "no_centre_key")
    if lookup is None:
        return verdict(CodeStatus.UNVERIFIABLE, "online_unreachable")
    try:
        answer = lookup.lookup(facts.id_hash, now_wall)
    except Exception as exc:  # noqa: BLE001 - a look-up bug must end in manual_check, not a dead card reader
        log.error("ID card look-up failed error=%s", type(exc).__name__)
        return verdict(CodeStatus.UNVERIFIABLE, "lookup_error")
    more = {k: answer.detail[k] for k in ("lookup_ms", "issuer", "expires", "answer_auth") if k in answer.detail}
    if answer.status is CodeStatus.VALID and answer.colour is not None:
        return verdict(CodeStatus.VALID, "ok", answer.colour, colour=answer.colour.value, **more)
    if answer.status is CodeStatus.EXPIRED:
        return verdict(CodeStatus.EXPIRED, "status_expired", answer.colour, **more)
    if answer.status is CodeStatus.INVALID:
        return verdict(CodeStatus.UNVERIFIABLE, "idcard_unknown", **more)
    return verdict(CodeStatus.UNVERIFIABLE, answer.reason, **more)
