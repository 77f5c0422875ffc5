"""``stationctl logs``: the daemon's log, from journald when the box has it, else ``logging.file``.

Under systemd the daemon logs to stderr and journald keeps it (bounded by ``SystemMaxUse=``, no
files on the SD card): ``logs`` runs ``journalctl -u checkpoint-station``. On a host without journald
(a container, a dev laptop) the daemon can append to ``logging.file`` instead, and ``logs`` reads that
file: the last ``-n`` lines, ``--since`` filtering on the timestamp each line starts with, and
``--follow`` polling for new lines (it follows a logrotate move by reopening).

Exit codes: 0 ok, 1 no log source (no journald and no logging.file, or the file is missing), 2 usage.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import click

from station.cli.common import TIME, Ctx, follow_file, journal_command, journald_present, tail_file


@click.command("logs")
@click.option("-n", "--lines", type=click.IntRange(1, 1_000_000), default=100, show_default=True)
@click.option("--since", type=TIME, default=None, help="2026-11-24T08:00, unix seconds, or an age like 2h")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines")
@click.option("--source", type=click.Choice(["auto", "journal", "file"]), default="auto", show_default=True)
@click.pass_obj
def logs(obj: Ctx, lines: int, since: float | None, follow: bool, source: str) -> None:
    """Show the daemon's log: journalctl -u checkpoint-station, or logging.file without journald."""
    cfg = obj.load()
    use_journal = source == "journal" or (source == "auto" and journald_present())
    if use_journal:
        if not shutil.which("journalctl"):
            click.echo("journalctl is not installed", err=True)
            sys.exit(1)
        try:
            sys.exit(subprocess.call(journal_command(lines, since, follow)))
        except KeyboardInterrupt:
            sys.exit(0)
    if not cfg.logging.file:
        click.echo(
            "no journald on this host and logging.file is not set: the daemon logs only to its stderr. "
            "Set one with `stationctl config set logging.file /var/log/checkpoint/station.log` and restart it.",
            err=True,
        )
        sys.exit(1)
    path = Path(cfg.logging.file)
    if not path.is_file():
        click.echo(f"{path} does not exist (has the daemon run since logging.file was set?)", err=True)
        sys.exit(1)
    for line in tail_file(path, lines, since):
        click.echo(line)
    if follow:
        try:
            for line in follow_file(path):
                click.echo(line)
        except KeyboardInterrupt:
            pass
