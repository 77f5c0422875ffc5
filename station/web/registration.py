"""Outsider registrations made on the operator page: the record, its store write, what the page shows.

``Registrar.register`` turns a checked form (station/domain/registration.py) into the record that is
stored and sent on ``events/registration``: the plate, reason, destination, the contact phone as a
keyed hash (station/codes/contact.py) plus its last four digits, the operator, the outsider vehicle
event it was made for (when the plate is the one the lane just saw) and until when it is recognised
(``vehicle.registration_valid_h``). The phone number itself is dropped here.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from station.codes.contact import PhoneHasher
from station.domain.registration import RegistrationForm
from station.domain.vehicles import OUTSIDER
from station.store import visits

if TYPE_CHECKING:
    from station.store.events import SqliteEventStore

OUTSIDER_RECENT_S = 600.0
"""An outsider vehicle seen this recently is offered on the page for registration (its plate pre-filled)."""
PUBLIC_KEYS = ("registration_id", "ts", "plate", "reason", "destination", "phone_last4", "operator", "vehicle_id", "valid_until")
"""What the operator page is shown of a registration (never the phone's hash)."""


class Registrar:
    """Register outsider vehicles into the store; answer what the operator page shows of them."""

    def __init__(
        self,
        store: SqliteEventStore,
        hasher: PhoneHasher,
        *,
        valid_h: float = 24.0,
        wall: Callable[[], float] = time.time,
        clock_synced: Callable[[], bool | None] = lambda: None,
        annotate: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self.store = store
        self.annotate = annotate  # adds the plate's district-key reference (station.codes.trace_key), when one is set
        self.hasher = hasher
        self.valid_h = valid_h
        self.wall = wall
        self.clock_synced = clock_synced

    def register(self, form: RegistrationForm, operator: str) -> dict[str, Any]:
        """Store the registration and queue its ``events/registration`` message (one transaction); return the record."""
        now = self.wall()
        seen = self.latest_outsider()
        record = {
            "registration_id": uuid.uuid4().hex,
            "type": "outsider_registration",
            "ts": now,
            "clock_synced": self.clock_synced(),
            "plate": form.plate,
            "reason": form.reason,
            "destination": form.destination,
            "phone_hash": self.hasher(form.phone),
            "phone_hash_key": self.hasher.kind,
            "phone_last4": form.phone_last4,
            "operator": operator,
            "vehicle_id": seen["vehicle_id"] if seen is not None and seen.get("plate") == form.plate else None,
            "valid_until": now + self.valid_h * 3600.0,
        }
        if self.annotate is not None:
            record = self.annotate(record)
        visits.record_registration(self.store, record)
        return record

    def latest_outsider(self) -> dict[str, Any] | None:
        """Return the newest outsider vehicle event of the last :data:`OUTSIDER_RECENT_S` (plate, ts, vehicle_id), or None."""
        since = self.wall() - OUTSIDER_RECENT_S
        for v in reversed(self.store.vehicles_tail(20)):
            ts = v.get("ts")
            if v.get("type") == OUTSIDER and isinstance(ts, (int, float)) and ts >= since:
                return {"plate": v.get("plate"), "ts": ts, "vehicle_id": v.get("vehicle_id")}
        return None

    def recent(self, since_ts: float, n: int = 10) -> list[dict[str, Any]]:
        """Return the registrations made since ``since_ts``, newest first, as the page shows them."""
        return [{k: r.get(k) for k in PUBLIC_KEYS} for r in visits.registrations_tail(self.store, n, since_ts)]
