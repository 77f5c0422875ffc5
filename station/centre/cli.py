"""``station centre`` (also ``checkpoint-centre``): run a centre replica, print a day's report, add a user.

* ``station centre run --mqtt URL --db postgresql://… --listen HOST:PORT [--share-group G]``
* ``station centre report --db URL --day YYYY-MM-DD --json``
* ``station centre user add NAME --role viewer|tracer|admin --password-stdin --db URL``

The database password does not belong on the command line: use ``PGPASSWORD`` or a ``~/.pgpass``
file (libpq reads both). Exit codes: 0 done, 1 runtime failure (database unreachable), 2 usage error.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from typing import NoReturn

import click

from station.ops.logs import configure
from station.ops.redact import redact_url


def _fail(message: str, code: int = 2) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(code)


@click.group("centre", context_settings={"help_option_names": ["-h", "--help"]})
def centre() -> None:
    """District command centre (指挥中心): every station's events in PostgreSQL (docs/centre.md)."""


@centre.command("run")
@click.option("--mqtt", "mqtt_url", required=True, help="mqtt://host:port (or mqtts://) of the district broker")
@click.option("--db", "db_url", required=True, help="postgresql://user@host:port/dbname (password: PGPASSWORD or ~/.pgpass)")
@click.option("--listen", default="127.0.0.1:8090", show_default=True, help="host:port of the big screen, /healthz and /metrics")
@click.option(
    "--share-group",
    default="centre",
    show_default=True,
    help="MQTT 5 shared subscription group: replicas in one group split the stream ('' = no sharing: this replica takes all)",
)
@click.option("--topic-prefix", default="checkpoint/v1", show_default=True)
@click.option("--client-id", default=None, help="Stable MQTT client id, one per replica (a restart resumes its session)")
@click.option(
    "--session-expiry",
    type=click.IntRange(0, 604800),
    default=3600,
    show_default=True,
    help="Seconds the broker keeps this replica's session: unacknowledged events wait there while it restarts",
)
@click.option("--username", default=None, help="Broker user; the password comes from $CHECKPOINT_MQTT_PASSWORD")
@click.option("--tls-ca", type=click.Path(dir_okay=False), default=None, help="CA file for mqtts:// (default: system store)")
@click.option("--timezone", default=None, help="Days are cut in this zone (IANA name); fixed when the database is created (default UTC)")
@click.option("--retention-days", type=click.IntRange(1, 36500), default=400, show_default=True, help="Day partitions kept")
@click.option("--batch-size", type=click.IntRange(1, 10000), default=200, show_default=True, help="Messages per commit at most")
@click.option("--batch-ms", type=click.IntRange(1, 10000), default=100, show_default=True, help="Longest wait to fill a batch")
@click.option(
    "--command-key",
    type=click.Path(dir_okay=False),
    default=None,
    help="The centre's command key (PEM): alarms acknowledged or closed on the screen are mirrored to the station, signed",
)
@click.option(
    "--repair-after",
    type=click.FloatRange(0, 86400),
    default=60,
    show_default=True,
    help="With --command-key: seconds a gap in a station's numbers may stay open before the station is asked to send "
    "that range again (a signed resend); 0 = never ask",
)
@click.option("--public-origin", default=None, help="The big screen's https://host behind a TLS proxy (cookies Secure, Origin checked)")
@click.option(
    "--notify-secret-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="The webhooks' HMAC key (a file): alarms, outsider vehicles and checkpoints offline go to the tree's responders",
)
@click.option(
    "--smtp",
    default=None,
    help="The SMTP server for the responders' e-mails (with --notify-secret-file): HOST:PORT or smtp://HOST[:PORT] (plain), "
    "smtp+starttls://[USER@]HOST[:PORT] (STARTTLS, port 587), smtps://[USER@]HOST[:PORT] (TLS, port 465)",
)
@click.option(
    "--smtp-password-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="The --smtp user's password (a file, first line); a password in the URL is refused",
)
@click.option(
    "--smtp-ca",
    type=click.Path(dir_okay=False),
    default=None,
    help="A CA bundle (PEM) the SMTP server's certificate is checked against (a private CA); default: the system's trust",
)
@click.option("--mail-from", default="checkpoint-centre@localhost", show_default=True, help="The notices' From address")
@click.option(
    "--escalate-after",
    type=click.FloatRange(1, 86400),
    default=600,
    show_default=True,
    help="Seconds without an acknowledgement before the next level up the tree is told (a tree node's escalate_after_min overrides it)",
)
@click.option("--notify-url", default=None, help="The centre's web as responders reach it (ack links); default --public-origin")
@click.option(
    "--district-key-file",
    "district_key_files",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="A district key file (repeatable: each key still in the kept data); the tracing page hashes typed values with it",
)
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]), default="INFO", show_default=True)
def run(
    mqtt_url: str,
    db_url: str,
    listen: str,
    share_group: str,
    topic_prefix: str,
    client_id: str | None,
    session_expiry: int,
    username: str | None,
    tls_ca: str | None,
    timezone: str | None,
    retention_days: int,
    batch_size: int,
    batch_ms: int,
    command_key: str | None,
    repair_after: float,
    public_origin: str | None,
    notify_secret_file: str | None,
    smtp: str | None,
    smtp_password_file: str | None,
    smtp_ca: str | None,
    mail_from: str,
    escalate_after: float,
    notify_url: str | None,
    district_key_files: tuple[str, ...],
    log_level: str,
) -> None:
    """Take every station's events from the broker and store them in PostgreSQL (one replica)."""
    import psycopg

    from station.centre.run import CentreOptions, run_centre

    configure(log_level)
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        _fail(f"--listen {listen!r}: expected host:port")
    if share_group and not all(c.isalnum() or c in "_-" for c in share_group):
        _fail(f"--share-group {share_group!r}: letters, digits, '_' and '-' only")
    if smtp and not notify_secret_file:
        _fail("--smtp: notifications need --notify-secret-file too (the webhooks' HMAC key)")
    if (smtp_password_file or smtp_ca) and not smtp:
        _fail(f"--smtp-{'password-file' if smtp_password_file else 'ca'}: needs --smtp (the mail server)")
    opts = CentreOptions(
        mqtt_url=mqtt_url,
        db_url=db_url,
        host=host or "127.0.0.1",
        port=int(port),
        share_group=share_group or None,
        prefix=topic_prefix,
        client_id=client_id,
        session_expiry_s=session_expiry,
        username=username,
        password=os.environ.get("CHECKPOINT_MQTT_PASSWORD") if username else None,
        tls_ca=tls_ca,
        timezone=timezone,
        retention_days=retention_days,
        batch_size=batch_size,
        batch_window_s=batch_ms / 1000.0,
        public_origin=public_origin,
        command_key=command_key,
        repair_after_s=repair_after,
        notify_secret_file=notify_secret_file,
        smtp=smtp,
        smtp_password_file=smtp_password_file,
        smtp_ca=smtp_ca,
        mail_from=mail_from,
        escalate_after_s=escalate_after,
        notify_url=notify_url,
        district_key_files=district_key_files,
    )
    try:
        centre = run_centre(opts)
    except psycopg.Error as exc:
        _fail(f"centre: database {redact_url(db_url)}: {str(exc).strip()}", 1)
    except ValueError as exc:
        _fail(redact_url(str(exc)))
    if centre.failed:
        _fail(f"centre: the writer failed: {centre.writer.fatal!r}", 1)


