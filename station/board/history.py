"""The board's own SQLite history: events seen (de-duplicated), counts per station per day, alarms.

Delivery from the stations is at-least-once (docs/mqtt.md): the same screening can arrive twice
(a re-sent outbox row, a broker redelivery after the board restarted). An event counts once: the
``events`` primary key is (site, station, event_id), and the per-day counter is incremented in the
same transaction only when the insert was new. Several board replicas may share one history file
(WAL; each write is one short IMMEDIATE transaction), which is how they split a shared subscription
and still all show the whole district (docs/board.md).

"Today" is the board's local calendar day of the event's own decision time (``ts``), not of its
arrival: a backlog delivered after midnight still counts for the day it happened.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
  site TEXT NOT NULL, station TEXT NOT NULL, event_id TEXT NOT NULL,
  day TEXT NOT NULL,                 -- local YYYY-MM-DD of ts
  ts REAL NOT NULL,                  -- the decision's unix time (station clock)
  decision TEXT, temperature_c REAL, alarm INTEGER NOT NULL,
  received_at REAL NOT NULL,
  PRIMARY KEY (site, station, event_id)
);
CREATE INDEX IF NOT EXISTS events_day ON events(day);
CREATE TABLE IF NOT EXISTS day_counts (
  site TEXT NOT NULL, station TEXT NOT NULL, day TEXT NOT NULL, decision TEXT NOT NULL,
  n INTEGER NOT NULL,
  PRIMARY KEY (site, station, day, decision)
);
CREATE TABLE IF NOT EXISTS alarms (
  site TEXT NOT NULL, station TEXT NOT NULL, alarm_key TEXT NOT NULL,   -- event_id, or msg_id for notices
  day TEXT NOT NULL, ts REAL NOT NULL, kind TEXT NOT NULL,              -- fever | outbox_overflow | …
  decision TEXT, temperature_c REAL, detail TEXT,
  received_at REAL NOT NULL,
  PRIMARY KEY (site, station, alarm_key)
);
CREATE INDEX IF NOT EXISTS alarms_day ON alarms(day);
"""


def local_day(ts: float) -> str:
    """Return the board's local calendar day of ``ts`` as ``YYYY-MM-DD``."""
    return time.strftime("%Y-%m-%d", time.localtime(ts))


class BoardHistory:
    """Keep the board's counts and alarms in one SQLite file, shared by its replicas.

    Every method is safe to call from any thread (one lock, one connection).
    """

    def __init__(self, path: Path, keep_days: int = 30, *, durable: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.keep_days = keep_days
        self._lock = threading.Lock()
        # isolation_level=None: explicit BEGIN IMMEDIATE below, so two replicas never interleave a
        # "was it new?" check with the counter update.
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=10.0)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: the MQTT client acknowledges a message only after its handler (this commit) returned,
        # so a committed count is never lost to a power cut and an uncommitted one is redelivered.
        # durable=False only for throw-away histories (the fuzz run writes 100 000 messages).
        self._db.execute("PRAGMA synchronous=FULL" if durable else "PRAGMA synchronous=OFF")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def record_event(
        self, site: str, station: str, event_id: str, ts: float, decision: str | None, temperature_c: float | None, alarm: bool
    ) -> bool:
        """Count one screening once; return True when it was new."""
        day = local_day(ts)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cur = self._db.execute(
                    "INSERT OR IGNORE INTO events(site, station, event_id, day, ts, decision, temperature_c, alarm, received_at)"
                    " VALUES (?,?,?,?,?,?,?,?,?)",
                    (site, station, event_id, day, ts, decision, temperature_c, int(alarm), time.time()),
                )
                new = cur.rowcount == 1
                if new:
                    self._db.execute(
                        "INSERT INTO day_counts(site, station, day, decision, n) VALUES (?,?,?,?,1)"
                        " ON CONFLICT(site, station, day, decision) DO UPDATE SET n = n + 1",
                        (site, station, day, decision or "unknown"),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return new

    def record_alarm(
        self,
        site: str,
        station: str,
        key: str,
        ts: float,
        kind: str,
        decision: str | None = None,
        temperature_c: float | None = None,
        detail: str | None = None,
    ) -> bool:
        """Record one alarm once (keyed by ``key`` per station); return True when it was new."""
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO alarms(site, station, alarm_key, day, ts, kind, decision, temperature_c, detail, received_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?)",
                (site, station, key, local_day(ts), ts, kind, decision, temperature_c, detail, time.time()),
            )
            return cur.rowcount == 1

    def counts(self, day: str) -> dict[tuple[str, str], dict[str, int]]:
        """Return ``{(site, station): {decision: n}}`` for one day."""
        with self._lock:
            rows = self._db.execute("SELECT site, station, decision, n FROM day_counts WHERE day = ?", (day,)).fetchall()
        out: dict[tuple[str, str], dict[str, int]] = {}
        for r in rows:
            out.setdefault((r["site"], r["station"]), {})[r["decision"]] = int(r["n"])
        return out

    def alarms(self, day: str, per_station: int = 5) -> dict[tuple[str, str], dict[str, Any]]:
        """Return ``{(site, station): {"count": n, "recent": [newest first, at most per_station]}}`` for one day.

        Counted and cut in SQL: a station that sends thousands of alarms costs the board a count,
        not thousands of rows in memory on every refresh.
        """
        with self._lock:
            totals = self._db.execute(
                "SELECT site, station, count(*) AS n FROM alarms WHERE day = ? GROUP BY site, station", (day,)
            ).fetchall()
            rows = self._db.execute(
                "SELECT site, station, alarm_key, ts, kind, decision, temperature_c, detail FROM ("
                " SELECT *, row_number() OVER (PARTITION BY site, station ORDER BY ts DESC) AS rn FROM alarms WHERE day = ?"
                ") WHERE rn <= ? ORDER BY ts DESC",
                (day, per_station),
            ).fetchall()
        out: dict[tuple[str, str], dict[str, Any]] = {(r["site"], r["station"]): {"count": int(r["n"]), "recent": []} for r in totals}
        for r in rows:
            entry = out.setdefault((r["site"], r["station"]), {"count": 0, "recent": []})
            entry["recent"].append(
                {
                    "key": r["alarm_key"],
                    "ts": r["ts"],
                    "kind": r["kind"],
                    "decision": r["decision"],
                    "temperature_c": r["temperature_c"],
                    "detail": r["detail"],
                }
            )
        return out

    def prune(self, now: float | None = None) -> int:
        """Forget events and alarms older than ``keep_days`` (the per-day counts stay)."""
        cutoff = local_day((now or time.time()) - self.keep_days * 86400)
        with self._lock:
            n = self._db.execute("DELETE FROM events WHERE day < ?", (cutoff,)).rowcount
            n += self._db.execute("DELETE FROM alarms WHERE day < ?", (cutoff,)).rowcount
        return int(n)
