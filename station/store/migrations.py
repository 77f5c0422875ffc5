"""Schema versions of the event database and the steps between them.

The schema is versioned with ``PRAGMA user_version`` and an ordered list of migrations. An older
file is copied aside (``<db>.pre-v<N>.bak``, via the SQLite backup API) before it is migrated, and
a file written by a newer release is refused rather than guessed at.

Each migration moves the schema from version i to i + 1 and runs inside the transaction that also
sets ``user_version``; never edit one that has shipped, append a new one.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

from station.ops.fileio import fsync_path
from station.store.errors import SchemaTooNewError, StoreError

log = logging.getLogger("station.store.migrations")


def _migrate_v1(db: sqlite3.Connection) -> None:
    """Create the initial schema: events, outbox, gate actions, meta counters."""
    statements = [
        """
        CREATE TABLE events (
          id            INTEGER PRIMARY KEY,
          event_id      TEXT NOT NULL UNIQUE,
          ts            REAL NOT NULL,              -- unix time of the decision
          decision      TEXT NOT NULL,
          reason        TEXT NOT NULL,
          alarm         INTEGER NOT NULL,
          temperature_c REAL,
          code_colour   TEXT,
          lane          TEXT NOT NULL,
          record        TEXT NOT NULL,              -- JSON of ScreeningEvent.as_record()
          created_at    REAL NOT NULL               -- unix time the row was written
        )
        """,
        "CREATE INDEX events_ts ON events(ts)",
        "CREATE INDEX events_decision ON events(decision)",
        # Exactly the shape in architecture.md §2 ("What this project should take from it").
        """
        CREATE TABLE outbox (
          id          INTEGER PRIMARY KEY,          -- local order
          msg_id      TEXT NOT NULL UNIQUE,         -- UUIDv7/ULID, also inside the payload (idempotency key)
          topic       TEXT NOT NULL,
          payload     BLOB NOT NULL,
          qos         INTEGER NOT NULL DEFAULT 1,
          priority    INTEGER NOT NULL DEFAULT 5,   -- 0-1: lifecycle/alarms, exempt from capacity
          created_at  INTEGER NOT NULL,             -- unix ms + clock_synced flag in payload
          attempts    INTEGER NOT NULL DEFAULT 0,
          sent_at     INTEGER, acked_at INTEGER, dropped_at INTEGER, last_error TEXT
        )
        """,
        "CREATE INDEX outbox_pending ON outbox(acked_at, dropped_at, priority, id)",
        # No foreign key to events: a gate action must be logged even when its event could not
        # be (the gate falls back to its safe state after a store error and that is audited too).
        """
        CREATE TABLE gate_actions (
          id         INTEGER PRIMARY KEY,
          event_id   TEXT NOT NULL,
          action     TEXT NOT NULL,
          executed   INTEGER NOT NULL,
          reason     TEXT NOT NULL,
          t_mono     REAL NOT NULL,                 -- monotonic time the gate reported
          created_at REAL NOT NULL
        )
        """,
        "CREATE INDEX gate_actions_event_id ON gate_actions(event_id)",
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)",
        "INSERT INTO meta(key, value) VALUES ('seq', '0'), ('session', '0')",
    ]
    for sql in statements:
        db.execute(sql)


def _migrate_v2(db: sqlite3.Connection) -> None:
    """Add vehicle events (resident / outsider plates) as durable records, like screenings."""
    statements = [
        """
        CREATE TABLE vehicles (
          id          INTEGER PRIMARY KEY,
          vehicle_id  TEXT NOT NULL UNIQUE,
          ts          REAL NOT NULL,                -- unix time of the event
          kind        TEXT NOT NULL,                -- resident_vehicle | outsider_vehicle
          plate       TEXT NOT NULL,
          confidence  REAL,
          record      TEXT NOT NULL,                -- JSON as published under "vehicle"
          created_at  REAL NOT NULL
        )
        """,
        "CREATE INDEX vehicles_ts ON vehicles(ts)",
        "CREATE INDEX vehicles_plate ON vehicles(plate)",
    ]
    for sql in statements:
        db.execute(sql)


def _migrate_data_audit(db: sqlite3.Connection) -> None:
    """Add the audit trail of deletions of personal data (``stationctl data erase``, retention purges)."""
    db.execute(
        """
        CREATE TABLE data_audit (
          id        INTEGER PRIMARY KEY,
          ts        REAL NOT NULL,                  -- unix time of the deletion
          actor     TEXT NOT NULL,                  -- 'retention' or 'stationctl data erase (user …)'
          criteria  TEXT NOT NULL,                  -- JSON: what was asked (range, event ids, policy)
          counts    TEXT NOT NULL,                  -- JSON: rows deleted per table
          note      TEXT NOT NULL DEFAULT ''
        )
        """
    )


def _migrate_operator_actions(db: sqlite3.Connection) -> None:
    """Add what operators did at the lane's touch screen (station/web).

    Alarm acknowledgements, manual overrides and every refused attempt (wrong PIN, locked,
    rate-limited).
    """
    db.execute(
        """
        CREATE TABLE operator_actions (
          id         INTEGER PRIMARY KEY,
          ts         REAL NOT NULL,                 -- unix time of the request
          action     TEXT NOT NULL,                 -- ack | open_gate | recheck
          operator   TEXT NOT NULL,                 -- who said they were (the PIN proves the role)
          event_id   TEXT,                          -- the screening it concerns (ack, recheck)
          ok         INTEGER NOT NULL,              -- 1 carried out, 0 refused
          reason     TEXT NOT NULL,                 -- ok | wrong_pin | locked | rate_limited | ...
          detail     TEXT NOT NULL DEFAULT '{}'     -- JSON: clinical reading, gate audit id, ...
        )
        """
    )
    db.execute("CREATE INDEX operator_actions_event ON operator_actions(event_id, action)")


def _migrate_command_audit(db: sqlite3.Connection) -> None:
    """Add the audit of remote commands over MQTT (station.link.commands).

    Every signed command carried out or refused, and refused ones (unsigned, forged, replayed, …)
    as far as the audit rate limit lets them in.
    """
    db.execute(
        """
        CREATE TABLE command_audit (
          id         INTEGER PRIMARY KEY,
          ts         REAL NOT NULL,                 -- unix time the station judged the request
          command    TEXT NOT NULL,                 -- cmd/<name>
          request_id TEXT,                          -- the request's id (unverified when refused)
          ok         INTEGER NOT NULL,              -- 1 carried out, 0 refused
          reason     TEXT NOT NULL,                 -- ok | unsigned | bad_signature | replay | ...
          signer     TEXT,                          -- signed "by (key <key id>)"; null when not verified
          body       TEXT NOT NULL                  -- the request as received, capped (2 KiB)
        )
        """
    )


def _migrate_event_crops(db: sqlite3.Connection) -> None:
    """Add the crops kept with an event (face JPEG, thermal PNG under ``<data_dir>/crops``; station.lane.capture).

    A side table, not a column: the event's record is what MQTT carries, and a crop never goes there.
    """
    db.execute(
        """
        CREATE TABLE event_crops (
          event_id   TEXT NOT NULL,
          kind       TEXT NOT NULL,                 -- face | thermal
          file       TEXT NOT NULL,                 -- file name under <data_dir>/crops
          bytes      INTEGER NOT NULL,
          created_at REAL NOT NULL,                 -- unix time written (retention.face_crops_days)
          PRIMARY KEY (event_id, kind)
        )
        """
    )
    db.execute("CREATE INDEX event_crops_created ON event_crops(created_at)")


def _migrate_visits_registrations(db: sqlite3.Connection) -> None:
    """Add vehicle visits (a vehicle and its occupants' screenings as one record) and outsider registrations.

    ``visit_occupants`` links screening events to the visit they happened in (by visit id), so an
    erased or purged event can be found from its visit and back. A registration keeps the contact
    phone only as a keyed hash and its last four digits (station/web/registration.py).
    """
    statements = [
        """
        CREATE TABLE visits (
          id              INTEGER PRIMARY KEY,
          visit_id        TEXT NOT NULL UNIQUE,
          ts              REAL NOT NULL,            -- unix time the vehicle was first seen
          closed_ts       REAL NOT NULL,            -- unix time the visit closed (vehicle gone)
          kind            TEXT NOT NULL,            -- resident_vehicle | outsider_vehicle | unread_vehicle
          plate           TEXT,                     -- null when the plate was never read
          occupants       INTEGER NOT NULL,
          fever           INTEGER NOT NULL,
          denied          INTEGER NOT NULL,
          flagged         INTEGER NOT NULL,         -- 1 when any occupant was denied
          registration_id TEXT,                     -- the outsider registration recognised, if any
          record          TEXT NOT NULL,            -- JSON as published under "visit"
          created_at      REAL NOT NULL
        )
        """,
        "CREATE INDEX visits_ts ON visits(ts)",
        "CREATE INDEX visits_plate ON visits(plate)",
        """
        CREATE TABLE visit_occupants (
          visit_id  TEXT NOT NULL,
          event_id  TEXT NOT NULL,                  -- a screening in events
          PRIMARY KEY (visit_id, event_id)
        )
        """,
        "CREATE INDEX visit_occupants_event ON visit_occupants(event_id)",
        """
        CREATE TABLE registrations (
          id              INTEGER PRIMARY KEY,
          registration_id TEXT NOT NULL UNIQUE,
          ts              REAL NOT NULL,            -- unix time of the registration
          plate           TEXT NOT NULL,            -- normalised
          reason          TEXT NOT NULL,
          destination     TEXT NOT NULL,
          phone_hash      TEXT NOT NULL,            -- HMAC-SHA256 under the centre key or the station salt
          phone_last4     TEXT NOT NULL,
          operator        TEXT NOT NULL,
          vehicle_id      TEXT,                     -- the outsider vehicle event it was made for, if any
          record          TEXT NOT NULL,            -- JSON as published under "registration"
          created_at      REAL NOT NULL
        )
        """,
        "CREATE INDEX registrations_plate ON registrations(plate, ts)",
        "CREATE INDEX registrations_ts ON registrations(ts)",
    ]
    for sql in statements:
        db.execute(sql)


def _migrate_clock_corrections(db: sqlite3.Connection) -> None:
    """Add clock corrections: the offset to add to records stamped while the wall clock was not synchronised.

    A side table, never a rewrite: the records keep the ``ts`` they were stamped with and
    ``clock_synced`` false; a correction names them (``seq`` range, ids) and the offset found once the
    clock was synchronised (station/ops/clock.py).
    """
    db.execute(
        """
        CREATE TABLE clock_corrections (
          id            INTEGER PRIMARY KEY,
          correction_id TEXT NOT NULL UNIQUE,
          offset_ms     INTEGER NOT NULL,           -- add to the records' ts (ms): true time = ts + offset_ms / 1000
          seq_first     INTEGER,                    -- seq range of the corrected records (null: late records, ids only)
          seq_last      INTEGER,
          records       INTEGER NOT NULL,           -- how many records it corrects
          record        TEXT NOT NULL,              -- JSON as published on events/clock (ids included)
          created_at    REAL NOT NULL               -- unix time written (the clock was synchronised by then)
        )
        """
    )


def _migrate_seq_messages(db: sqlite3.Connection) -> None:
    """Keep each numbered record's messages (``msg_id``, topic, envelope) so a ``seq`` range can be sent again.

    The outbox row goes once the broker acknowledged it; a broker that then lost it (a restart
    dropping a shared subscription, docs/centre.md) leaves a gap only a re-send can fill, and the
    centre drops what it already has by ``msg_id`` only if the re-sent message keeps it. ``head`` is
    the published JSON up to the record (``payload = head + record + "}"``), so the record itself is
    not stored twice. A record deleted by retention or an erase takes its rows with it (cascade).
    """
    statements = [
        """
        CREATE TABLE seq_messages (
          id               INTEGER PRIMARY KEY,
          seq              INTEGER NOT NULL,
          msg_id           TEXT NOT NULL,
          topic            TEXT NOT NULL,
          head             TEXT NOT NULL,           -- the payload's JSON before the record's own
          event_row        INTEGER REFERENCES events(id) ON DELETE CASCADE,
          vehicle_row      INTEGER REFERENCES vehicles(id) ON DELETE CASCADE,
          visit_row        INTEGER REFERENCES visits(id) ON DELETE CASCADE,
          registration_row INTEGER REFERENCES registrations(id) ON DELETE CASCADE
        )
        """,
        "CREATE INDEX seq_messages_seq ON seq_messages(seq)",
        # The cascades look rows up by these; partial: each row names one record table.
        "CREATE INDEX seq_messages_event ON seq_messages(event_row) WHERE event_row IS NOT NULL",
        "CREATE INDEX seq_messages_vehicle ON seq_messages(vehicle_row) WHERE vehicle_row IS NOT NULL",
        "CREATE INDEX seq_messages_visit ON seq_messages(visit_row) WHERE visit_row IS NOT NULL",
        "CREATE INDEX seq_messages_registration ON seq_messages(registration_row) WHERE registration_row IS NOT NULL",
    ]
    for sql in statements:
        db.execute(sql)


Migration = Callable[[sqlite3.Connection], None]
MIGRATIONS: Sequence[Migration] = (
    _migrate_v1,
    _migrate_v2,
    _migrate_data_audit,
    _migrate_operator_actions,
    _migrate_command_audit,
    _migrate_event_crops,
    _migrate_visits_registrations,
    _migrate_clock_corrections,
    _migrate_seq_messages,
)
"""Ordered migrations; ``MIGRATIONS[i]`` upgrades ``user_version`` i to i + 1."""

SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(conn: sqlite3.Connection) -> int:
    """Return the schema version recorded in the file (``PRAGMA user_version``)."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def require_current(conn: sqlite3.Connection, path: Path) -> None:
    """Refuse a file a reader cannot use as it is: one not at :data:`SCHEMA_VERSION`."""
    version = schema_version(conn)
    if version != SCHEMA_VERSION:
        raise StoreError(
            f"{path} has schema version {version}, this release reads version {SCHEMA_VERSION}; start the daemon once to migrate it"
        )


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the file at ``path`` to :data:`SCHEMA_VERSION`, backing it up first if it has content.

    Each step commits on its own, so an interrupted upgrade resumes at the next start from the last
    version reached. Raises :class:`SchemaTooNewError` for a file written by a newer release.
    """
    version = schema_version(conn)
    if version > SCHEMA_VERSION:
        raise SchemaTooNewError(
            f"{path} has schema version {version}, but this release only knows versions up "
            f"to {SCHEMA_VERSION}: it was written by a newer release. Refusing to open it "
            f"(downgrades are not supported). Reinstall the newer release, or restore a "
            f"'{path.name}.pre-v*.bak' copy taken before that upgrade."
        )
    if version == SCHEMA_VERSION:
        return
    has_content = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] > 0
    if has_content:
        copy = backup(conn, path, SCHEMA_VERSION)
        log.warning("migrating %s from schema v%d to v%d; backup at %s", path, version, SCHEMA_VERSION, copy)
    for target in range(version + 1, SCHEMA_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            MIGRATIONS[target - 1](conn)
            # user_version lives in the file header and is written by this transaction.
            conn.execute(f"PRAGMA user_version={target}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        log.info("%s: schema now at v%d", path, target)


def backup(conn: sqlite3.Connection, path: Path, target: int) -> Path:
    """Copy the database aside as ``<name>.pre-v<target>.bak`` and return the copy's path.

    The SQLite backup API gives a consistent copy even with a WAL not yet checkpointed.
    """
    dest = path.with_name(f"{path.name}.pre-v{target}.bak")
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.unlink(missing_ok=True)
    out = sqlite3.connect(tmp)
    try:
        conn.backup(out)
    finally:
        out.close()
    fsync_path(tmp)
    os.replace(tmp, dest)  # never leave a half-written file under the final name
    fsync_path(dest.parent)
    return dest