@centre.command("report")
@click.option("--db", "db_url", required=True, help="postgresql://… of the centre's database")
@click.option("--day", required=True, help="YYYY-MM-DD (a day of the centre's time zone)")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout")
def report(db_url: str, day: str, as_json: bool) -> None:
    """Print one day's counts from the database (each event once, whatever was delivered twice)."""
    import psycopg

    from station.centre import db

    try:
        the_day = dt.date.fromisoformat(day)
    except ValueError:
        _fail(f"--day {day!r}: expected YYYY-MM-DD")
    try:
        with db.connect(db_url) as conn:
            from zoneinfo import ZoneInfo

            tz = ZoneInfo(db.ensure_schema(conn))
            body = db.report(conn, the_day, tz)
    except psycopg.Error as exc:
        _fail(f"centre report: database {redact_url(db_url)}: {str(exc).strip()}", 1)
    if as_json:
        click.echo(json.dumps(body, ensure_ascii=False, sort_keys=True))
        return
    click.echo(f"{body['day']} ({body['timezone']}): {body['stations']} stations, {body['screened']} screened")
    for decision, n in body["by_decision"].items():
        click.echo(f"  {decision:<14} {n}")
    click.echo(f"  alarms {body['alarms']}, missing events {body['missing_events']}, reported dropped {body['reported_dropped']}")
    for key, n in body["missing_by_station"].items():
        click.echo(f"  missing at {key}: {n}")


