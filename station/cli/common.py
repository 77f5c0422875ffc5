"""Shared parts of the ``stationctl`` commands: the context, the common options, the store, the daemon and its log.

Every verb module imports what it shares from here, never from another verb module.

The common options ``--config``, ``--data-dir`` and ``--json`` are accepted before the verb
(``stationctl --data-dir D outbox flush``) and after it (``stationctl outbox flush --data-dir D``),
as technicians type them. :class:`StationGroup` attaches them to every command and group added to
it; a command parses its own copy after its parent's, so the one given after the verb wins.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from station.config import ConfigError, StationConfig, load_config
from station.ops.control import ControlError, ControlUnavailable

if TYPE_CHECKING:
    from station.store.events import SqliteEventStore

__all__ = [
    "TIME",
    "ControlError",
    "ControlUnavailable",
    "Ctx",
    "StationGroup",
    "ask_daemon",
    "daemon_state",
    "default_config",
    "echo_json",
    "group",
    "open_store",
    "parse_time",
    "station_db",
]

DEFAULT_CONFIG = Path("/etc/checkpoint/station.toml")
CONFIG_HELP = "station.toml (default: $CHECKPOINT_CONFIG, else /etc/checkpoint/station.toml)"
DATA_DIR_HELP = "Overrides station.data_dir"
AFTER_WINS = " [before or after the verb; after wins]"


def default_config() -> Path:
    """Return the config path used when no ``--config`` is given: ``$CHECKPOINT_CONFIG`` or the system file."""
    return Path(os.environ.get("CHECKPOINT_CONFIG") or DEFAULT_CONFIG)


def echo_json(data: Any, *, indent: int | None = 2) -> None:
    """Print ``data`` as JSON (non-ASCII kept, anything else shown as its ``str``)."""
    click.echo(json.dumps(data, indent=indent, ensure_ascii=False, default=str))


class Ctx:
    """What every command shares: the config path, the data-dir override and whether JSON is wanted."""

    def __init__(self, config: Path | None = None, data_dir: Path | None = None, as_json: bool = False) -> None:
        self.config = config if config is not None else default_config()
        self.data_dir_override = data_dir
        self.as_json = as_json

    def load(self) -> StationConfig:
        """Load the effective configuration (defaults if the file is absent); exit 1 with the problems if invalid."""
        try:
            return load_config(self.config if self.config.exists() else None)
        except ConfigError as exc:
            click.echo(str(exc), err=True)
            sys.exit(1)
        except OSError as exc:  # a directory, no permission to read: one line, not a traceback
            click.echo(f"{self.config}: cannot read: {exc.strerror or exc}", err=True)
            sys.exit(1)

    def data_dir(self) -> Path:
        """Return the station's data directory: ``--data-dir``, ``station.data_dir``, the system daemon's, or the per-user one."""
        from station.app import data_dir_for

        cfg = self.load()
        if self.data_dir_override is None and not cfg.station.data_dir:
            # The unit sets the data dir through its environment, which a technician's shell lacks:
            # ask the system daemon (if one runs) where its data is.
            from station.ops.control import system_daemon_data_dir

            found = system_daemon_data_dir()
            if found is not None:
                return found
        return data_dir_for(cfg, self.data_dir_override)


# -- the common options, before or after the verb ----------------------------------------------------


def _obj(ctx: click.Context) -> Ctx:
    return ctx.ensure_object(Ctx)


def _set_config(ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
    if value is not None:
        _obj(ctx).config = value


def _set_data_dir(ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
    if value is not None:
        _obj(ctx).data_dir_override = value


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        _obj(ctx).as_json = True


def _json_merged(own: Callable[..., Any] | None) -> Callable[[click.Context, click.Parameter, Any], bool]:
    """Make a command's own ``--json`` flag also true when ``--json`` came before the verb."""

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> bool:
        if own is not None:
            value = own(ctx, param, value)
        wanted = bool(value) or _obj(ctx).as_json
        _obj(ctx).as_json = wanted
        return wanted

    return callback


