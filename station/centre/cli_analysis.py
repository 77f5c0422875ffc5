"""``station centre trace|district-key|reports|forecast|fleet``: the centre's tracing, reports, flow forecast and fleet view.

* ``station centre trace seen --db URL --user NAME --reason TEXT (--ref HEX | --plate P | --holder ID)
  [--key-file F]… [--days N] [--csv|--json]`` — where and when a code holder or plate was seen;
* ``station centre trace fever --db URL --user NAME --reason TEXT --site S --station X --from T1 --to T2``
  — who passed a checkpoint with a fever;
* ``station centre district-key new --out FILE --version N`` — a new district key for the key officer;
* ``station centre reports --db URL (--day D | --week D) [--by site|station] [--csv|--json]``;
* ``station centre forecast --db URL --site S --station X [--day D] [--weeks N] --json``;
* ``station centre fleet --db URL --json``.

Tracing asks for the user's centre password (``--password-stdin`` or a prompt): the audit's "who" is
a user who proved it. Exit codes: 0 done, 1 runtime failure (database unreachable), 2 usage error or
a refused query.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

import click

from station.ops.redact import redact_url


def _fail(message: str, code: int = 2) -> None:
    click.echo(message, err=True)
    sys.exit(code)


def _when(text: str, what: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        _fail(f"{what} {text!r}: expected an ISO 8601 time (2026-12-04T08:00+08:00)")
    if value.tzinfo is None:
        _fail(f"{what} {text!r}: give the time zone (…+08:00 or …Z)")
    return value


def _login(conn: Any, user: str, password_stdin: bool) -> None:
    """Check the user's password against ``centre_users`` (the role is checked, and audited, by the query)."""
    from station.board.auth import verify_password

    password = sys.stdin.readline().rstrip("\r\n") if password_stdin else click.prompt("password", hide_input=True)
    row = conn.execute("SELECT password FROM centre_users WHERE name = %s", (user,)).fetchone()
    conn.rollback()
    if row is None or not verify_password(password, str(row[0])):
        _fail(f"user {user!r}: unknown user or wrong password")


def _emit(rows: list[dict[str, Any]], as_csv: bool, as_json: bool) -> None:
    from station.centre.tracing import COLUMNS, to_csv

    if as_csv:
        click.echo(to_csv(rows), nl=False)
    elif as_json:
        click.echo(json.dumps(rows, default=lambda v: v.isoformat() if isinstance(v, dt.datetime) else str(v), ensure_ascii=False))
    else:
        for row in rows:
            click.echo("  ".join("" if row[c] is None else str(row[c]) for c in COLUMNS))
        click.echo(f"{len(rows)} rows", err=True)


_db = click.option("--db", "db_url", required=True, help="postgresql://… of the centre's database")
_user = click.option("--user", required=True, help="Centre user (role tracer or admin)")
_reason = click.option("--reason", default="", help="Why this trace is needed (required; audited)")
_pwd = click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin (else prompted)")
_out = [
    click.option("--csv", "as_csv", is_flag=True, help="CSV on stdout"),
    click.option("--json", "as_json", is_flag=True, help="One JSON array on stdout"),
]


def _outputs(f: Any) -> Any:
    for opt in reversed(_out):
        f = opt(f)
    return f


@click.group("trace")
def trace() -> None:
    """Tracing (可溯) for a tracer: every query needs a reason and is audited in the database."""


