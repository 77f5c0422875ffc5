"""Tracing (可溯) at the centre: where a code holder or a plate was seen, who passed a checkpoint with a fever; every query audited.

The centre holds keyed references only (``events.trace_ref`` with ``trace_key``, the district key's
id; station/codes/trace_key.py). A tracer asks with a reference, or with a plate or holder id that
is turned into references *in the tracer's process* under the district key file(s) held by the key
officer (``--key-file``, one per key still in the kept data); the key never enters the database and
the raw value is never written anywhere (the audit row names the references asked for).

Every query, answered or refused, is written to ``trace_audit`` (who, their role, which query, its
parameters, why) in the same transaction as the answer is read: no answer without its audit row. A
query without a reason (at least ``MIN_REASON_CHARS`` characters) is refused, and so is a user who is
not a ``tracer`` or ``admin``.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from station.centre.db import dated_events
from station.codes.trace_key import DistrictKeyError, key_id_of, parse_key, trace_ref

TRACE_ROLES = ("tracer", "admin")
MIN_REASON_CHARS = 8
MAX_REASON_CHARS = 500
MAX_DAYS = 400
MAX_ROWS = 100_000
DEFAULT_FEVER_C = 37.3
REF = re.compile(r"^[0-9a-f]{32}$")

AUDIT_SCHEMA = """
CREATE TABLE IF NOT EXISTS trace_audit (
  id bigserial PRIMARY KEY,
  at timestamptz NOT NULL DEFAULT now(),
  username text NOT NULL,
  role text,
  query text NOT NULL,
  params jsonb NOT NULL,
  reason text NOT NULL,
  ok boolean NOT NULL,
  rows integer,
  error text
);
"""

# Times are true times: a record's clock-corrected time where a correction set one (db.dated_events), else its ts.
_ROW = "site, station, kind, event_id, msg_id, decision, reason, temperature_c, code_colour, detail, trace_ref, trace_key"
SEEN_SQL = f"""
SELECT at, site, station, kind, event_id, decision, reason, temperature_c, code_colour, detail, trace_ref, trace_key FROM (
  SELECT DISTINCT ON (site, station, coalesce(event_id, msg_id)) *
  FROM {dated_events(_ROW, "trace_ref = ANY(%(refs)s)")} d
  ORDER BY site, station, coalesce(event_id, msg_id), kind DESC) e
ORDER BY at LIMIT %(limit)s
"""
# A screening and its alarm copy are one passage: DISTINCT ON keeps the screening row (kind DESC).
_FEVER_WHERE = (
    "site = %(site)s AND station = %(station)s AND kind IN ('screening', 'alarm') AND event_id IS NOT NULL"
    " AND (decision = 'deny_fever' OR temperature_c >= %(fever_c)s)"
)
FEVER_SQL = f"""
SELECT at, site, station, kind, event_id, decision, reason, temperature_c, code_colour, detail, trace_ref, trace_key FROM (
  SELECT DISTINCT ON (event_id) *
  FROM {dated_events(_ROW, _FEVER_WHERE)} d
  ORDER BY event_id, kind DESC) e
