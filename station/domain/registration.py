"""Outsider vehicle registration (外来车辆登记): the form an operator fills in, checked as hostile input. Pure.

``check_form`` takes whatever the operator page (or anyone who can reach it) sent and returns a
``RegistrationForm`` of clean values, or raises ``FormError`` naming the field, why, and what is
allowed. Nothing is corrected silently but separators: a plate is normalised as the vehicle lane
compares plates (``浙a·12345`` → ``浙A12345``), a phone number loses its spaces, dashes, brackets
and a leading ``+86`` / ``0086``. The phone number itself never leaves this module's caller but as a
keyed hash and its last four digits (station/codes/contact.py).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from station.domain.vehicles import normalise_plate

REASONS = ("visit", "delivery", "work", "official", "pickup")
"""Why an outsider comes in: visiting someone, a delivery, building or repair work, official business, picking up or dropping off."""

DESTINATION_MAX = 40
# A plate as the resident list accepts it: a CJK province / special character or a letter first,
# then letters, digits and the few CJK suffixes; 5 to 9 characters (station/store/residents.py).
_PLATE = re.compile(r"^[\u4e00-\u9fffA-Z0-9]{5,9}$")
# China: a mobile number (11 digits, 1[3-9]…) or a landline with its area code (0 + 9-11 digits).
_PHONE = re.compile(r"^(1[3-9][0-9]{9}|0[0-9]{9,11})$")
_PHONE_SEPARATORS = str.maketrans("", "", " -()\t")


class FormError(ValueError):
    """A field the registration cannot take: ``field``, ``reason`` (a word), the message and what is allowed."""

    def __init__(self, field: str, reason: str, message: str, allowed: list[str] | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.reason = reason
        self.allowed = allowed


@dataclass(frozen=True, slots=True)
class RegistrationForm:
    """The checked form: a normalised plate, a reason from :data:`REASONS`, a destination, a normalised phone number."""

    plate: str
    reason: str
    destination: str
    phone: str

    @property
    def phone_last4(self) -> str:
        """Return the last four digits of the phone number (all that is kept of it in clear)."""
        return self.phone[-4:]

    def __repr__(self) -> str:
        # The phone number must not reach a log through a repr.
        return (
            f"RegistrationForm(plate={self.plate!r}, reason={self.reason!r}, destination={self.destination!r}, phone=…{self.phone_last4})"
        )


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise FormError(field, "missing", f"{field} must be text")
    if len(value) > 200:
        raise FormError(field, "too_long", f"{field} is too long")
    return value


def check_plate_text(value: Any) -> str:
    """Return the plate normalised, or raise :class:`FormError` (field ``plate``)."""
    plate = normalise_plate(_text(value, "plate").strip())
    if not _PLATE.match(plate):
        raise FormError("plate", "bad_plate", "plate must be 5-9 letters, digits or Chinese characters, e.g. 浙A12345")
    return plate


def check_phone(value: Any) -> str:
    """Return the phone number as ASCII digits only, or raise :class:`FormError` (field ``phone``)."""
    text = _text(value, "phone").strip().translate(_PHONE_SEPARATORS)
    for prefix in ("+86", "0086"):
        if text.startswith(prefix):
            text = text[len(prefix) :]
            break
    # ASCII digits only: str.isdigit would also take '²' or Arabic-Indic digits.
    if not (text.isascii() and _PHONE.match(text)):
        raise FormError("phone", "bad_phone", "phone must be a mobile number (11 digits, 1…) or a landline with its area code (0…)")
    return text


def check_destination(value: Any) -> str:
    """Return the destination with its white space collapsed, or raise :class:`FormError` (field ``destination``)."""
    text = _text(value, "destination")
    if any(unicodedata.category(c)[0] == "C" and c not in " \t" for c in text):
        raise FormError("destination", "bad_destination", "destination must not contain control or formatting characters")
    text = " ".join(text.split())
    if not 1 <= len(text) <= DESTINATION_MAX:
        raise FormError("destination", "bad_destination", f"destination must be 1-{DESTINATION_MAX} characters, e.g. 3号楼 or 物业")
    return text


def check_form(plate: Any, reason: Any, destination: Any, phone: Any) -> RegistrationForm:
    """Return the checked form, or raise :class:`FormError` for the first field that is not acceptable."""
    clean_plate = check_plate_text(plate)
    if not isinstance(reason, str) or reason not in REASONS:
        raise FormError("reason", "bad_reason", f"reason must be one of {', '.join(REASONS)}", list(REASONS))
    return RegistrationForm(clean_plate, reason, check_destination(destination), check_phone(phone))
