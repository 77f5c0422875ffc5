"""``stationctl``: the field technician's tool.

Reads and edits the configuration (comments preserved, every edit validated before it is written,
written atomically with a ``.bak``), and reads the station's state from its data directory.
It imports no camera or model code, so it starts fast on a Pi.

Exit codes: 0 ok, 1 the thing checked is not ok (invalid config, no daemon), 2 usage error.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click
import tomlkit
import tomlkit.items

from station.cli.board_user_cmd import board_user
from station.cli.bugreport_cmd import bugreport
from station.cli.cmd_cmd import cmd
from station.cli.code_cmd import code
from station.cli.code_verify_cmd import verify as code_verify
from station.cli.common import CONFIG_HELP, DATA_DIR_HELP, Ctx, StationGroup, daemon_state, echo_json, open_store
from station.cli.config_cmd import config_diff, config_edit
from station.cli.data_cmd import data
from station.cli.doctor_cmd import devices, doctor
from station.cli.idcard_cmd import idcard, test_idcard
from station.cli.logs_cmd import logs
from station.cli.operator_url_cmd import operator_url
from station.cli.outbox_cmd import outbox
from station.cli.registrations_cmd import registrations
from station.cli.speaker_cmd import test_speaker
from station.cli.test_cmd import test
from station.cli.thermal_cmd import calibrate, thermal
from station.cli.vision_cmd import detect, models_cmd, plates_cmd
from station.config import get_dotted, validate_text
from station.ops.fileio import atomic_write


@click.group(cls=StationGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", type=click.Path(path_type=Path, dir_okay=False), default=None, help=CONFIG_HELP)
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), default=None, help=DATA_DIR_HELP)
@click.option("--json", "as_json", is_flag=True, help="JSON output, for the commands that have it")
@click.pass_context
def main(ctx: click.Context, config: Path | None, data_dir: Path | None, as_json: bool) -> None:
    """Checkpoint station technician CLI.

    \b
    --config, --data-dir and --json work before or after the verb:
      stationctl --data-dir D outbox flush  =  stationctl outbox flush --data-dir D
    Given in both places, the one after the verb wins.

    \b
    Exit codes (docs/stationctl.md has every command):
      0  ok
      1  the thing checked is not ok (invalid config, no daemon, test failed,
         doctor: warnings only)
      2  usage or configuration error (doctor: at least one failure)
      3  refused: the daemon runs and owns that device (test …; --force)
    """  # noqa: D301  (\b is click's "keep this paragraph's line breaks" marker)
    ctx.obj = Ctx(config, data_dir, as_json)


# -- config -----------------------------------------------------------------------------------------


@main.group()
def config() -> None:
    """Show, read, change and check the configuration."""


@config.command("show")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of TOML")
@click.pass_obj
def config_show(obj: Ctx, as_json: bool) -> None:
    """Show the effective configuration: defaults ← file ← environment."""
    data = obj.load().model_dump(mode="json")
    if as_json:
        echo_json(data)
    else:
        click.echo(tomlkit.dumps(data).rstrip())


@config.command("get")
@click.argument("key")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def config_get(obj: Ctx, key: str, as_json: bool) -> None:
    """One setting, by dotted key (e.g. screening.fever_threshold_c)."""
    try:
        value = get_dotted(obj.load(), key)
    except KeyError as exc:
        click.echo(exc.args[0], err=True)
        sys.exit(2)
    if as_json:
        echo_json({"key": key, "value": value})
    elif isinstance(value, (dict, list)):
        click.echo(json.dumps(value, ensure_ascii=False))
    else:
        click.echo(value)


def _parse_value(raw: str) -> Any:
    """Return a TOML literal if it is one (37.5, true, [1, 2], "x"), otherwise the text itself."""
    try:
        return tomlkit.parse(f"v = {raw}")["v"]
    except Exception:  # tomlkit raises several exception types for "not a literal"
        return raw


def _plain(value: Any) -> Any:
    """Return a tomlkit item as its plain Python value (other values as they are)."""
    return value.unwrap() if isinstance(value, tomlkit.items.Item) else value


@config.command("set")
@click.argument("key")
@click.argument("value")
@click.option("--dry-run", is_flag=True, help="Validate and show, do not write")
@click.pass_obj
def config_set(obj: Ctx, key: str, value: str, dry_run: bool) -> None:
    """Change one setting in the config file, keeping its comments and layout."""
    path = obj.config
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    doc = tomlkit.parse(text)
    parts = key.split(".")
    if len(parts) < 2:
        click.echo(f"{key}: give section.key, e.g. screening.fever_threshold_c", err=True)
        sys.exit(2)
    node: Any = doc
    for part in parts[:-1]:
        if part not in node:
            node[part] = tomlkit.table()
        node = node[part]
    old = node.get(parts[-1]) if hasattr(node, "get") else None
    node[parts[-1]] = _parse_value(value)
    new_text = tomlkit.dumps(doc)
    problems = validate_text(new_text, path.name)
    if problems:
        click.echo("refused, the result would not be valid:", err=True)
        for p in problems:
            click.echo(f"  {p}", err=True)
        sys.exit(1)
    click.echo(f"{key}: {json.dumps(_plain(old), default=str)} -> {json.dumps(_plain(node[parts[-1]]), default=str)}")
    if dry_run:
        return
    try:
        atomic_write(path, new_text)
    except OSError as exc:  # not allowed to keep the file's owner, read-only card, …: nothing was written
        click.echo(f"not written: {exc.strerror or exc}; {path} unchanged", err=True)
        sys.exit(1)


@config.command("validate")
@click.argument("file", required=False, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def config_validate(obj: Ctx, file: Path | None, as_json: bool) -> None:
    """Check a config file (default: --config). Exit 0 if valid, 1 if not."""
    path = file or obj.config
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        click.echo(f"{path}: cannot read: {exc.strerror}", err=True)
        sys.exit(1)
    problems = validate_text(text, path.name)
    if as_json:
        echo_json(
            {
                "file": str(path),
                "valid": not problems,
                "problems": [
                    {"where": p.where, "key": p.key, "value": None if p.value is None else repr(p.value), "message": p.message}
                    for p in problems
                ],
            }
        )
    elif problems:
        for p in problems:
            click.echo(str(p))
    else:
        click.echo(f"{path}: valid")
    sys.exit(1 if problems else 0)


# -- state ------------------------------------------------------------------------------------------


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def status(obj: Ctx, as_json: bool) -> None:
    """Daemon state, last decision, today's counts, outbox depth."""
    cfg = obj.load()
    data_dir = obj.data_dir()
    daemon = daemon_state(data_dir)
    store = open_store(obj)
    try:
        midnight = time.mktime(time.localtime()[:3] + (0, 0, 0, 0, 0, -1))
        data: dict[str, Any] = {
            "station": {"site": cfg.station.site, "id": cfg.station.id, "lane": cfg.station.lane},
            "daemon": daemon,
            "data_dir": str(data_dir),
            "today": store.counts(since_ts=midnight),
            "last_event": store.last_event(),
            "outbox": store.outbox_stats(),
        }
    finally:
        store.close()
    if as_json:
        echo_json(data)
    else:
        d = data["daemon"]
        click.echo(f"station {cfg.station.site}/{cfg.station.id} ({cfg.station.lane})")
        click.echo(
            f"daemon: {d.get('state')}"
            + (f", pid {d['pid']}, lane {d.get('lane_state')}" if d.get("pid") else "")
            + f"  [{d.get('source')}]"
        )
        for item in d.get("degraded") or []:  # each module the station runs without, and why, at a glance
            click.echo(f"{item.get('module')}: degraded: {item.get('reason')}" if isinstance(item, dict) else f"degraded: {item}")
        if isinstance(d.get("stages"), dict) and d["stages"]:
            click.echo(_stages_line(d["stages"]))
        if isinstance(d.get("clock"), dict):
            click.echo(_clock_line(d["clock"]))
        click.echo(f"today: {data['today'] or 'no decisions'}")
        last = data["last_event"]
        if last:
            click.echo(f"last: {_event_line(last)}")
        ob = data["outbox"]
        click.echo(f"outbox: {ob.get('pending')} pending, oldest {ob.get('oldest_age_s')} s, {ob.get('bytes')} bytes")
    sys.exit(0 if daemon.get("state") == "running" else 1)