ORDER BY at LIMIT %(limit)s
"""
COLUMNS = (
    "ts",
    "site",
    "station",
    "kind",
    "event_id",
    "decision",
    "reason",
    "temperature_c",
    "code_colour",
    "detail",
    "trace_ref",
    "trace_key",
)


class TraceRefused(ValueError):
    """A query refused before it ran (no reason, not a tracer, bad parameter); audited with this message."""


@dataclass(frozen=True, slots=True)
class DistrictKey:
    """One district key as the key officer holds it (the station's ``district-key.json`` form, or bare hex)."""

    key_id: str
    key: bytes


def load_key_file(path: Path) -> DistrictKey:
    """Return the key in ``path`` (JSON ``{"key": hex, …}`` or hex text); raise ``DistrictKeyError`` naming the file."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise DistrictKeyError(f"{path}: cannot read: {type(exc).__name__}") from None
    try:
        doc = json.loads(text) if text.startswith("{") else {"key": text}
        key = parse_key(doc.get("key") if isinstance(doc, dict) else None)
    except (ValueError, DistrictKeyError) as exc:
        raise DistrictKeyError(f"{path}: {exc}") from None
    return DistrictKey(key_id_of(key), key)


def refs_for(domain: str, value: str, keys: Sequence[DistrictKey]) -> list[str]:
    """Return the references of ``value`` under every key (a rotated key's events are found under the old one)."""
    if not keys:
        raise TraceRefused("a plate or holder id needs --key-file (the district key it was hashed under)")
    if not value.strip():
        raise TraceRefused(f"empty {domain}")
    return [trace_ref(k.key, domain, value.strip()) for k in keys]


def ensure_tracing_schema(conn: psycopg.Connection[Any]) -> None:
    """Create ``trace_audit`` when missing."""
    with conn.transaction():
        conn.execute(AUDIT_SCHEMA)


def user_role(conn: psycopg.Connection[Any], name: str) -> str | None:
    """Return the role of centre user ``name``, or None when there is no such user."""
    row = conn.execute("SELECT role FROM centre_users WHERE name = %s", (name,)).fetchone()
    return str(row[0]) if row else None


def _check_reason(reason: str | None) -> str:
    text = " ".join((reason or "").split())
    if len(text) < MIN_REASON_CHARS:
        raise TraceRefused(f"a reason is required (at least {MIN_REASON_CHARS} characters): say why this trace is needed")
    return text[:MAX_REASON_CHARS]


def _audit(
    conn: psycopg.Connection[Any],
    user: str,
    role: str | None,
    query: str,
    params: dict[str, Any],
    reason: str,
    ok: bool,
    rows: int | None,
    error: str | None,
) -> None:
    conn.execute(
        "INSERT INTO trace_audit (username, role, query, params, reason, ok, rows, error) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (user, role, query, json.dumps(params, sort_keys=True), reason, ok, rows, error),
    )


def _run(
    conn: psycopg.Connection[Any],
    user: str,
    query: str,
    params: dict[str, Any],
    reason: str | None,
    sql: str,
    args: Mapping[str, Any],
    problem: str | None = None,
) -> list[dict[str, Any]]:
    """Check who and why, read the answer and write its audit row in one transaction; a refusal is audited too."""
    role = user_role(conn, user)
    conn.rollback()  # the role read must not hold a snapshot across the audit
    try:
        if problem:
            raise TraceRefused(problem)
        why = _check_reason(reason)
        if role not in TRACE_ROLES:
            raise TraceRefused(
                f"user {user!r} {'has role ' + repr(role) if role else 'does not exist'}: tracing needs role tracer or admin"
            )
    except TraceRefused as exc:
        with conn.transaction():
            _audit(conn, user, role, query, params, " ".join((reason or "").split())[:MAX_REASON_CHARS], False, None, str(exc))
        raise
    with conn.transaction():
        rows = [dict(zip(COLUMNS, r, strict=True)) for r in conn.execute(sql, args).fetchall()]
        _audit(conn, user, role, query, params, why, True, len(rows), None)
    return rows


def where_seen(
    conn: psycopg.Connection[Any],
    user: str,
    reason: str | None,
    refs: Iterable[str],
    *,
    days: int,
    now: dt.datetime | None = None,
    export: str | None = None,
) -> list[dict[str, Any]]:
    """Return every passage of these references in the last ``days`` days, oldest first (audited; ``export``: e.g. ``csv``)."""
    wanted = sorted({r.strip().lower() for r in refs})[:64]
    problem = None
    if not wanted or not all(REF.match(r) for r in wanted):
        problem, wanted = "references must be 32 hex characters", ["(malformed)"]
    elif not 1 <= days <= MAX_DAYS:
        problem = f"days {days}: 1-{MAX_DAYS}"
    until = now or dt.datetime.now(dt.UTC)
    since = until - dt.timedelta(days=days)
    params: dict[str, Any] = {"refs": wanted, "days": days, "from": since.isoformat(), "to": until.isoformat()}
    if export:
        params["export"] = export
    args = {"refs": wanted, "start": since, "end": until, "limit": MAX_ROWS}
    return _run(conn, user, "where_seen", params, reason, SEEN_SQL, args, problem)


def fever_passages(
    conn: psycopg.Connection[Any],
    user: str,
    reason: str | None,
    site: str,
    station: str,
    start: dt.datetime,
    end: dt.datetime,
    *,
    fever_c: float = DEFAULT_FEVER_C,
    export: str | None = None,
) -> list[dict[str, Any]]:
    """Return who passed ``site/station`` between ``start`` and ``end`` with a fever (denied for it, or at least ``fever_c``; audited)."""
    problem = None
    if end <= start:
        problem = "the end of the window must be after its start"
    elif end - start > dt.timedelta(days=MAX_DAYS):
        problem = f"a window of at most {MAX_DAYS} days"
    params: dict[str, Any] = {"site": site, "station": station, "from": start.isoformat(), "to": end.isoformat(), "fever_c": fever_c}
    if export:
        params["export"] = export
    args = {"site": site, "station": station, "start": start, "end": end, "fever_c": fever_c, "limit": MAX_ROWS}
    return _run(conn, user, "fever_passages", params, reason, FEVER_SQL, args, problem)


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    """Return the rows as CSV (a header, times ISO 8601 UTC); a cell starting with = + - @ is quoted as text."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        cells = []
        for c in COLUMNS:
            v = row.get(c)
            if isinstance(v, dt.datetime):
                v = v.astimezone(dt.UTC).isoformat()
            text = "" if v is None else str(v)
            if text[:1] in ("=", "+", "-", "@") and c not in ("temperature_c",):
                text = "'" + text  # a spreadsheet must not run a station-supplied cell as a formula
            cells.append(text)
        writer.writerow(cells)
    return out.getvalue()


def audit_log(conn: psycopg.Connection[Any], limit: int = 100, user: str | None = None) -> list[dict[str, Any]]:
    """Return the newest audit rows (for an admin; ``user``: only that user's own)."""
    cur = conn.execute(
        "SELECT id, at, username, role, query, params, reason, ok, rows, error FROM trace_audit"
        " WHERE %(user)s::text IS NULL OR username = %(user)s ORDER BY id DESC LIMIT %(limit)s",
        {"user": user, "limit": limit},
    )
    cols = [c.name for c in cur.description or ()]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
