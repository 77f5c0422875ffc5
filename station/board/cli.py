"""``checkpoint-board`` (also ``station board``): run the command-centre board from the command line.

Exit codes: 0 stopped, 2 usage error (bad --listen, no board users, bad broker URL).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from station.ops.logs import configure


@click.command("board", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--mqtt", "mqtt_url", required=True, help="mqtt://host:port (or mqtts://) of the district broker")
@click.option("--listen", default="127.0.0.1:8080", show_default=True, help="host:port of the board's web page")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where board.sqlite3 lives (replicas may share it); default: the per-user data dir /board",
)
@click.option(
    "--share-group",
    default=None,
    help="Take events through the MQTT 5 shared subscription $share/<group>/… (several replicas split the load)",
)
@click.option("--topic-prefix", default="checkpoint/v1", show_default=True)
@click.option(
    "--client-id",
    default=None,
    help="Stable MQTT client id, one per replica (default: checkpoint-board-<group>-<host>-<pid>, clean session)",
)
@click.option(
    "--session-expiry",
    type=click.IntRange(0, 604800),
    default=None,
    help="Seconds the broker keeps this board's session (events queued while it restarts); "
    "default 3600 with --client-id, else 0 (clean session)",
)
@click.option("--username", default=None, help="Broker user; the password comes from $CHECKPOINT_MQTT_PASSWORD")
@click.option("--tls-ca", type=click.Path(dir_okay=False), default=None, help="CA file for mqtts:// (default: system store)")
@click.option(
    "--users",
    "users_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Board users file (stationctl board-user add); default: <data-dir>/board-users.json",
)
@click.option(
    "--public-origin",
    default=None,
    help="https://host[:port] when a TLS proxy serves the board (session cookie gets Secure; logins from that origin accepted)",
)
@click.option(
    "--max-stations",
    type=click.IntRange(1, 100000),
    default=2000,
    show_default=True,
    help="Stations kept; messages from more are dropped and counted",
)
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]), default="INFO", show_default=True)
def board(
    mqtt_url: str,
    listen: str,
    data_dir: Path | None,
    share_group: str | None,
    topic_prefix: str,
    client_id: str | None,
    session_expiry: int | None,
    username: str | None,
    tls_ca: str | None,
    users_path: Path | None,
    public_origin: str | None,
    max_stations: int,
    log_level: str,
) -> None:
    """Command-centre board (指挥大屏): every station's state, counts, alarms and live picture (docs/board.md)."""
    from station.app import default_data_dir
    from station.board.run import BoardOptions, run_board

    configure(log_level)
    if session_expiry is None:
        # A persistent session only makes sense under an id the next start uses again; a per-process
        # id would leave an orphan session queueing events on the broker for the whole expiry.
        session_expiry = 3600 if client_id else 0
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        click.echo(f"--listen {listen!r}: expected host:port", err=True)
        sys.exit(2)
    try:
        opts = BoardOptions(
            mqtt_url=mqtt_url,
            host=host or "127.0.0.1",
            port=int(port),
            data_dir=data_dir or (default_data_dir() / "board"),
            share_group=share_group,
            prefix=topic_prefix,
            client_id=client_id,
            session_expiry_s=session_expiry,
            username=username,
            password=os.environ.get("CHECKPOINT_MQTT_PASSWORD") if username else None,
            tls_ca=tls_ca,
            users_path=users_path,
            public_origin=public_origin,
            max_stations=max_stations,
        )
        run_board(opts)
    except ValueError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)


def main() -> None:
    """Run ``checkpoint-board`` (the console script)."""
    board()


if __name__ == "__main__":
    main()