def _no_json_output(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value or _obj(ctx).as_json:
        raise click.UsageError(f"`{ctx.command_path}` has no JSON output; drop --json", ctx)


def _opts(cmd: click.Command) -> set[str]:
    return {o for p in cmd.params for o in getattr(p, "opts", ())}


def attach_common_options(cmd: click.Command) -> None:
    """Give ``cmd`` (and, for a group, every command in it) ``--config``, ``--data-dir`` and ``--json``."""
    if getattr(cmd, "_station_common_options", False):
        return
    cmd._station_common_options = True  # type: ignore[attr-defined]
    have = _opts(cmd)
    added: list[click.Parameter] = []
    if "--config" not in have:
        added.append(
            click.Option(
                ["--config"],
                type=click.Path(path_type=Path, dir_okay=False),
                default=None,
                expose_value=False,
                callback=_set_config,
                help=CONFIG_HELP + AFTER_WINS,
            )
        )
    if "--data-dir" not in have:
        added.append(
            click.Option(
                ["--data-dir"],
                type=click.Path(path_type=Path, file_okay=False),
                default=None,
                expose_value=False,
                callback=_set_data_dir,
                help=DATA_DIR_HELP + AFTER_WINS,
            )
        )
    own_json = next((p for p in cmd.params if "--json" in getattr(p, "opts", ())), None)
    if own_json is not None:
        own_json.callback = _json_merged(own_json.callback)
    elif isinstance(cmd, click.Group):
        added.append(click.Option(["--json"], is_flag=True, expose_value=False, callback=_set_json, help="JSON output" + AFTER_WINS))
    else:
        # Accepted so that a --json before the verb is refused with a reason, not silently ignored.
        added.append(click.Option(["--json"], is_flag=True, expose_value=False, callback=_no_json_output, hidden=True))
    cmd.params.extend(added)
    if isinstance(cmd, click.Group):
        for sub in cmd.commands.values():
            attach_common_options(sub)


class StationGroup(click.Group):
    """A command group whose commands all accept the common options before or after the verb."""

    group_class = type  # subgroups made with .group() are StationGroups too

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        """Register ``cmd`` with the common options attached."""
        attach_common_options(cmd)
        super().add_command(cmd, name)


def group(name: str | None = None, **kwargs: Any) -> Callable[[Callable[..., Any]], StationGroup]:
    """Declare a ``stationctl`` command group (a :class:`StationGroup`)."""
    decorator: Any = click.group(name, cls=StationGroup, **kwargs)
    return decorator  # type: ignore[no-any-return]


# -- times on the command line ---------------------------------------------------------------------------

_AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_AGE_UNITS_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_time(value: str, now: float | None = None) -> float:
    """Return the unix time of an ISO date/time, unix seconds or an age (``7d``); raise ValueError otherwise."""
    value = value.strip()
    m = _AGE.match(value)
    if m:
        return (time.time() if now is None else now) - float(m.group(1)) * _AGE_UNITS_S[m.group(2)]
    try:
        return float(value)
    except ValueError:
        pass
    return datetime.fromisoformat(value).timestamp()  # naive = local time, like the box's display


class TimeParam(click.ParamType[float]):
    """A ``--since`` / ``--until`` value: ``2026-11-24``, ``2026-11-24T08:00``, unix seconds or an age like ``7d``."""

    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        """Return the value as unix time, or fail with the accepted forms."""
        if isinstance(value, float):
            return value
        try:
            return parse_time(str(value))
        except ValueError:
            self.fail(f"{value!r}: give 2026-11-24, 2026-11-24T08:00, unix seconds or an age like 7d", param, ctx)


TIME = TimeParam()


# -- the station's store ---------------------------------------------------------------------------------


def station_db(obj: Ctx) -> tuple[StationConfig, Path]:
    """Return the loaded config and the existing event database; exit 1 with a hint when there is none."""
    from station.store.events import DB_NAME

    cfg = obj.load()
    db = obj.data_dir() / DB_NAME
    if not db.exists():
        click.echo(f"no event database at {db} (has the station run yet? see --data-dir)", err=True)
        sys.exit(1)
    return cfg, db


def open_store(obj: Ctx, *, read_only: bool = True) -> SqliteEventStore:
    """Open the station's event store with its outbox bounds; exit 1 with the reason when it cannot be opened."""
    from station.link.sync import bounds_from_config
    from station.store.events import SqliteEventStore, StoreError

    cfg, db = station_db(obj)
    try:
        store = SqliteEventStore(
            db, station_id=cfg.station.id, site=cfg.station.site, topic_prefix=cfg.mqtt.topic_prefix, read_only=read_only
        )
    except (StoreError, sqlite3.Error, OSError) as exc:
        click.echo(f"cannot open {db}: {exc}", err=True)
        sys.exit(1)
    store.outbox_bounds = bounds_from_config(cfg)
    return store


# -- the running daemon ---------------------------------------------------------------------------------


def ask_daemon(data_dir: Path, cmd: str, timeout_s: float = 3.0, **args: Any) -> tuple[Any, Path]:
    """Ask the daemon over its control socket; return (answer, socket path) or raise ControlUnavailable / ControlError."""
    from station.ops.control import ask

    return ask(data_dir, cmd, timeout_s=timeout_s, **args)


def daemon_state(data_dir: Path) -> dict[str, Any]:
    """Return the live state from the control socket when the daemon answers, else the runtime status file."""
    from station.ops.runtime import read_runtime_status

    try:
        live, path = ask_daemon(data_dir, "status")
        return dict(live, source=f"control socket {path}")
    except (ControlUnavailable, ControlError) as exc:
        state = read_runtime_status(data_dir)
        return dict(state, source=f"status file (control socket: {exc})")


# -- the daemon's log: journald, or logging.file without it ------------------------------------------------

SERVICE = "checkpoint-station"
JOURNAL_SOCKET_DIR = Path("/run/systemd/journal")


def journald_present() -> bool:
    """Return whether this host keeps a journal (journalctl installed and journald's socket directory there)."""
    return shutil.which("journalctl") is not None and JOURNAL_SOCKET_DIR.is_dir()


def _line_time(line: str) -> float | None:
    """Return the leading ``2026-11-25 21:54:56,123`` timestamp of a station.ops.logs line as unix time."""
    try:
        return datetime.strptime(line[:19], "%Y-%m-%d %H:%M:%S").timestamp()
    except ValueError:
        return None


def tail_file(path: Path, lines: int, since: float | None) -> list[str]:
    """Return the last ``lines`` lines of a log file, from ``since`` on when given."""
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
    """Yield new lines appended to ``path``; reopen when logrotate replaces the file."""
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
    """Return the journalctl command line for the daemon's unit."""
    cmd = ["journalctl", "-u", SERVICE, "--no-pager", "-o", "short-iso", "-n", str(lines)]
    if since is not None:
        cmd += ["--since", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since))]
    if follow:
        cmd.append("-f")
    return cmd


def recent_lines(cfg: StationConfig, lines: int = 2000) -> tuple[str, list[str]]:
    """Return (source, lines) of the daemon's recent log; ("none", []) when there is no log source."""
    if journald_present():
        try:
            r = subprocess.run(journal_command(lines, None, False), capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"journald ({exc})", []
        return "journald", (r.stdout or r.stderr).splitlines()
    if cfg.logging.file and Path(cfg.logging.file).is_file():
        return cfg.logging.file, tail_file(Path(cfg.logging.file), lines, None)
    return "none", []
