"""The fleet view: every station's software, lists, config hash, doctor result, clock, disk and outbox, from its retained state.

Stations publish retained ``status`` (online / stopped / the broker's ``offline`` Will, with the
session and version) and ``state/<component>``; the centre takes ``status``, ``state/fleet``
(station/link/fleet_state.py), ``state/outbox``, ``state/storage`` and ``state/detector`` through a
plain (not shared) subscription in every replica: retained messages are small, few and re-sent on
every connect, and writing them is idempotent (a newer state replaces an older one, by the time
the centre received it). Each is parsed totally (:func:`parse_state`: any bytes → an update or a
reason) with the board's value checks: only typed, bounded fields are stored, never free text a
station chose beyond short tokens.

Tables: ``station_status`` (one row per station, columns below) and ``station_status_log`` (every
change of ``status.state`` with when the centre heard it: the reports count offline spells longer
than 10 minutes from it). :func:`fleet_view` adds what a page or a script wants: how long a station
has been offline, whether its trust or resident list is behind the newest one in the fleet, whether
its config hash differs from the most common one, and its missing events (``station_missing``) with what
the gap repair (``centre_repairs``, station/centre/repair.py) is doing about them: open ranges by state and
the latest answer, ``repair`` None when the loop never saw the station or runs nowhere (no command key).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from station.board import schema
from station.board.schema import Dropped

log = logging.getLogger("station.centre.fleet")

COMPONENTS = ("fleet", "outbox", "storage", "detector")
MAX_STATE_PAYLOAD = 16 * 1024
MAX_PENDING_STATIONS = 100_000
HEX12 = re.compile(r"^[0-9a-f]{12}$")
HEX16 = re.compile(r"^[0-9a-f]{16}$")
MODEL_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
CHECK_NAME = re.compile(r"^[A-Za-z0-9._:/-]{1,64}$")

SCHEMA = """
CREATE TABLE IF NOT EXISTS station_status (
  site text NOT NULL, station text NOT NULL,
  updated_at timestamptz NOT NULL,
  state text, session bigint, version text, status_at timestamptz,
  models jsonb, models_manifest text, trust_list_version integer, resident_list_version integer,
  config_hash text, district_key_id text, clock_synced boolean, disk_free_mb bigint, disk_used_pct real,
  doctor_exit integer, doctor_at timestamptz, doctor_failed text[], doctor_warned text[], fleet_at timestamptz,
  outbox_pending bigint, outbox_oldest_age_s bigint, outbox_dropped bigint, mqtt_state text, outbox_at timestamptz,
  storage_state text, storage_at timestamptz,
  detector_state text, detector_model text, detector_at timestamptz,
  PRIMARY KEY (site, station)
);
CREATE TABLE IF NOT EXISTS station_status_log (
  site text NOT NULL, station text NOT NULL, at timestamptz NOT NULL, state text NOT NULL, session bigint,
  PRIMARY KEY (site, station, at, state)
);
"""

_COLUMNS = {
    "status": ("state", "session", "version", "status_at"),
    "fleet": (
        "models",
        "models_manifest",
        "trust_list_version",
        "resident_list_version",
        "config_hash",
        "district_key_id",
        "clock_synced",
        "disk_free_mb",
        "disk_used_pct",
        "doctor_exit",
        "doctor_at",
        "doctor_failed",
        "doctor_warned",
        "fleet_at",
    ),
    "outbox": ("outbox_pending", "outbox_oldest_age_s", "outbox_dropped", "mqtt_state", "outbox_at"),
    "storage": ("storage_state", "storage_at"),
    "detector": ("detector_state", "detector_model", "detector_at"),
}


@dataclass(frozen=True, slots=True)
class StateUpdate:
    """One retained message, typed: which station, which part (status or a component), its columns."""

    site: str
    station: str
    part: str
    values: dict[str, Any] = field(default_factory=dict)


def status_filters(prefix: str) -> list[str]:
    """Return the topic filters of the retained messages the fleet view takes."""
    p = prefix.rstrip("/")
    return [f"{p}/+/+/status", *(f"{p}/+/+/state/{c}" for c in COMPONENTS)]


def _hex(v: Any, pattern: re.Pattern[str]) -> str | None:
    return v if isinstance(v, str) and pattern.match(v) else None


def _names(v: Any) -> list[str] | None:
    if not isinstance(v, list):
        return None
    return [x for x in v if isinstance(x, str) and CHECK_NAME.match(x)][:50]


def _fleet(body: dict[str, Any], at: float) -> dict[str, Any]:
    raw_models = body.get("models")
    models = (
        {k: v for k, v in list(raw_models.items())[:32] if isinstance(k, str) and MODEL_NAME.match(k) and _hex(v, HEX12)}
        if isinstance(raw_models, dict)
        else None
    )
    raw_doctor = body.get("doctor")
    doctor: dict[str, Any] = raw_doctor if isinstance(raw_doctor, dict) else {}
    synced = body.get("clock_synced")
    used = schema.number(body.get("disk_used_pct"), 0, 100)
    doctor_ts = schema.timestamp(doctor.get("ts"))
    return {
        "models": models,
        "models_manifest": _hex(body.get("models_manifest"), HEX12),
        "trust_list_version": schema.count(body.get("trust_list_version"), 2**31 - 1),
        "resident_list_version": schema.count(body.get("resident_list_version"), 2**31 - 1),
        "config_hash": _hex(body.get("config_hash"), HEX16),
        "district_key_id": _hex(body.get("district_key_id"), HEX16),
        "clock_synced": synced if isinstance(synced, bool) else None,
        "disk_free_mb": schema.count(body.get("disk_free_mb"), 2**50),
        "disk_used_pct": used,
        "doctor_exit": schema.count(doctor.get("exit_code"), 255),
        "doctor_at": doctor_ts,
        "doctor_failed": _names(doctor.get("failed")),
        "doctor_warned": _names(doctor.get("warned")),
        "fleet_at": at,
    }


def parse_state(prefix: str, topic: Any, payload: Any, received_at: float) -> StateUpdate | str:
    """Return the typed update of one ``status`` / ``state/<component>`` message, or the reason it is dropped; never raise."""
    try:
        if not isinstance(topic, str) or not isinstance(payload, (bytes, bytearray, memoryview)):
            return "bad_input"
        p = prefix.rstrip("/") + "/"
        if not topic.startswith(p):
            return "not_ours"
        parts = topic[len(p) :].split("/")
        if len(parts) == 3 and parts[2] == "status":
            part = "status"
        elif len(parts) == 4 and parts[2] == "state" and parts[3] in COMPONENTS:
            part = parts[3]
        else:
            return "bad_topic"
        site, station = parts[0], parts[1]
        if not (schema.segment(site) and schema.segment(station)):
            return "bad_topic"
        if not payload:
            return "cleared"  # a retained message deleted: nothing to store
        body = schema.decode_object(bytes(payload), MAX_STATE_PAYLOAD)
        if part != "status":
            for key, want in (("station_id", station), ("site", site)):
                if key in body and body[key] != want:
                    return "sender_mismatch"
        at = received_at
        if part == "status":
            s = schema.clean_status(body)
            values: dict[str, Any] = {"state": s["state"], "session": s["session"], "version": s["version"], "status_at": at}
        elif part == "fleet":
            values = _fleet(body, at)
        elif part == "outbox":
            o = schema.clean_outbox(body)
            values = {
                "outbox_pending": o["pending"],
                "outbox_oldest_age_s": o["oldest_age_s"],
                "outbox_dropped": o["dropped"],
                "mqtt_state": o["mqtt"],
                "outbox_at": at,
            }
        elif part == "storage":
            values = {"storage_state": schema.token(body.get("state")), "storage_at": at}
        else:
            values = {
                "detector_state": schema.text(body.get("state"), 64),
                "detector_model": schema.token(body.get("model")),
                "detector_at": at,
            }
        return StateUpdate(site, station, part, values)
    except Dropped as exc:
        return exc.reason
    except Exception as exc:  # a check this module missed: still a verdict
        return f"parser_{type(exc).__name__}"[:40]


def ensure_fleet_schema(conn: psycopg.Connection[Any]) -> None:
    """Create the fleet tables when missing."""
    with conn.transaction():
        conn.execute(SCHEMA)


def write_updates(conn: psycopg.Connection[Any], updates: list[StateUpdate]) -> int:
    """Store updates (in order; a part's newer values replace older ones) and log status changes; return rows written."""
    from psycopg.types.json import Jsonb

    written = 0
    with conn.transaction():
        for u in sorted(updates, key=lambda u: (u.site, u.station)):  # one lock order for every replica
            cols = _COLUMNS[u.part]
            at_col = cols[-1]
            vals = [u.values.get(c) for c in cols]
            vals = [Jsonb(v) if c == "models" and v is not None else v for c, v in zip(cols, vals, strict=True)]
            placeholders = ", ".join("to_timestamp(%s)" if c.endswith("_at") else "%s" for c in cols)
            sets = ", ".join(f"{c} = excluded.{c}" for c in cols)
            if u.part == "status":
                prev = conn.execute(
                    "SELECT state, session FROM station_status WHERE site = %s AND station = %s", (u.site, u.station)
                ).fetchone()
                session = u.values["session"]
                if prev is not None and prev[1] is not None and session is not None and session < prev[1]:
                    continue  # a late Will of an earlier session after the new session's "online" (docs/mqtt.md)
                if prev is None or (prev[0], prev[1]) != (u.values["state"], session):
                    conn.execute(
                        "INSERT INTO station_status_log (site, station, at, state, session) VALUES (%s, %s, to_timestamp(%s), %s, %s) "
                        "ON CONFLICT DO NOTHING",
                        (u.site, u.station, u.values["status_at"], u.values["state"], u.values["session"]),
                    )
            cur = conn.execute(
                f"INSERT INTO station_status (site, station, updated_at, {', '.join(cols)}) VALUES (%s, %s, now(), {placeholders}) "
                f"ON CONFLICT (site, station) DO UPDATE SET updated_at = now(), {sets} "
                f"WHERE station_status.{at_col} IS NULL OR station_status.{at_col} <= excluded.{at_col}",
                (u.site, u.station, *vals),
            )
            written += cur.rowcount
    return written


FLEET_SQL = """
SELECT s.*, coalesce(l.at, s.status_at) AS state_since
FROM station_status s
LEFT JOIN LATERAL (SELECT at FROM station_status_log g WHERE g.site = s.site AND g.station = s.station ORDER BY at DESC LIMIT 1) l ON true
ORDER BY s.site, s.station
"""


REPAIR_STATES = ("waiting", "asked", "not_kept", "given_up")  # the open states of centre_repairs (station/centre/repair.py)

# Per station: its missing events (station_missing) and its gap repair rows grouped by state, with the
# latest answer. Only stations with something to show come back: a fleet of thousands reads a few rows.
_MISSING_SQL = "SELECT site, station, missing_events, gaps FROM station_missing WHERE missing_events > 0"
_NO_MISSING_SQL = "SELECT NULL::text AS site, NULL::text AS station, 0::bigint AS missing_events, 0::bigint AS gaps WHERE false"
_REPAIRS_SQL = """
SELECT site, station, true AS seen,
       count(*) FILTER (WHERE state = 'waiting') AS waiting, count(*) FILTER (WHERE state = 'asked') AS asked,
       count(*) FILTER (WHERE state = 'not_kept') AS not_kept, count(*) FILTER (WHERE state = 'given_up') AS given_up,
       max(answered_at) AS answered_at,
       (array_agg(answer ORDER BY answered_at DESC, id DESC) FILTER (WHERE answered_at IS NOT NULL))[1] AS answer
FROM centre_repairs GROUP BY site, station
"""
_NO_REPAIRS_SQL = (
    "SELECT NULL::text AS site, NULL::text AS station, NULL::boolean AS seen, 0::bigint AS waiting, 0::bigint AS asked, "
    "0::bigint AS not_kept, 0::bigint AS given_up, NULL::timestamptz AS answered_at, NULL::jsonb AS answer WHERE false"
)
_UPKEEP_SQL = """
SELECT site, station, coalesce(m.missing_events, 0) AS missing_events, coalesce(m.gaps, 0) AS gaps,
       r.seen, r.waiting, r.asked, r.not_kept, r.given_up, r.answered_at, r.answer
FROM ({missing}) m FULL JOIN ({repairs}) r USING (site, station)
"""


def answer_text(answer: Any) -> str | None:
    """Return a short plain text of a station's answer to a ``resend`` (ok or refused, its error, its counts), or None."""
    if not isinstance(answer, dict):
        return None
    parts = ["ok" if answer.get("ok") is True else "refused"]
    reason = answer.get("reason")
    if isinstance(reason, str) and reason not in ("", "None"):
        parts.append(reason[:40])
    error = answer.get("error")
    if isinstance(error, str) and error:
        parts.append(error[:120])
    result = answer.get("result")
    if isinstance(result, dict):
        # the resend counts (station/store/resend.py): the nonzero ones, and seqs_found always (0 is what "not kept" means)
        counts = [
            f"{k} {v}"
            for k, v in list(result.items())[:12]
            if isinstance(k, str) and len(k) <= 32 and isinstance(v, int) and not isinstance(v, bool) and (v or k == "seqs_found")
        ]
        if counts:
            parts.append(", ".join(counts))
    return " · ".join(parts)[:240]


def station_upkeep(conn: psycopg.Connection[Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """Return, per station with missing events or gap repair rows: ``missing_events``, ``gaps`` and ``repair`` (None when never seen)."""
    have_missing, have_repairs = conn.execute(  # a fleet-only database, or a centre without a command key, has neither or one
        "SELECT to_regclass('station_missing') IS NOT NULL, to_regclass('centre_repairs') IS NOT NULL"
    ).fetchone() or (False, False)
    if not have_missing and not have_repairs:
        return {}
    sql = _UPKEEP_SQL.format(
        missing=_MISSING_SQL if have_missing else _NO_MISSING_SQL, repairs=_REPAIRS_SQL if have_repairs else _NO_REPAIRS_SQL
    )
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for site, station, missing, gaps, seen, *states, answered_at, answer in conn.execute(sql).fetchall():
        repair: dict[str, Any] | None = None
        if seen:
            repair = {s: int(n) for s, n in zip(REPAIR_STATES, states, strict=True)}
            repair["answered_at"] = answered_at.timestamp() if answered_at is not None else None
            repair["answer"] = answer_text(answer)
        out[(site, station)] = {"missing_events": int(missing), "gaps": int(gaps), "repair": repair}
    return out


NO_UPKEEP: dict[str, Any] = {"missing_events": 0, "gaps": 0, "repair": None}


def upkeep_totals(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Return the missing events and repair totals of station rows (a view's, or a tree node's)."""
    return {
        "missing_events": sum(r.get("missing_events") or 0 for r in rows),
        "stations_missing": sum(1 for r in rows if r.get("missing_events")),
        "repairs_given_up": sum(1 for r in rows if (r.get("repair") or {}).get("given_up")),
        "repairs_not_kept": sum(1 for r in rows if (r.get("repair") or {}).get("not_kept")),
    }


def fleet_view(conn: psycopg.Connection[Any], now: float | None = None, offline_after_s: float = 600.0) -> dict[str, Any]:
    """Return every station's row with derived flags, missing events and gap repair, a summary, and ``heard_only`` (no state, missing)."""
    cur = conn.execute(FLEET_SQL)
    cols = [c.name for c in cur.description or ()]
    rows = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
    upkeep = station_upkeep(conn)
    now = time.time() if now is None else now
    newest_trust = max((r["trust_list_version"] or 0 for r in rows), default=0)
    newest_residents = max((r["resident_list_version"] or 0 for r in rows), default=0)
    configs = Counter(r["config_hash"] for r in rows if r["config_hash"])
    usual_config = configs.most_common(1)[0][0] if configs else None
    out = []
    for r in rows:
        since = r.pop("state_since")
        down_s = now - since.timestamp() if r["state"] in ("offline", "stopped") and since is not None else None
        r.update(
            {
                "offline_s": round(down_s, 1) if down_s is not None else None,
                "offline_over_10min": down_s is not None and down_s > offline_after_s,
                "trust_list_behind": (r["trust_list_version"] or 0) < newest_trust,
                "resident_list_behind": (r["resident_list_version"] or 0) < newest_residents,
                "config_differs": usual_config is not None and r["config_hash"] is not None and r["config_hash"] != usual_config,
                "doctor_ok": None if r["doctor_exit"] is None else r["doctor_exit"] == 0,
                **upkeep.pop((r["site"], r["station"]), NO_UPKEEP),
            }
        )
        out.append({k: (v.timestamp() if hasattr(v, "timestamp") else v) for k, v in r.items()})
    heard_only = [{"site": site, "station": station, **u} for (site, station), u in sorted(upkeep.items())]
    return {
        "stations": out,
        "heard_only": heard_only,
        "summary": {
            "stations": len(out),
            "online": sum(1 for r in out if r["state"] == "online"),
            "offline_over_10min": sum(1 for r in out if r["offline_over_10min"]),
            "doctor_failing": sum(1 for r in out if r["doctor_exit"] not in (None, 0)),
            "clock_unsynced": sum(1 for r in out if r["clock_synced"] is False),
            "trust_list_newest": newest_trust,
            "trust_list_behind": sum(1 for r in out if r["trust_list_behind"]),
            "config_hashes": len(configs),
            **upkeep_totals(out + heard_only),
        },
        "generated_at": now,
    }


class FleetWriter:
    """Collect parsed updates (paho's thread) and write them from one thread about once a second; bounded by stations."""

    def __init__(self, db_url: str, prefix: str = "checkpoint/v1", interval_s: float = 1.0, wall: Callable[[], float] = time.time) -> None:
        self.db_url = db_url
        self.prefix = prefix
        self.interval_s = interval_s
        self.wall = wall
        self._pending: dict[tuple[str, str, str], StateUpdate] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: psycopg.Connection[Any] | None = None
        self.received = 0
        self.written = 0
        self.dropped: Counter[str] = Counter()
        self.db_errors = 0

    def offer(self, topic: str, payload: bytes) -> None:
        """Parse one message and keep it for the next write (the newest per station and part wins); never blocks on the database."""
        got = parse_state(self.prefix, topic, payload, self.wall())
        with self._lock:
            self.received += 1
            if isinstance(got, str):
                self.dropped[got] += 1
                return
            key = (got.site, got.station, got.part)
            if key not in self._pending and len(self._pending) >= MAX_PENDING_STATIONS * len(_COLUMNS):
                self.dropped["overload"] += 1
                return
            self._pending[key] = got

    def flush(self) -> int:
        """Write what is pending; on a database error keep it for the next try; return rows written."""
        with self._lock:
            batch, self._pending = list(self._pending.values()), {}
        if not batch:
            return 0
        try:
            if self._conn is None or self._conn.closed or self._conn.broken:
                from station.centre.db import connect

                self._conn = connect(self.db_url)
                ensure_fleet_schema(self._conn)
            n = write_updates(self._conn, batch)
        except psycopg.Error as exc:
            self.db_errors += 1
            log.warning("fleet: database write failed, kept for the next try error=%s", str(exc).strip()[:200])
            with self._lock:
                for u in batch:
                    self._pending.setdefault((u.site, u.station, u.part), u)
            return 0
        self.written += n
        return n

    def start(self) -> None:
        """Start the writer thread."""
        self._thread = threading.Thread(target=self._run, name="centre-fleet", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.flush()

    def stop(self) -> None:
        """Write what is pending and stop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        self.flush()
        if self._conn is not None:
            self._conn.close()

    def stats(self) -> dict[str, Any]:
        """Return the counters (``/healthz``)."""
        with self._lock:
            return {"received": self.received, "written": self.written, "dropped": dict(self.dropped), "db_errors": self.db_errors}


class FleetSubscriber:
    """A plain MQTT 5 subscription to the retained status and state topics, handing each message to a :class:`FleetWriter`."""

    def __init__(
        self,
        url: str,
        writer: FleetWriter,
        *,
        prefix: str = "checkpoint/v1",
        client_id: str | None = None,
        username: str | None = None,
        password: str | None = None,
        tls_ca: str | None = None,
    ) -> None:
        import os
        import socket
        import ssl

        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

        from station.ops.mqtt_url import parse_mqtt_url

        endpoint = parse_mqtt_url(url).with_credentials(username, password)
        self.host, self.port = endpoint.host, endpoint.port
        self.filters = status_filters(prefix)
        self.writer = writer
        self.subscribed = threading.Event()
        cid = client_id or f"checkpoint-centre-fleet-{socket.gethostname()}-{os.getpid()}"
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=MQTTProtocolVersion.MQTTv5)
        self._client.suppress_exceptions = True
        if endpoint.username is not None:
            self._client.username_pw_set(endpoint.username, endpoint.password)
        if endpoint.tls:
            self._client.tls_set(ca_certs=tls_ca, cert_reqs=ssl.CERT_REQUIRED)
        self._client.reconnect_delay_set(1, 15)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *a: self.subscribed.set()
        self._client.on_message = self._on_message

    def start(self) -> None:
        """Connect in the background (a clean session: the retained messages come again on every connect)."""
        self._client.connect_async(self.host, self.port, keepalive=30, clean_start=True)
        self._client.loop_start()

    def stop(self) -> None:
        """Disconnect and stop paho's thread."""
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            log.error("fleet: broker refused the connection reason=%s", reason)
            return
        from paho.mqtt.subscribeoptions import SubscribeOptions

        client.subscribe([(f, SubscribeOptions(qos=1)) for f in self.filters])

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = ""
        self.writer.offer(topic, bytes(msg.payload))
