"""``stationctl data export|erase|purge``: personal data in the event store, on request.

``export`` reads (read-only, safe beside the running daemon) and writes JSON lines, one event each,
exactly as recorded (the ``as_record()`` dict that was also published); the kept face/thermal crops
only with ``--crops-to DIR``. ``erase`` deletes events by
time range and/or event id after a confirmation (or ``--yes``), keeps events whose MQTT message is
still undelivered unless ``--include-pending`` (then the message is deleted too and never sent),
writes one ``data_audit`` row, and can ``--vacuum`` the file afterwards so deleted rows are not left
in free pages. ``purge`` runs the ``[retention]`` purge now (through the daemon when it runs, so there
is one writer). See ``station/store/retention.py`` for the rules.

Times: ``2026-11-24``, ``2026-11-24T08:00`` (local time unless an offset is given), unix seconds,
or an age such as ``7d`` / ``12h`` / ``30m`` (that long before now).

Exit codes: 0 done, 1 nothing matched / store unusable / answer no, 2 usage error.
"""

from __future__ import annotations

import json
import os
import pwd
import sqlite3
import sys
import time
from pathlib import Path

import click

from station.cli.common import TIME, ControlError, ControlUnavailable, Ctx, ask_daemon, group, station_db
from station.store.retention import events_where


@group("data")
def data() -> None:
    """Export or erase recorded events; run the retention purge."""


@data.command("export")
@click.option("--since", type=TIME, default=None, help="Events at or after this time")
@click.option("--until", type=TIME, default=None, help="Events before this time")
@click.option("--event-id", "event_ids", multiple=True, help="This event (repeatable)")
@click.option(
    "--out",
    "out",
    type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
    default="-",
    show_default=True,
    help="File, or - for stdout",
)
@click.option(
    "--crops-to",
    "crops_to",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Also copy the events' kept face/thermal crops into this directory (each line then names its files under 'crops')",
)
@click.pass_obj
def data_export(obj: Ctx, since: float | None, until: float | None, event_ids: tuple[str, ...], out: Path, crops_to: Path | None) -> None:
    """Events as JSON lines (oldest first), as recorded and published; nothing is changed.

    Kept crops (pictures of people) are exported only with ``--crops-to``.
    """
    from station.store.retention import CROPS_DIR

    _cfg, db = station_db(obj)
    where, params = events_where(since, until, event_ids)
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    has_crops = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'event_crops'").fetchone() is not None
    if crops_to is not None:
        crops_to.mkdir(mode=0o700, parents=True, exist_ok=True)
    stream = sys.stdout if str(out) == "-" else open(out, "w", encoding="utf-8")  # noqa: SIM115
    n = copied = 0
    try:
        for (record,) in conn.execute(f"SELECT record FROM events{where} ORDER BY ts, id", params):
            event = json.loads(record)
            if crops_to is not None and has_crops:
                files: dict[str, str] = {}
                for kind, name in conn.execute("SELECT kind, file FROM event_crops WHERE event_id = ?", (event.get("event_id"),)):
                    src = db.parent / CROPS_DIR / Path(name).name
                    try:
                        (crops_to / src.name).write_bytes(src.read_bytes())
                    except OSError as exc:  # expired or erased meanwhile: the line says which were copied
                        click.echo(f"crop not copied: {src.name}: {exc.strerror}", err=True)
                        continue
                    os.chmod(crops_to / src.name, 0o600)
                    files[kind] = src.name
                    copied += 1
                event["crops"] = files
            stream.write(json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "\n")
            n += 1
    finally:
        conn.close()
        if stream is not sys.stdout:
            stream.close()
    click.echo(f"exported {n} event(s)" + (f", {copied} crop file(s) to {crops_to}" if crops_to is not None else ""), err=True)
    sys.exit(0 if n or not event_ids else 1)


def _actor() -> str:
    try:
        user = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        user = str(os.getuid())
    return f"stationctl data erase (user {os.environ.get('SUDO_USER') or user})"


