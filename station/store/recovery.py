"""A damaged event database at start: keep the damaged files, start from what can be read, say so.

Two kinds of damage are told apart before the store opens the file (``station.store.events``):

* ``wal_truncated``: the write-ahead log is not a whole number of frames (or its header is
  unreadable). SQLite itself then keeps every transaction committed before the cut and drops the
  rest; the damaged log is copied aside first, because opening the database resets it.
* ``bad_page`` / ``not_a_database``: the main file fails ``PRAGMA quick_check`` or cannot be read
  at all. The files are renamed aside, a new file is built at the current schema and every row that
  can still be read is copied into it, table by table, in rowid ranges that halve around a damaged
  page (what ``sqlite3 .recover`` does by scanning pages, done here through the b-tree, so rows
  only reachable through a damaged interior page are lost too). ``seq`` jumps by
  :data:`SEQ_JUMP` when its counter was lost, so no message number is ever used twice.

Damaged files stay beside the database as ``<name>.damaged-<UTC time>`` (plus ``-wal``), never
deleted by the station; the :class:`Recovery` names what happened for the log and the status.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from station.ops.fileio import fsync_path
from station.store import migrations

log = logging.getLogger("station.store.recovery")

WAL_MAGIC = (0x377F0682, 0x377F0683)
WAL_HEADER = 32
WAL_FRAME_HEADER = 24
SEQ_JUMP = 100_000
"""How far ``seq`` jumps when its counter could not be read: far past any message the lost rows could have had."""
_CHUNK = 512  # rows per copy statement; a failing range is halved down to one row


@dataclass
class Recovery:
    """What was found damaged at start, where the damaged files are, and what was kept."""

    kind: str  # wal_truncated | bad_page | not_a_database
    detail: str
    kept: list[Path]
    rows_copied: dict[str, int] = field(default_factory=dict)
    rows_lost: dict[str, int] = field(default_factory=dict)

    def reason(self) -> str:
        """Return one line for the log and the status: what was damaged, what survived, where the damaged files are."""
        names = ", ".join(p.name for p in self.kept)
        if self.kind == "wal_truncated":
            return f"write-ahead log was damaged ({self.detail}); started from the commits before the damage; damaged files kept as {names}"
        copied = sum(self.rows_copied.values())
        lost = sum(self.rows_lost.values())
        events = self.rows_copied.get("events", 0)
        return (
            f"database was damaged ({self.kind}: {self.detail}); started from a copy of what was readable "
            f"({copied} rows, {events} events; {lost} unreadable rows known); damaged files kept as {names}"
        )


def _stamp(now: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))


def wal_damage(wal: Path) -> str | None:
    """Return what is wrong with the write-ahead log at ``wal`` (not whole frames, bad header), or None."""
    try:
        size = wal.stat().st_size
    except FileNotFoundError:
        return None
    if size == 0:
        return None
    with open(wal, "rb") as f:
        header = f.read(WAL_HEADER)
    if len(header) < WAL_HEADER:
        return f"{size} bytes, shorter than its header"
    magic, _version, page_size = struct.unpack(">III", header[:12])
    if magic not in WAL_MAGIC or page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
        return f"header unreadable (magic {magic:#x}, page size {page_size})"
    frame = WAL_FRAME_HEADER + page_size
    rest = (size - WAL_HEADER) % frame
    if rest:
        return f"{size} bytes: {(size - WAL_HEADER) // frame} whole frames and {rest} bytes of a cut one"
    return None


def main_damage(path: Path) -> tuple[str, str] | None:
    """Return (kind, detail) when the main file cannot be read or fails ``quick_check``; None when it is sound.

    The file is opened read-only, so nothing is checkpointed or rewritten while it is being judged.
    """
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        return "not_a_database", str(exc)
    try:
        rows = conn.execute("PRAGMA quick_check(20)").fetchall()
    except sqlite3.DatabaseError as exc:
        code = int(getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF
        return ("not_a_database" if code == 26 else "bad_page"), str(exc)  # 26: SQLITE_NOTADB
    finally:
        conn.close()
    found = [str(r[0]) for r in rows]
    if found == ["ok"]:
        return None
    return "bad_page", "; ".join(found[:3])[:300]


def _keep_aside(path: Path, stamp: str, *, move: bool) -> list[Path]:
    """Copy (or move) the database and its WAL to ``<name>.damaged-<stamp>`` beside it; return the kept paths."""
    kept = []
    for suffix in ("", "-wal"):
        src = Path(f"{path}{suffix}")
        if not src.exists():
            continue
        dest = path.with_name(f"{path.name}.damaged-{stamp}{suffix}")
        if move:
            os.replace(src, dest)
        else:
            shutil.copyfile(src, dest)
            fsync_path(dest)
        kept.append(dest)
    if move:
        Path(f"{path}-shm").unlink(missing_ok=True)  # an index of the moved WAL, rebuilt on open
    fsync_path(path.parent)
    return kept


def _copy_table(conn: sqlite3.Connection, table: str, columns: list[str]) -> tuple[int, int]:
    """Copy readable rows of ``old.<table>`` into ``main.<table>`` by rowid range; return (copied, known lost)."""
    cols = ", ".join(f'"{c}"' for c in columns)
    insert = f'INSERT OR IGNORE INTO main."{table}" ({cols}) SELECT {cols} FROM old."{table}" WHERE rowid BETWEEN ? AND ?'
    try:
        low, high = conn.execute(f'SELECT min(rowid), max(rowid) FROM old."{table}"').fetchone()
    except sqlite3.DatabaseError:
        low, high = None, None
    if low is None or high is None:  # empty, or the ends cannot be found: try the rowids the copy could reach
        try:
            high = conn.execute(f'SELECT rowid FROM old."{table}" ORDER BY rowid DESC LIMIT 1').fetchone()
        except sqlite3.DatabaseError:
            return 0, 0
        if high is None:
            return 0, 0
        low, high = 1, high[0]
    copied = lost = 0

    def copy(a: int, b: int) -> None:
        nonlocal copied, lost
        try:
            copied += conn.execute(insert, (a, b)).rowcount
        except sqlite3.DatabaseError:
            if a == b:
                lost += 1  # a rowid on a damaged page (or no row at all: counted as unreadable, an upper bound)
                return
            mid = (a + b) // 2
            copy(a, mid)
            copy(mid + 1, b)

    for start in range(int(low), int(high) + 1, _CHUNK):
        copy(start, min(start + _CHUNK - 1, int(high)))
    return copied, lost


def rebuild(path: Path, damaged: Path, *, on_table: Callable[[str], None] | None = None) -> tuple[dict[str, int], dict[str, int]]:
    """Build a new database at ``path`` (current schema) from the readable rows of ``damaged``; return (copied, lost) per table."""
    tmp = path.with_name(path.name + ".rebuild")
    for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
        leftover.unlink(missing_ok=True)
    conn = sqlite3.connect(tmp, isolation_level=None)
    copied: dict[str, int] = {}
    lost: dict[str, int] = {}
    try:
        conn.execute("PRAGMA journal_mode=DELETE")  # one file to move into place
        conn.execute("PRAGMA synchronous=OFF")  # not live until fsynced and moved into place below
        migrations.migrate(conn, tmp)
        old_tables: set[str] = set()
        try:
            conn.execute("ATTACH DATABASE ? AS old", (f"file:{damaged}?mode=ro",))
            old_tables = {r[0] for r in conn.execute("SELECT name FROM old.sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as exc:  # nothing readable: an empty database whose seq jumps
            log.error("damaged database has no readable schema, starting empty: %s", exc)
        tables = [r[0] for r in conn.execute("SELECT name FROM main.sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        conn.execute("DELETE FROM main.meta")  # the counters come from the damaged file, or jump below
        for table in tables:
            if table not in old_tables:
                continue
            if on_table is not None:
                on_table(table)
            try:
                old_cols = {r[1] for r in conn.execute(f'PRAGMA old.table_info("{table}")')}
            except sqlite3.DatabaseError:
                continue
            cols = [r[1] for r in conn.execute(f'PRAGMA main.table_info("{table}")') if r[1] in old_cols]
            copied[table], lost[table] = _copy_table(conn, table, cols)
        if old_tables:
            # Detached before anything else runs: SQLite re-reads every attached schema when it prepares
            # a statement, and a damaged one fails statements that only touch the new file.
            conn.execute("DETACH DATABASE old")
        _restore_counters(conn)
    finally:
        conn.close()
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(path.parent)
    return copied, lost


def _restore_counters(conn: sqlite3.Connection) -> None:
    """Make sure ``seq`` and ``session`` exist and never go back: a lost ``seq`` jumps past anything sent."""
    have = {r[0]: r[1] for r in conn.execute("SELECT key, value FROM main.meta WHERE key IN ('seq', 'session')")}
    if "seq" not in have:
        seq_sql = "SELECT coalesce(max(CAST(json_extract(CAST(payload AS TEXT), '$.seq') AS INTEGER)), 0) FROM main.outbox"
        highest = conn.execute(seq_sql).fetchone()
        conn.execute("INSERT INTO main.meta(key, value) VALUES ('seq', ?)", (str(int(highest[0] or 0) + SEQ_JUMP),))
    if "session" not in have:
        conn.execute("INSERT INTO main.meta(key, value) VALUES ('session', ?)", (str(SEQ_JUMP),))


def check_and_recover(path: Path, *, now: float | None = None) -> Recovery | None:
    """Judge the database at ``path`` before it is opened; keep damaged files aside and start from what was readable.

    Returns None when there is no file or it is sound. Raises ``OSError`` when the damaged files
    cannot be kept (then the station must not start on top of them).
    """
    path = Path(path)
    if not path.exists():
        return None
    stamp = _stamp(time.time() if now is None else now)
    wal = Path(f"{path}-wal")
    wal_problem = wal_damage(wal)
    kept: list[Path] = []
    if wal_problem is not None:
        kept = _keep_aside(path, stamp, move=False)  # SQLite recovers the prefix in place; the evidence goes aside
        log.error("write-ahead log damaged path=%s detail=%s kept=%s", wal, wal_problem, ",".join(map(str, kept)))
    damage = main_damage(path)
    if damage is None:
        return Recovery("wal_truncated", wal_problem, kept) if wal_problem is not None else None
    kind, detail = damage
    moved = _keep_aside(path, stamp + ("b" if kept else ""), move=True)
    damaged = moved[0]
    log.error("event database damaged, rebuilding from what is readable path=%s kind=%s detail=%s", path, kind, detail)
    copied, lost = rebuild(path, damaged)
    for made in (Path(f"{damaged}-shm"), Path(f"{damaged}-wal")):  # opened read-only for the copy: SQLite's own side files
        if made not in moved and made.exists() and (made.name.endswith("-shm") or made.stat().st_size == 0):
            made.unlink()
    recovery = Recovery(kind, detail, kept + moved, copied, lost)
    log.error("event database rebuilt: %s", recovery.reason())
    return recovery
