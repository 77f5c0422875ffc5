"""Fill the gaps in stations' numbers: a signed ``resend`` to the station for each gap that stays open.

A broker restart can acknowledge a station's messages and deliver them to nobody (mosquitto does not
restore a shared subscription, docs/centre.md "The broker restart hole"); they show as gaps in the
station's ``seq`` (``station_gaps``). The station keeps every record and the messages it sent for it
(station/store/resend.py), so the centre asks for the range again: ``<prefix>/<site>/<station>/cmd/resend``
with ``{"first_seq", "last_seq", "session"}``, signed with the centre's command key. The re-sent messages
keep their ``msg_id``, so what the centre already has is dropped by the writer as a duplicate, and the
records that were lost fill the gap: ``station_gaps`` no longer shows it.

One replica at a time does the asking (a lease row, ``centre_repair_lease``); every replica records the
stations' answers. Each gap range (at most :data:`~station.store.resend.MAX_RANGE` numbers) is a row of
``centre_repairs``: first seen, asked how often and when, the last answer, and its state:

* ``waiting`` — seen, younger than ``after_s`` (it may still be filling by ordinary delivery);
* ``asked`` — a ``resend`` went; asked again after ``retry_s`` × 2^(tries-1) while the gap stays;
* ``closed`` — no number of the range is missing any more;
* ``not_kept`` — the station answered that it keeps none of these records (retention, erase, a
  record made before messages were kept): not asked again;
* ``given_up`` — ``max_tries`` asks and the gap is still there.

A gap that was not closed stays in "missing events" whatever its state: the repair never hides one.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from station.centre.db import connect, ddl_lock
from station.store.resend import MAX_RANGE

log = logging.getLogger("station.centre.repair")

TTL_S = 60.0  # the longest deadline a station accepts (command_auth.MAX_WINDOW_S)
LEASE = "gaps"

SCHEMA = """
CREATE TABLE IF NOT EXISTS centre_repairs (
  id bigserial PRIMARY KEY,
  site text NOT NULL, station text NOT NULL,
  first_seq bigint NOT NULL, last_seq bigint NOT NULL,   -- the gap range (at most one resend's worth)
  session bigint,                                        -- the session of the record after the gap
  state text NOT NULL DEFAULT 'waiting' CHECK (state IN ('waiting', 'asked', 'closed', 'not_kept', 'given_up')),
  first_seen timestamptz NOT NULL DEFAULT now(),
  tries integer NOT NULL DEFAULT 0,
  next_at timestamptz,
  command_id text, asked_at timestamptz, asked_first bigint, asked_last bigint,
  answered_at timestamptz, answer jsonb,                 -- the station's /result: counts, or its error
  closed_at timestamptz
);
CREATE INDEX IF NOT EXISTS centre_repairs_open ON centre_repairs (site, station, first_seq) WHERE state <> 'closed';
CREATE INDEX IF NOT EXISTS centre_repairs_command ON centre_repairs (command_id);
CREATE TABLE IF NOT EXISTS centre_repair_lease (
  name text PRIMARY KEY, holder text NOT NULL, until timestamptz NOT NULL
);
"""


@dataclass(frozen=True)
class RepairOptions:
    """How the repair loop asks: after how long, how often, how many times."""

    after_s: float = 60.0  # a gap younger than this may still be filling by ordinary delivery
    retry_s: float = 120.0  # first wait for a gap asked about to close; doubles with each try
    max_retry_s: float = 3600.0
    max_tries: int = 5
    per_cycle: int = 20  # resend commands sent per cycle at most (one per station)
    numbers_per_cycle: int = 10_000  # numbers asked for per cycle at most (~2 000 messages/s at 5 s: well inside the ingest)
    interval_s: float = 5.0
    lease_s: float = 30.0
    station_gap_s: float = 15.0  # one resend per station this often at most (the station takes 10 a minute)
    seen_within_s: float = 600.0  # only stations heard from this recently are asked: an offline one would burn the tries


def ensure_repair_schema(conn: psycopg.Connection[Any]) -> None:
    """Create the repair tables when missing (under the centre's schema lock)."""
    with conn.transaction():
        ddl_lock(conn)
        conn.execute(SCHEMA)


def chunks(first: int, last: int) -> list[tuple[int, int]]:
    """Split a gap into ranges of at most :data:`MAX_RANGE` numbers."""
    return [(lo, min(lo + MAX_RANGE - 1, last)) for lo in range(first, last + 1, MAX_RANGE)]


def _overlap(lo: int, hi: int, gaps: list[tuple[int, int, int | None]]) -> tuple[int, int] | None:
    """Return the smallest range inside ``lo..hi`` holding every missing number of ``gaps`` there, or None."""
    inside = [(max(lo, a), min(hi, b)) for a, b, _s in gaps if a <= hi and b >= lo]
    return (min(a for a, _ in inside), max(b for _, b in inside)) if inside else None


Gaps = dict[tuple[str, str], list[tuple[int, int, int | None]]]


def read_gaps(conn: psycopg.Connection[Any]) -> Gaps:
    """Return every station's gaps from ``station_gaps``: (first missing, last missing, session after), in order."""
    gaps: Gaps = {}
    for site, station, first, last, session in conn.execute(
        "SELECT site, station, first_missing, last_missing, session FROM station_gaps ORDER BY site, station, first_missing"
    ):
        gaps.setdefault((site, station), []).append((int(first), int(last), session))
    return gaps


def sync_gaps(conn: psycopg.Connection[Any], gaps: Gaps | None = None) -> dict[str, int]:
    """Bring ``centre_repairs`` up to ``station_gaps``: new ranges in, ranges no longer missing closed; return the counts."""
    if gaps is None:
        gaps = read_gaps(conn)
    opened = closed = 0
    open_rows: dict[tuple[str, str], list[tuple[int, int, int]]] = {}
    for rid, site, station, first, last in conn.execute(
        "SELECT id, site, station, first_seq, last_seq FROM centre_repairs WHERE state <> 'closed' FOR UPDATE"
    ).fetchall():
        open_rows.setdefault((site, station), []).append((int(rid), int(first), int(last)))
    for key, rows in open_rows.items():
        done = [rid for rid, first, last in rows if _overlap(first, last, gaps.get(key, [])) is None]
        if done:
            closed += conn.execute(
                "UPDATE centre_repairs SET state = 'closed', closed_at = now(), next_at = NULL WHERE id = ANY(%s)", (done,)
            ).rowcount
    for (site, station), station_gaps in gaps.items():
        known = open_rows.get((site, station), [])
        for first, last, session in station_gaps:
            for lo, hi in chunks(first, last):
                if any(a <= hi and b >= lo for _rid, a, b in known):
                    continue  # part of a range already followed (gaps only shrink or split)
                conn.execute(
                    "INSERT INTO centre_repairs(site, station, first_seq, last_seq, session) VALUES (%s, %s, %s, %s, %s)",
                    (site, station, lo, hi, session),
                )
                opened += 1
    return {"opened": opened, "closed": closed}


class GapRepair:
    """The repair loop of one replica: lease, gaps → ``centre_repairs``, signed ``resend`` commands, answers recorded."""

    def __init__(
        self,
        db_url: str,
        mqtt_url: str,
        key_path: Path,
        *,
        opts: RepairOptions = RepairOptions(),
        prefix: str = "checkpoint/v1",
        signer: str = "centre",
        replica: str | None = None,
        username: str | None = None,
        password: str | None = None,
        tls_ca: str | None = None,
    ) -> None:
        from station.centre.mirror import load_command_key
        from station.ops.mqtt_url import parse_mqtt_url

        self.key = load_command_key(key_path)  # refused here, before anything starts
        self.db_url = db_url
        self.endpoint = parse_mqtt_url(mqtt_url).with_credentials(username, password)
        self.opts = opts
        self.prefix = prefix.rstrip("/")
        self.signer = signer
        self.replica = replica or f"repair-{uuid.uuid4().hex[:12]}"
        self.tls_ca = tls_ca
        self.client: Any = None
        self._answers: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue(maxsize=1000)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.counts = {"cycles": 0, "asked": 0, "answered": 0, "closed": 0, "given_up": 0, "not_kept": 0, "answers_dropped": 0, "errors": 0}

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        """Create the tables when missing."""
        with connect(self.db_url) as conn:
            ensure_repair_schema(conn)

    def start(self) -> None:
        """Connect to the broker (answers) and start the loop thread."""
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"centre-{self.replica}", protocol=MQTTProtocolVersion.MQTTv5)
        if self.endpoint.username is not None:
            client.username_pw_set(self.endpoint.username, self.endpoint.password)
        if self.endpoint.tls:
            client.tls_set(ca_certs=self.tls_ca)
        topic = f"{self.prefix}/+/+/cmd/resend/result"
        client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1) if not rc.is_failure else None
        client.on_message = self._on_result
        client.connect_async(self.endpoint.host, self.endpoint.port, keepalive=30)
        client.loop_start()
        self.client = client
        self._thread = threading.Thread(target=self._run, name="centre-repair", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop, give the lease back and disconnect."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        try:
            with connect(self.db_url, autocommit=True) as conn:
                conn.execute("DELETE FROM centre_repair_lease WHERE name = %s AND holder = %s", (LEASE, self.replica))
        except psycopg.Error as exc:  # it expires by itself
            log.warning("repair lease not given back: %s", exc)
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()
            self.client = None

    def _run(self) -> None:
        last_cycle = 0.0
        while not self._stop.is_set():
            try:
                self.record_answers()
                if time.monotonic() - last_cycle >= self.opts.interval_s:
                    last_cycle = time.monotonic()
                    self.cycle()
            except psycopg.Error as exc:  # the database is away: try again next round
                with self._lock:
                    self.counts["errors"] += 1
                log.warning("repair round failed: %s", exc)
            self._stop.wait(min(1.0, self.opts.interval_s))

    # ------------------------------------------------------------------ answers

    def _on_result(self, client: Any, userdata: Any, msg: Any) -> None:
        """Queue a station's answer (paho's thread: never the database here)."""
        try:
            body = json.loads(msg.payload)
        except (ValueError, RecursionError):
            return
        if not isinstance(body, dict) or not isinstance(body.get("id"), str) or len(body["id"]) > 128:
            return
        answer = {
            "ok": body.get("ok") is True,
            "reason": str(body.get("reason"))[:80],
            "error": str(body.get("error") or "")[:300] or None,
            "result": body.get("result") if isinstance(body.get("result"), dict) else None,
        }
        try:
            self._answers.put_nowait((body["id"], answer))
        except queue.Full:
            with self._lock:
                self.counts["answers_dropped"] += 1

    def record_answers(self) -> int:
        """Write the answers received since the last call into their rows; return how many matched a request."""
        from psycopg.types.json import Jsonb

        items: list[tuple[str, dict[str, Any]]] = []
        while True:
            try:
                items.append(self._answers.get_nowait())
            except queue.Empty:
                break
        if not items:
            return 0
        matched = 0
        with connect(self.db_url) as conn, conn.transaction():
            for command_id, answer in items:
                result = answer["result"] or {}
                found = result.get("seqs_found")
                # The station keeps none of these records: asking again cannot fill the gap.
                nothing = answer["ok"] and isinstance(found, int) and found == 0 and not result.get("no_room")
                row = conn.execute(
                    "UPDATE centre_repairs SET answered_at = now(), answer = %s, "
                    "state = CASE WHEN %s AND state = 'asked' THEN 'not_kept' ELSE state END "
                    "WHERE command_id = %s RETURNING site, station, first_seq, last_seq, state",
                    (Jsonb(answer), nothing, command_id),
                ).fetchone()
                if row is None:
                    continue
                matched += 1
                log.info("resend answered site=%s station=%s range=%d-%d state=%s answer=%s", *row, json.dumps(answer)[:300])
                with self._lock:
                    self.counts["answered"] += 1
                    self.counts["not_kept"] += int(row[4] == "not_kept")
        return matched

    # ------------------------------------------------------------------ the round

    def _take_lease(self, conn: psycopg.Connection[Any]) -> bool:
        row = conn.execute(
            "INSERT INTO centre_repair_lease(name, holder, until) VALUES (%(n)s, %(me)s, now() + make_interval(secs => %(s)s)) "
            "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until "
            "WHERE centre_repair_lease.holder = excluded.holder OR centre_repair_lease.until < now() RETURNING holder",
            {"n": LEASE, "me": self.replica, "s": self.opts.lease_s},
        ).fetchone()
        return row is not None

    def cycle(self) -> dict[str, int]:
        """One round: take or renew the lease; sync the gaps; ask for the due ranges. Return what it did."""
        with self._lock:
            self.counts["cycles"] += 1
        with connect(self.db_url) as conn:
            with conn.transaction():
                if not self._take_lease(conn):
                    return {"leased": 0}
            with conn.transaction():
                gaps = read_gaps(conn)
                synced = sync_gaps(conn, gaps)
                due = self._due(conn)
                asked = given_up = numbers = 0
                for rid, site, station, first, last, session, tries in due:
                    span = _overlap(first, last, gaps.get((site, station), []))
                    if span is None:
                        continue  # filled since the sync
                    if tries >= self.opts.max_tries:
                        conn.execute("UPDATE centre_repairs SET state = 'given_up', next_at = NULL WHERE id = %s", (rid,))
                        given_up += 1
                        log.warning("gap repair given up site=%s station=%s range=%d-%d tries=%d", site, station, first, last, tries)
                        continue
                    if asked and numbers + span[1] - span[0] + 1 > self.opts.numbers_per_cycle:
                        break  # the rest next round: re-sent records must not swamp the writers
                    numbers += span[1] - span[0] + 1
                    command_id = self._send(site, station, span, session)
                    wait = min(self.opts.retry_s * 2**tries, self.opts.max_retry_s)
                    conn.execute(
                        "UPDATE centre_repairs SET state = 'asked', tries = tries + 1, command_id = %s, asked_at = now(), "
                        "asked_first = %s, asked_last = %s, next_at = now() + make_interval(secs => %s) WHERE id = %s",
                        (command_id, span[0], span[1], wait, rid),
                    )
                    asked += 1
        with self._lock:
            self.counts["asked"] += asked
            self.counts["closed"] += synced["closed"]
            self.counts["given_up"] += given_up
        return {"leased": 1, **synced, "asked": asked, "given_up": given_up}

    def _due(self, conn: psycopg.Connection[Any]) -> list[tuple[int, str, str, int, int, int | None, int]]:
        """Return the ranges to ask for now: one per station heard from lately and not asked lately, lowest numbers first."""
        rows = conn.execute(
            """SELECT id, site, station, first_seq, last_seq, session, tries FROM (
                 SELECT r.*, row_number() OVER (PARTITION BY r.site, r.station ORDER BY r.first_seq) AS nth FROM centre_repairs r
                 JOIN stations s USING (site, station)
                 WHERE r.state IN ('waiting', 'asked') AND r.first_seen <= now() - make_interval(secs => %(after)s)
                   AND (r.next_at IS NULL OR r.next_at <= now())
                   AND s.last_seen >= now() - make_interval(secs => %(seen)s)
                   AND NOT EXISTS (SELECT 1 FROM centre_repairs q WHERE q.site = r.site AND q.station = r.station
                                   AND q.asked_at > now() - make_interval(secs => %(pace)s))
               ) due WHERE nth = 1 ORDER BY first_seen, site, station LIMIT %(limit)s""",
            {
                "after": self.opts.after_s,
                "limit": self.opts.per_cycle,
                "seen": self.opts.seen_within_s,
                "pace": self.opts.station_gap_s,
            },
        ).fetchall()
        return [(int(r[0]), r[1], r[2], int(r[3]), int(r[4]), r[5], int(r[6])) for r in rows]

    def _send(self, site: str, station: str, span: tuple[int, int], session: int | None) -> str | None:
        """Sign and publish one ``resend``; return its command id (None when it could not be queued: asked again later)."""
        from station.link.command_auth import sign_command

        args: dict[str, Any] = {"first_seq": span[0], "last_seq": span[1]}
        if session is not None:
            args["session"] = int(session)
        body = sign_command(self.key, site=site, station=station, command="resend", args=args, by=self.signer, ttl_s=TTL_S)
        if self.client is None:
            return None
        info = self.client.publish(f"{self.prefix}/{site}/{station}/cmd/resend", json.dumps(body, ensure_ascii=False), qos=1)
        if info.rc != 0:
            log.warning("resend not queued site=%s station=%s rc=%s", site, station, info.rc)
            return None
        log.info("resend asked site=%s station=%s range=%d-%d id=%s", site, station, span[0], span[1], body["id"])
        return str(body["id"])

    def stats(self) -> dict[str, int]:
        """Return the counters."""
        with self._lock:
            return dict(self.counts)


def repairs(conn: psycopg.Connection[Any], *, limit: int = 200) -> list[dict[str, Any]]:
    """Return the repair rows, newest first (what was asked, what the stations answered)."""
    cur = conn.execute("SELECT * FROM centre_repairs ORDER BY id DESC LIMIT %s", (limit,))
    names = [d.name for d in cur.description or []]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
