"""Helpers for the centre's big-screen tests: a seeded database (through the real batch writer), users per role, a tree.

``seed(url, day, rows)`` writes screening rows with the centre's own ``db.write_batch`` (the path the
ingest takes), creating the day partitions first; ``Seeded`` says what was written so a test can
compare the screen's totals with what it put in.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from station.board.auth import hash_password
from station.centre import db
from station.centre.parse import EventRow

UTC = ZoneInfo("UTC")
VIEWER = ("wall", "wall-screen-password")
TRACER = ("duty", "duty-officer-password")
ADMIN = ("chief", "chief-admin-password")

TREE = """# 测试区 — a test district
[district]
name = "测试区"

# the east side
[towns.east]
name = "城东街道"

[towns.east.grids.g1]
name = "网格一"

[towns.east.grids.g1.checkpoints.gate]
name = "东门卡口"
stations = ["gate-a/st-01", "gate-a/st-02"]  # both lanes of the east gate

[towns.west]
name = "西城街道"

[towns.west.grids.g2]
name = "网格二"

[towns.west.grids.g2.checkpoints.market]
name = "菜场卡口"
stations = ["market/*"]
"""

_ids = itertools.count(1)


@dataclass
class Seeded:
    """What :func:`seed` wrote: screenings per station, fevers per station, per hour."""

    screened: dict[tuple[str, str], int] = field(default_factory=dict)
    fevers: dict[tuple[str, str], int] = field(default_factory=dict)
    by_hour: dict[int, int] = field(default_factory=dict)
    alarms: list[tuple[str, str, str]] = field(default_factory=list)


def screening(site: str, station: str, ts: float, decision: str, colour: str | None, *, seq: int, kind: str = "screening") -> EventRow:
    """Return one screening (or its alarm copy) as the centre stores it."""
    fever = decision == "deny_fever"
    return EventRow(
        msg_id=f"m-{next(_ids)}",
        ts=ts,
        site=site,
        station=station,
        session=1,
        seq=seq,
        kind=kind,
        event_id=f"{site}-{station}-{seq}",
        decision=decision,
        reason="temperature_high" if fever else ("code_red" if decision == "deny_code" else None),
        temperature_c=38.4 if fever else 36.6,
        alarm=fever,
        code_colour=colour,
        decision_source="auto",
    )


def seed(url: str, day: dt.date, plan: Iterable[tuple[str, str, int, str, str | None, int]], seeded: Seeded | None = None) -> Seeded:
    """Write ``plan`` rows (site, station, hour, decision, colour, how many) on ``day`` (UTC); fevers also get an alarm copy."""
    seeded = seeded or Seeded()
    rows: list[EventRow] = []
    seqs: dict[tuple[str, str], int] = {}
    for site, station, hour, decision, colour, n in plan:
        for i in range(n):
            key = (site, station)
            seqs[key] = seqs.get(key, 0) + 1
            ts = dt.datetime.combine(day, dt.time(hour, (i * 7) % 60, i % 60), tzinfo=UTC).timestamp()
            row = screening(site, station, ts, decision, colour, seq=seqs[key] + 100000 * (day.toordinal() % 1000))
            rows.append(row)
            seeded.screened[key] = seeded.screened.get(key, 0) + 1
            seeded.by_hour[hour] = seeded.by_hour.get(hour, 0) + 1
            if decision == "deny_fever":
                seeded.fevers[key] = seeded.fevers.get(key, 0) + 1
                rows.append(screening(site, station, ts, decision, colour, seq=row.seq or 0, kind="alarm"))  # same seq, event_id, ts
            if decision in ("deny_fever", "deny_code"):
                seeded.alarms.append((site, station, row.event_id or ""))
    with db.connect(url) as conn:
        db.ensure_schema(conn)
        db.create_partitions(conn, [day], UTC)
        db.write_batch(conn, rows, [])
    return seeded


def add_users(url: str) -> None:
    """Add a viewer, a tracer and an admin (scrypt hashes, as ``station centre user add`` does)."""
    with db.connect(url) as conn:
        db.ensure_schema(conn)
        for (name, password), role in ((VIEWER, "viewer"), (TRACER, "tracer"), (ADMIN, "admin")):
            db.add_user(conn, name, role, hash_password(password))


def login(client: Any, who: tuple[str, str]) -> Any:
    """Log ``client`` in (form POST, as the login page does); return the response."""
    return client.post("/login", data={"user": who[0], "password": who[1]}, follow_redirects=False)