@trace.command("seen")
@_db
@_user
@_reason
@_pwd
@click.option("--ref", "refs", multiple=True, help="A trace reference (32 hex) from an earlier answer")
@click.option("--plate", default=None, help="A plate; hashed here under each --key-file, never sent to the database")
@click.option("--holder", default=None, help="A code holder id; hashed here under each --key-file")
@click.option("--id-number", default=None, help="A resident ID number; hashed here under each --key-file")
@click.option("--key-file", "key_files", multiple=True, type=click.Path(dir_okay=False, path_type=Path), help="District key file")
@click.option("--days", type=click.IntRange(1, 400), default=14, show_default=True)
@_outputs
def trace_seen(
    db_url: str,
    user: str,
    reason: str,
    password_stdin: bool,
    refs: tuple[str, ...],
    plate: str | None,
    holder: str | None,
    id_number: str | None,
    key_files: tuple[Path, ...],
    days: int,
    as_csv: bool,
    as_json: bool,
) -> None:
    """Show where and when a code holder, an ID card or a plate was seen in the last N days."""
    import psycopg

    from station.centre import db, tracing
    from station.codes.trace_key import DistrictKeyError

    wanted = list(refs)
    try:
        keys = [tracing.load_key_file(p) for p in key_files]
        if plate:
            wanted += tracing.refs_for("plate", plate, keys)
        if holder:
            wanted += tracing.refs_for("holder", holder, keys)
        if id_number:
            wanted += tracing.refs_for("idcard", id_number, keys)
    except (DistrictKeyError, tracing.TraceRefused) as exc:
        _fail(f"trace seen: {exc}")
    if not wanted:
        _fail("trace seen: give --ref, --plate, --holder or --id-number")
    try:
        with db.connect(db_url) as conn:
            db.ensure_schema(conn)
            tracing.ensure_tracing_schema(conn)
            _login(conn, user, password_stdin)
            rows = tracing.where_seen(conn, user, reason, wanted, days=days)
    except tracing.TraceRefused as exc:
        _fail(f"trace seen refused (audited): {exc}")
    except psycopg.Error as exc:
        _fail(f"trace seen: database {redact_url(db_url)}: {str(exc).strip()}", 1)
    _emit(rows, as_csv, as_json)


@trace.command("fever")
@_db
@_user
@_reason
@_pwd
@click.option("--site", required=True)
@click.option("--station", required=True)
@click.option("--from", "start", required=True, help="ISO 8601 time with its zone")
@click.option("--to", "end", required=True, help="ISO 8601 time with its zone")
@click.option("--fever-c", type=float, default=37.3, show_default=True, help="A reading at least this counts as fever")
@_outputs
def trace_fever(
    db_url: str,
    user: str,
    reason: str,
    password_stdin: bool,
    site: str,
    station: str,
    start: str,
    end: str,
    fever_c: float,
    as_csv: bool,
    as_json: bool,
) -> None:
    """Who passed checkpoint SITE/STATION between two times with a fever (their trace references)."""
    import psycopg

    from station.centre import db, tracing

    t1, t2 = _when(start, "--from"), _when(end, "--to")
    try:
        with db.connect(db_url) as conn:
            db.ensure_schema(conn)
            tracing.ensure_tracing_schema(conn)
            _login(conn, user, password_stdin)
            rows = tracing.fever_passages(conn, user, reason, site, station, t1, t2, fever_c=fever_c)
    except tracing.TraceRefused as exc:
        _fail(f"trace fever refused (audited): {exc}")
    except psycopg.Error as exc:
        _fail(f"trace fever: database {redact_url(db_url)}: {str(exc).strip()}", 1)
    _emit(rows, as_csv, as_json)


@click.group("district-key")
def district_key() -> None:
    """Manage the district tracing key, for the key officer (kept apart from the centre's database)."""


@district_key.command("new")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="File to create (0600)")
@click.option("--version", "version", type=click.IntRange(1), required=True, help="Higher than the key it replaces")
def district_key_new(out: Path, version: int) -> None:
    """Make a new 32-byte district key; print its id (push it with a signed district-key command)."""
    import os

    from station.codes.trace_key import key_id_of

    if out.exists():
        _fail(f"--out {out}: exists; a key is never overwritten")
    key = os.urandom(32)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"version": version, "key": key.hex(), "key_id": key_id_of(key)}, fh)
    click.echo(key_id_of(key))


def _tz(conn: Any) -> Any:
    from zoneinfo import ZoneInfo

    from station.centre import db

    return ZoneInfo(db.ensure_schema(conn))