def _clock_line(c: dict[str, Any]) -> str:
    """Return the wall clock in one line: synchronised or not, steps seen, corrections written."""
    state = "synchronised" if c.get("synced") else "NOT synchronised (records are stamped clock_synced=false until it is)"
    return f"clock: {state}; steps {c.get('steps')}; corrections {c.get('corrections')}"


def _stages_line(h: dict[str, Any]) -> str:
    """Pipeline stage health in one line: state, in-process restarts, contained failures per kind."""
    stages = h.get("stages") or {}
    restarts = ", ".join(f"{n}×{s['restarts']}" for n, s in stages.items() if s.get("restarts")) or "none"
    errors = ", ".join(f"{n} {k}×{c}" for n, s in stages.items() for k, c in sorted((s.get("errors") or {}).items()))
    line = f"stages: {h.get('state')}; restarts {restarts}"
    if h.get("given_up"):
        line += f"; GIVEN UP: {', '.join(h['given_up'])}"
    return line + (f"; contained errors {errors}" if errors else "")


def _event_line(e: dict[str, Any]) -> str:
    ts = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.get("ts", 0)))
    temp = e.get("temperature_c")
    temp_s = f"{temp:.2f} °C" if isinstance(temp, (int, float)) else "--.-- °C"
    total = (e.get("latency_ms") or {}).get("total")
    code = e.get("code_colour") or (e.get("code") or {}).get("status") or "none"
    return f"{ts} {e.get('decision'):<13s} {temp_s} code={code:<8s} {total} ms {e.get('reason')} {e.get('event_id')}"


@main.group()
def events() -> None:
    """Read the local event log."""


@events.command("tail")
@click.option("-n", "count", type=click.IntRange(1, 10000), default=10, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new events")
@click.pass_obj
def events_tail(obj: Ctx, count: int, as_json: bool, follow: bool) -> None:
    """Print the newest events, oldest first."""
    store = open_store(obj)
    try:
        rows = store.tail(count)
        last_id = 0
        for row in rows:
            _print_event(row, as_json)
            last_id = max(last_id, row.get("_rowid", 0))
        while follow:
            time.sleep(0.5)
            for row in store.events_since(last_id):
                _print_event(row, as_json)
                last_id = max(last_id, row.get("_rowid", 0))
    except KeyboardInterrupt:
        pass
    finally:
        store.close()


def _print_event(row: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({k: v for k, v in row.items() if not k.startswith("_")}, ensure_ascii=False))
    else:
        click.echo(_event_line(row))


# -- the verbs in their own modules (each imports cv2, onnxruntime, cryptography … only inside its commands) --

config.add_command(config_diff)
config.add_command(config_edit)
code.add_command(code_verify)
test.add_command(test_idcard)
test.add_command(test_speaker)
for verb in (
    outbox,
    models_cmd,
    detect,
    plates_cmd,
    thermal,
    calibrate,
    code,
    doctor,
    devices,
    test,
    data,
    logs,
    bugreport,
    cmd,
    board_user,
    operator_url,
    idcard,
    registrations,
):
    main.add_command(verb)


if __name__ == "__main__":
    main()
