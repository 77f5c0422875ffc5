"""``stationctl registrations list|export|erase``: outsider vehicle registrations (外来车辆登记), on request.

``list`` and ``export`` read (read-only, safe beside the running daemon): ``list`` shows what the
operator page shows (plate, reason, destination, the phone's last four digits), ``export`` writes
the registrations as recorded and published (JSON lines; the phone as its keyed hash and last four
digits, the number itself is never kept). ``erase`` deletes registrations by time range, id and/or
plate after a confirmation (or ``--yes``), with every outbox copy, keeps those whose MQTT message is
still undelivered unless ``--include-pending``, and writes one ``data_audit`` row (without the
plates). The retention purge deletes them after ``retention.events_days`` like screenings
(station/store/visits.py).

Exit codes: 0 done, 1 nothing matched / store unusable / answer no, 2 usage error.
"""

from __future__ import annotations

import json
import os
import pwd
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from station.cli.common import TIME, Ctx, group, station_db


@group("registrations")
def registrations() -> None:
    """List, export or erase outsider vehicle registrations."""


def _plates(plates: tuple[str, ...]) -> list[str]:
    # Imported here: `stationctl --help` must not import numpy (the plate rules live beside the vehicle lane's).
    from station.domain.registration import FormError, check_plate_text

    out = []
    for p in plates:
        try:
            out.append(check_plate_text(p))
        except FormError as exc:
            click.echo(f"{p!r}: {exc}", err=True)
            sys.exit(2)
    return out


def _rows(db: Path, since: float | None, until: float | None, ids: tuple[str, ...], plates: list[str]) -> list[dict[str, Any]]:
    from station.store.visits import registrations_where

    where, params = registrations_where(since, until, ids, plates)
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'registrations'").fetchone() is None:
            return []
        return [json.loads(r) for (r,) in conn.execute(f"SELECT record FROM registrations{where} ORDER BY ts, id", params)]
    finally:
        conn.close()


_SELECT = [
    click.option("--since", type=TIME, default=None, help="Registered at or after this time"),
    click.option("--until", type=TIME, default=None, help="Registered before this time"),
    click.option("--id", "ids", multiple=True, help="This registration (repeatable)"),
    click.option("--plate", "plates", multiple=True, help="This plate's registrations (repeatable)"),
]


_F = TypeVar("_F", bound=Callable[..., Any])


def _select(fn: _F) -> _F:
    """Add the selection options (time range, ids, plates) to a command."""
    for option in reversed(_SELECT):
        fn = option(fn)
    return fn


@registrations.command("list")
@_select
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def registrations_list(
    obj: Ctx, since: float | None, until: float | None, ids: tuple[str, ...], plates: tuple[str, ...], as_json: bool
) -> None:
    """Registrations as the operator page shows them, oldest first."""
    _cfg, db = station_db(obj)
    keys = ("registration_id", "ts", "plate", "reason", "destination", "phone_last4", "operator", "vehicle_id")
    rows = [{k: r.get(k) for k in keys} for r in _rows(db, since, until, ids, _plates(plates))]
    if as_json:
        click.echo(json.dumps({"registrations": rows}, ensure_ascii=False, indent=2))
    else:
        for r in rows:
            ts = r["ts"]
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(ts if isinstance(ts, (int, float)) else 0))
            click.echo(f"{when}  {r['plate']}  {r['reason']}  {r['destination']}  ****{r['phone_last4']}  {r['registration_id']}")
    sys.exit(0 if rows or not (ids or plates) else 1)


@registrations.command("export")
@_select
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False, allow_dash=True), default="-", show_default=True)
@click.pass_obj
def registrations_export(
    obj: Ctx, since: float | None, until: float | None, ids: tuple[str, ...], plates: tuple[str, ...], out: Path
) -> None:
    """Registrations as JSON lines (oldest first), as recorded and published; nothing is changed."""
    _cfg, db = station_db(obj)
    rows = _rows(db, since, until, ids, _plates(plates))
    stream = sys.stdout if str(out) == "-" else open(out, "w", encoding="utf-8")  # noqa: SIM115
    try:
        for r in rows:
            stream.write(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n")
    finally:
        if stream is not sys.stdout:
            stream.close()
    click.echo(f"exported {len(rows)} registration(s)", err=True)
    sys.exit(0 if rows or not (ids or plates) else 1)


@registrations.command("erase")
@_select
@click.option("--include-pending", is_flag=True, help="Also registrations whose MQTT message is not delivered yet (never sent then)")
@click.option("--note", default="", help="Why (kept in the audit row), e.g. a request reference")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def registrations_erase(
    obj: Ctx,
    since: float | None,
    until: float | None,
    ids: tuple[str, ...],
    plates: tuple[str, ...],
    include_pending: bool,
    note: str,
    yes: bool,
    as_json: bool,
) -> None:
    """Delete registrations (and every outbox copy) by time range, id and/or plate."""
    from station.store.events import SqliteEventStore, StoreError
    from station.store.visits import erase_registrations

    if since is None and until is None and not ids and not plates:
        click.echo("give --since/--until, --id and/or --plate (refusing to erase everything by default)", err=True)
        sys.exit(2)
    clean = _plates(plates)
    cfg, db = station_db(obj)
    matched = len(_rows(db, since, until, ids, clean))
    if matched == 0:
        click.echo("no registrations match", err=True)
        sys.exit(1)
    if not yes and not click.confirm(f"erase {matched} registration(s) from {db}? This cannot be undone", default=False):
        click.echo("nothing erased", err=True)
        sys.exit(1)
    try:
        store = SqliteEventStore(db, station_id=cfg.station.id, site=cfg.station.site, topic_prefix=cfg.mqtt.topic_prefix)
    except (StoreError, sqlite3.Error) as exc:
        click.echo(f"cannot open {db}: {exc}", err=True)
        sys.exit(1)
    try:
        user = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        user = str(os.getuid())
    actor = f"stationctl registrations erase (user {os.environ.get('SUDO_USER') or user})"
    try:
        result = erase_registrations(
            store, since=since, until=until, ids=ids, plates=clean, include_pending=include_pending, actor=actor, note=note
        )
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(f"erased {result['registrations']} registration(s), {result['outbox']} outbox message(s)")
        if result["held"]:
            click.echo(f"kept {len(result['held'])} whose message is not delivered yet (--include-pending to erase them too)")
    sys.exit(0 if result["registrations"] else 1)