@click.command("reports")
@_db
@click.option("--day", default=None, help="YYYY-MM-DD: one day's report")
@click.option("--week", default=None, help="YYYY-MM-DD: the 7 days from this day")
@click.option(
    "--tree",
    "tree_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Roll up along this district tree (TOML) instead of the one saved in the database",
)
@click.option("--csv", "as_csv", is_flag=True, help="CSV on stdout (one row per tree node and per station)")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout")
def reports(db_url: str, day: str | None, week: str | None, tree_file: Path | None, as_csv: bool, as_json: bool) -> None:
    """Print a daily or weekly report per station (and per tree level): screened, decisions, fevers, vehicles, registrations, gaps."""
    import psycopg

    from station.centre import db
    from station.centre import reports as rep

    if (day is None) == (week is None):
        _fail("give one of --day or --week")
    text = day or week or ""
    try:
        first = dt.date.fromisoformat(text)
    except ValueError:
        _fail(f"--{'day' if day else 'week'} {text!r}: expected YYYY-MM-DD")
    tree = None
    if tree_file is not None:
        from station.centre.tree import TreeError, parse_tree

        try:
            parsed = parse_tree(tree_file.read_text(encoding="utf-8"))
        except OSError as exc:
            _fail(f"--tree {tree_file}: {exc}")
        if isinstance(parsed, TreeError):
            _fail(f"--tree {tree_file}: {parsed}")
        tree = parsed
    try:
        with db.connect(db_url) as conn:
            tz = _tz(conn)
            tree_version: int | str | None = str(tree_file) if tree_file is not None else None
            if tree is None:
                tree, tree_version = _saved_tree(conn)
            body = rep.period_report(conn, first, 1 if day else 7, tz, tree)
            body["tree_version"] = tree_version
    except psycopg.Error as exc:
        _fail(f"centre reports: database {redact_url(db_url)}: {str(exc).strip()}", 1)
    if as_csv:
        click.echo(rep.report_csv(body), nl=False)
    elif as_json:
        click.echo(json.dumps(body, ensure_ascii=False, sort_keys=True))
    else:
        t = body["totals"]
        click.echo(f"{body['from']} .. {body['to']} ({body['timezone']}): {len(body['stations'])} stations")
        click.echo("  " + ", ".join(f"{k} {t[k]}" for k in rep.COUNTERS))
        for s in body["stations"]:
            click.echo(f"  {s['site']}/{s['station']}: screened {s['screened']}, fevers {s['fevers']}, missing {s['missing_events']}")


def _saved_tree(conn: Any) -> tuple[Any, int | None]:
    """Return the tree saved in the database (``station centre tree load`` or the page) and its version, or (None, None)."""
    from station.centre.tree import TreeError, parse_tree

    row = conn.execute("SELECT to_regclass('centre_tree') IS NOT NULL").fetchone()
    saved = conn.execute("SELECT version, toml FROM centre_tree ORDER BY version DESC LIMIT 1").fetchone() if row and row[0] else None
    conn.rollback()
    if saved is None:
        return None, None
    parsed = parse_tree(str(saved[1]))
    if isinstance(parsed, TreeError):  # a saved version is checked when saved; this is only a backstop
        click.echo(f"saved tree version {saved[0]} does not parse ({parsed}); reporting per station only", err=True)
        return None, None
    return parsed, int(saved[0])


@click.command("forecast")
@_db
@click.option("--site", required=True)
@click.option("--station", required=True)
@click.option("--day", default=None, help="YYYY-MM-DD to forecast (default: tomorrow in the centre's zone)")
@click.option("--weeks", type=click.IntRange(1, 12), default=4, show_default=True, help="Weeks of history used")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout")
def forecast(db_url: str, site: str, station: str, day: str | None, weeks: int, as_json: bool) -> None:
    """Forecast next-day hourly flow at one checkpoint, with its error on the last 7 held-out days."""
    import psycopg

    from station.centre import db
    from station.centre import reports as rep

    try:
        with db.connect(db_url) as conn:
            tz = _tz(conn)
            try:
                the_day = dt.date.fromisoformat(day) if day else dt.datetime.now(tz).date() + dt.timedelta(days=1)
            except ValueError:
                _fail(f"--day {day!r}: expected YYYY-MM-DD")
            body = rep.forecast_report(conn, site, station, the_day, tz, weeks)
    except psycopg.Error as exc:
        _fail(f"centre forecast: database {redact_url(db_url)}: {str(exc).strip()}", 1)
    if as_json:
        click.echo(json.dumps(body, ensure_ascii=False, sort_keys=True, allow_nan=False, default=str))
        return
    click.echo(f"{site}/{station} {body['day']}: {body['total']} expected, peak hour {body['peak_hour']} ({body['model']})")
    for h, n in enumerate(body["hourly"]):
        click.echo(f"  {h:02d}:00 {n:7.1f}")
    if body["held_out"]:
        m, b = body["held_out"]["weekday_hour_mean_trend"], body["held_out"]["seasonal_naive"]
        click.echo(f"  held-out days: MAE {m['mae']} / MAPE {m['mape_pct']} % (same hour last week: {b['mae']} / {b['mape_pct']} %)")