@data.command("erase")
@click.option("--since", type=TIME, default=None, help="Events at or after this time")
@click.option("--until", type=TIME, default=None, help="Events before this time")
@click.option("--event-id", "event_ids", multiple=True, help="This event (repeatable)")
@click.option(
    "--include-pending", is_flag=True, help="Also events whose MQTT message is not delivered yet (the message is deleted, never sent)"
)
@click.option("--note", default="", help="Why (kept in the audit row), e.g. a request reference")
@click.option("--vacuum", is_flag=True, help="VACUUM afterwards so deleted data does not linger in free pages")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def data_erase(
    obj: Ctx,
    since: float | None,
    until: float | None,
    event_ids: tuple[str, ...],
    include_pending: bool,
    note: str,
    vacuum: bool,
    yes: bool,
    as_json: bool,
) -> None:
    """Delete events (and their gate actions, outbox copies and kept crops) by time range and/or event id."""
    from station.store.events import SqliteEventStore, StoreError
    from station.store.retention import erase

    if since is None and until is None and not event_ids:
        click.echo("give --since/--until and/or --event-id (refusing to erase everything by default)", err=True)
        sys.exit(2)
    cfg, db = station_db(obj)
    where, params = events_where(since, until, event_ids)
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        matched = conn.execute(f"SELECT count(*) FROM events{where}", params).fetchone()[0]
    finally:
        conn.close()
    if matched == 0:
        click.echo("no events match", err=True)
        sys.exit(1)
    if not yes:
        span = " ".join(
            filter(
                None,
                [
                    f"since {time.strftime('%Y-%m-%d %H:%M', time.localtime(since))}" if since is not None else "",
                    f"until {time.strftime('%Y-%m-%d %H:%M', time.localtime(until))}" if until is not None else "",
                    f"ids {', '.join(event_ids)}" if event_ids else "",
                ],
            )
        )
        if not click.confirm(f"erase {matched} event(s) {span} from {db}? This cannot be undone", default=False):
            click.echo("nothing erased", err=True)
            sys.exit(1)
    try:
        # A second writer beside the daemon is fine: SQLite (WAL, busy timeout) serialises the writes.
        store = SqliteEventStore(db, station_id=cfg.station.id, site=cfg.station.site, topic_prefix=cfg.mqtt.topic_prefix)
    except (StoreError, sqlite3.Error) as exc:
        click.echo(f"cannot open {db}: {exc}", err=True)
        sys.exit(1)
    try:
        result = erase(store, since=since, until=until, event_ids=event_ids, include_pending=include_pending, actor=_actor(), note=note)
    finally:
        store.close()
    if vacuum:
        conn = sqlite3.connect(db, timeout=30)
        try:
            conn.execute("VACUUM")
        finally:
            conn.close()
        result["vacuumed"] = True
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(
            f"erased {result['events']} event(s), {result['gate_actions']} gate action(s), {result['outbox']} outbox message(s), "
            f"{result.get('crops', 0)} crop file(s)" + (", file vacuumed" if vacuum else "")
        )
        if result["held"]:
            click.echo(
                f"kept {len(result['held'])} event(s) whose message is not delivered yet "
                f"(--include-pending to erase them too): {', '.join(result['held'][:10])}"
            )
        if result["not_found"]:
            click.echo(f"not found: {', '.join(result['not_found'])}")
    sys.exit(0 if result["events"] else 1)


@data.command("purge")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def data_purge(obj: Ctx, as_json: bool) -> None:
    """Apply [retention] now (the daemon does this every retention.interval_s)."""
    from station.store.events import SqliteEventStore
    from station.store.retention import purge

    try:
        result, path = ask_daemon(obj.data_dir(), "retention_run", timeout_s=120.0)
        result["via"] = f"daemon ({path})"
    except ControlUnavailable:
        cfg, db = station_db(obj)
        store = SqliteEventStore(db, station_id=cfg.station.id, site=cfg.station.site, topic_prefix=cfg.mqtt.topic_prefix)
        try:
            result = purge(store, obj.data_dir(), cfg.retention.events_days, cfg.retention.face_crops_days).as_dict()
        finally:
            store.close()
        result["via"] = "stationctl (daemon not running)"
    except ControlError as exc:
        click.echo(f"the daemon could not purge: {exc}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(
            f"purged {result['events']} event(s), {result['vehicles']} vehicle event(s), {result['outbox']} outbox row(s), "
            f"{result['crops']} crop file(s); {result['held']} kept (undelivered) — via {result['via']}"
        )
