"""``stationctl logs``: the daemon's log, from journald when the box has it, else ``logging.file``.

Under systemd the daemon logs to stderr and journald keeps it (bounded by ``SystemMaxUse=``, no
files on the SD card): ``logs`` runs ``journalctl -u checkpoint-station``. On a host without journald
(a container, a dev laptop) the daemon can append to ``logging.file`` instead, and ``logs`` reads that
file: the last ``-n`` lines, ``--since`` filtering on the timestamp each line starts with, and
``--follow`` polling for new lines (it follows a logrotate move by reopening).

Exit codes: 0 ok, 1 no log source (no journald and no logging.file, or the file is missing), 2 usage.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from station.cli.data_cmd import TIME

SERVICE = "checkpoint-station"
JOURNAL_SOCKET_DIR = Path("/run/systemd/journal")


def journald_present() -> bool:
    return shutil.which("journalctl") is not None and JOURNAL_SOCKET_DIR.is_dir()


def _line_time(line: str) -> float | None:
    """The leading ``2026-11-25 21:54:56,123`` timestamp of a station.ops.logs line, as unix time."""
    try:
        return datetime.strptime(line[:19], "%Y-%m-%d %H:%M:%S").timestamp()
    except ValueError:
        return None


def tail_file(path: Path, lines: int, since: float | None) -> list[str]:
    keep: deque[str] = deque(maxlen=lines)
    current: float | None = None
    with path.open("r", encoding="utf-8", errors="replace") as f:
        for line in f:
            t = _line_time(line)
            current = t if t is not None else current  # continuation lines (tracebacks) follow their record
            if since is None or (current is not None and current >= since):
                keep.append(line.rstrip("\n"))
    return list(keep)


def follow_file(path: Path, poll_s: float = 0.5) -> Iterator[str]:
    """New lines appended to ``path``; reopens when logrotate replaces the file."""
    f = path.open("r", encoding="utf-8", errors="replace")
    f.seek(0, os.SEEK_END)
    ino = os.fstat(f.fileno()).st_ino
    try:
        while True:
            line = f.readline()
            if line:
                yield line.rstrip("\n")
                continue
            time.sleep(poll_s)
            try:
                if path.stat().st_ino != ino:
                    f.close()
                    f = path.open("r", encoding="utf-8", errors="replace")
                    ino = os.fstat(f.fileno()).st_ino
            except FileNotFoundError:
                continue
    finally:
        f.close()


def journal_command(lines: int, since: float | None, follow: bool) -> list[str]:
    cmd = ["journalctl", "-u", SERVICE, "--no-pager", "-o", "short-iso", "-n", str(lines)]
    if since is not None:
        cmd += ["--since", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since))]
    if follow:
        cmd.append("-f")
    return cmd


def recent_lines(cfg: Any, lines: int = 2000) -> tuple[str, list[str]]:
    """(source, lines) for the bug report; ("none", []) when there is no log source."""
    if journald_present():
        r = subprocess.run(journal_command(lines, None, False), capture_output=True, text=True, timeout=30)
        return "journald", (r.stdout or r.stderr).splitlines()
    if cfg.logging.file and Path(cfg.logging.file).is_file():
        return cfg.logging.file, tail_file(Path(cfg.logging.file), lines, None)
    return "none", []


@click.command("logs")
@click.option("-n", "--lines", type=click.IntRange(1, 1_000_000), default=100, show_default=True)
@click.option("--since", type=TIME, default=None, help="2026-11-24T08:00, unix seconds, or an age like 2h")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines")
@click.option("--source", type=click.Choice(["auto", "journal", "file"]), default="auto", show_default=True)
@click.pass_obj
def logs(obj: Any, lines: int, since: float | None, follow: bool, source: str) -> None:
    """The daemon's log: journalctl -u checkpoint-station, or logging.file without journald."""
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