@click.command("fleet")
@_db
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout")
def fleet(db_url: str, as_json: bool) -> None:
    """Show every station's software, lists, config hash, last doctor result, clock, disk and outbox."""
    import psycopg

    from station.centre import db
    from station.centre import fleet as fl

    try:
        with db.connect(db_url) as conn:
            fl.ensure_fleet_schema(conn)
            body = fl.fleet_view(conn)
    except psycopg.Error as exc:
        _fail(f"centre fleet: database {redact_url(db_url)}: {str(exc).strip()}", 1)
    if as_json:
        click.echo(json.dumps(body, ensure_ascii=False, sort_keys=True, default=str))
        return
    s = body["summary"]
    click.echo(
        f"{s['stations']} stations, {s['online']} online, {s['offline_over_10min']} offline > 10 min, "
        f"{s['doctor_failing']} doctor failing, {s['clock_unsynced']} clock unsynced, trust list newest {s['trust_list_newest']} "
        f"({s['trust_list_behind']} behind), {s['config_hashes']} config hashes, {s['missing_events']} missing events at "
        f"{s['stations_missing']} stations ({s['repairs_given_up']} with repairs given up, {s['repairs_not_kept']} not kept)"
    )
    for r in body["stations"]:
        click.echo(
            f"  {r['site']}/{r['station']}: {r['state']} v{r['version']} trust {r['trust_list_version']} residents "
            f"{r['resident_list_version']} config {r['config_hash']} doctor {r['doctor_exit']} clock_synced {r['clock_synced']} "
            f"disk_free_mb {r['disk_free_mb']} outbox {r['outbox_pending']} missing {r['missing_events']}{_repair_text(r['repair'])}"
        )


def _repair_text(repair: dict[str, Any] | None) -> str:
    """Return the open gap repairs of a fleet row as `` repair asked 2, given_up 1 (answer)``, or nothing."""
    from station.centre.fleet import REPAIR_STATES

    if not repair:
        return ""
    states = ", ".join(f"{k} {repair[k]}" for k in REPAIR_STATES if repair.get(k))
    answer = f" ({repair['answer']})" if repair.get("answer") else ""
    return f" repair {states or 'none open'}{answer}"


