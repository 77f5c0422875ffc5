"""Counters kept in the ``meta`` table (``seq``, ``session``, ``outbox_dropped``).

Each function runs on the store's connection inside the caller's lock (and transaction, for a bump).
"""

from __future__ import annotations

import sqlite3

from station.store.errors import StoreError


def _missing(conn: sqlite3.Connection, key: str) -> StoreError:
    """Build the error for a counter the schema should have created."""
    # The main database's file, for the message: an operator needs to know which file is damaged.
    path = next((row[2] for row in conn.execute("PRAGMA database_list") if row[1] == "main"), "")
    return StoreError(f"meta key {key!r} missing from {path}")


def meta_int(conn: sqlite3.Connection, key: str) -> int:
    """Return the integer value of one ``meta`` counter."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    if row is None:
        raise _missing(conn, key)
    return int(row[0])


def bump_meta(conn: sqlite3.Connection, key: str) -> int:
    """Add one to a ``meta`` counter and return the new value."""
    # fetchall(): a RETURNING statement is only complete once its rows are consumed.
    rows = conn.execute(
        "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = ? RETURNING CAST(value AS INTEGER)",
        (key,),
    ).fetchall()
    if not rows:
        raise _missing(conn, key)
    return int(rows[0][0])


def add_to_meta(conn: sqlite3.Connection, key: str, amount: int) -> int:
    """Add ``amount`` to a ``meta`` counter, creating it at 0 first, and return the new value."""
    conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES (?, '0')", (key,))
    conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + ? WHERE key = ?", (amount, key))
    return meta_int(conn, key)