@centre.command("repairs")
@click.option("--db", "db_url", required=True, help="postgresql://… of the centre's database")
@click.option("--limit", type=click.IntRange(1, 100000), default=50, show_default=True, help="Newest rows listed")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: the rows, newest first")
def repairs_cmd(db_url: str, limit: int, as_json: bool) -> None:
    """List the gaps asked for again with a signed resend (station/centre/repair.py): when, how often, what came back."""
    import psycopg

    from station.centre import db
    from station.centre.repair import ensure_repair_schema, repairs

    try:
        with db.connect(db_url) as conn:
            ensure_repair_schema(conn)
            rows = repairs(conn, limit=limit)
    except psycopg.Error as exc:
        _fail(f"centre repairs: database {redact_url(db_url)}: {str(exc).strip()}", 1)
    if as_json:
        click.echo(json.dumps({"repairs": rows}, ensure_ascii=False, default=str, sort_keys=True))
        return
    for r in rows:
        answer = r["answer"] or {}
        said = answer.get("result") or answer.get("error") or "-"
        click.echo(
            f"{r['site']}/{r['station']} {r['first_seq']}-{r['last_seq']} {r['state']} tries={r['tries']} "
            f"first_seen={r['first_seen']:%Y-%m-%d %H:%M:%S} answer={json.dumps(said, ensure_ascii=False)[:200]}"
        )


@centre.group("user")
def user() -> None:
    """Centre users (viewer, tracer, admin)."""


@user.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(["viewer", "tracer", "admin"]), required=True)
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin (else prompted)")
@click.option("--db", "db_url", required=True, help="postgresql://… of the centre's database")
def user_add(name: str, role: str, password_stdin: bool, db_url: str) -> None:
    """Add a user (or set their role and password); the password is stored as an scrypt hash."""
    import psycopg

    from station.board.auth import USER_NAME, AuthError, hash_password
    from station.centre import db

    if not USER_NAME.match(name):
        _fail(f"user name {name!r}: 1-64 letters, digits or . _ @ -")
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("password", hide_input=True, confirmation_prompt=True)
    try:
        hashed = hash_password(password)
    except AuthError as exc:
        _fail(str(exc))
    try:
        with db.connect(db_url) as conn:
            db.ensure_schema(conn)
            new = db.add_user(conn, name, role, hashed)
    except psycopg.Error as exc:
        _fail(f"centre user add: database {redact_url(db_url)}: {str(exc).strip()}", 1)
    click.echo(f"{'added' if new else 'updated'} {name} ({role})")


def _analysis_commands() -> None:
    """Add tracing, reports, the flow forecast and the fleet view (station/centre/cli_analysis.py)."""
    from station.centre import cli_analysis

    for name in ("trace", "district_key", "reports", "forecast", "fleet", "push"):
        command = getattr(cli_analysis, name, None)
        if isinstance(command, click.Command):
            centre.add_command(command)


_analysis_commands()


def _tree_commands() -> None:
    """Add ``tree load|show|check`` (station/centre/cli_tree.py)."""
    from station.centre.cli_tree import tree

    centre.add_command(tree)


_tree_commands()


def main() -> None:
    """Run ``checkpoint-centre`` (the console script)."""
    centre()


if __name__ == "__main__":
    main()