@click.command("push")
@_db
@_user
@_pwd
@click.option("--reason", required=True, help="Why (kept in the audit)")
@click.option("--mqtt", "mqtt_url", required=True, help="mqtt://host:port of the district broker")
@click.option("--mqtt-user", default=None, help="Broker user; the password comes from $CHECKPOINT_MQTT_PASSWORD")
@click.option("--signing-key", required=True, type=click.Path(dir_okay=False, path_type=Path), help="The centre's command key (PEM)")
@click.option("--command", "command", required=True, type=click.Choice(["trust-list", "resident-plates", "set-threshold", "district-key"]))
@click.option("--args-file", type=click.Path(dir_okay=False, path_type=Path), default=None, help="The command's args (JSON object)")
@click.option("--key-file", type=click.Path(dir_okay=False, path_type=Path), default=None, help="district-key: the key officer's key file")
@click.option("--to", "targets", multiple=True, help="site/station (repeatable)")
@click.option("--all", "to_all", is_flag=True, help="Every station the centre has heard")
@click.option("--topic-prefix", default="checkpoint/v1", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON array of outcomes on stdout")
def push_cmd(
    db_url: str,
    user: str,
    password_stdin: bool,
    reason: str,
    mqtt_url: str,
    mqtt_user: str | None,
    signing_key: Path,
    command: str,
    args_file: Path | None,
    key_file: Path | None,
    targets: tuple[str, ...],
    to_all: bool,
    topic_prefix: str,
    as_json: bool,
) -> None:
    """Send a signed trust list, resident list, threshold or district key to stations (admin); every push audited."""
    import os

    import psycopg

    from station.centre import db
    from station.centre import push as pu
    from station.link.command_auth import KeyListError, load_private_key

    if len(" ".join(reason.split())) < 8:
        _fail("--reason: at least 8 characters: say why")
    args: dict[str, Any] = {}
    if command == "district-key":
        if key_file is None:
            _fail("district-key needs --key-file")
        assert key_file is not None
        try:
            doc = json.loads(key_file.read_text(encoding="utf-8"))
            from station.codes.trace_key import key_id_of, parse_key

            key = parse_key(doc.get("key"))
            args = {"version": int(doc["version"]), "key": key.hex(), "key_id": key_id_of(key)}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            _fail(f"--key-file {key_file}: {type(exc).__name__}: {exc}"[:300])
    else:
        if args_file is None:
            _fail(f"{command} needs --args-file")
        assert args_file is not None
        try:
            loaded = json.loads(args_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            _fail(f"--args-file {args_file}: {exc}")
        if not isinstance(loaded, dict):
            _fail(f"--args-file {args_file}: a JSON object is needed")
        args = loaded
    try:
        signer = load_private_key(signing_key)
    except (OSError, ValueError, KeyListError) as exc:
        _fail(f"--signing-key {signing_key}: {exc}")
    wanted = []
    for t in targets:
        site, sep, station = t.partition("/")
        if not sep or not site or not station or "/" in station:
            _fail(f"--to {t!r}: expected site/station")
        wanted.append((site, station))
    try:
        with db.connect(db_url) as conn:
            db.ensure_schema(conn)
            _login(conn, user, password_stdin)
            row = conn.execute("SELECT role FROM centre_users WHERE name = %s", (user,)).fetchone()
            conn.rollback()
            role = str(row[0]) if row else None
            if role != "admin":
                with conn.transaction():
                    db.audit(conn, user, role, f"push.{command}", None, {"ok": False, "error": "not an admin"}, reason)
                _fail(f"user {user!r} has role {role!r}: pushes need role admin (refusal audited)")
            if to_all:
                wanted += [(str(a), str(b)) for a, b in conn.execute("SELECT site, station FROM stations ORDER BY 1, 2").fetchall()]
                conn.rollback()
            if not wanted:
                _fail("give --to site/station or --all")
            try:
                outcomes = pu.push(
                    mqtt_url,
                    signer,
                    sorted(set(wanted)),
                    command,
                    args,
                    by=user,
                    prefix=topic_prefix,
                    username=mqtt_user,
                    password=os.environ.get("CHECKPOINT_MQTT_PASSWORD") if mqtt_user else None,
                )
            except (OSError, ConnectionError, ValueError) as exc:
                _fail(f"centre push: broker {redact_url(mqtt_url)}: {exc}", 1)
            pu.audit_pushes(conn, user, role, command, args, outcomes, reason)
    except psycopg.Error as exc:
        _fail(f"centre push: database {redact_url(db_url)}: {str(exc).strip()}", 1)
    rows = [
        {
            "site": o.site,
            "station": o.station,
            "ok": o.ok,
            "reason": o.reason,
            "error": o.error,
            "result": pu.result_summary(command, o.result),
        }
        for o in outcomes
    ]
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False))
    else:
        for r in rows:
            click.echo(f"{r['site']}/{r['station']}: {'ok' if r['ok'] else 'REFUSED'} {r['reason']} {r['error'] or ''} {r['result'] or ''}")
    if not all(o.ok for o in outcomes):
        sys.exit(1)


push = push_cmd
