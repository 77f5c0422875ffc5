"""``stationctl config diff`` and ``stationctl config edit`` (registered on the ``config`` group).

``diff`` lists every effective setting that differs from the built-in default and where it was set
(``station.toml:12`` or ``env CHECKPOINT_…``). ``edit`` opens a temporary copy of the file in
``$VISUAL``/``$EDITOR``, validates the result with the same checks as ``config set`` and replaces the
file atomically (the old one kept as ``.bak``); what the technician typed — comments included — is
what is written. An invalid edit is never installed: the editor reopens on the same copy, or the
edit is abandoned.

Exit codes: ``diff`` 0; ``edit`` 0 written or nothing changed, 1 abandoned (invalid), 2 usage.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from station.cli.common import Ctx


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    else:
        out[prefix] = data
    return out


def config_differences(config_path: Path, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Return the settings whose effective value differs from the default: key, value, default, where."""
    from station.config import StationConfig, env_layer, key_lines, load_config

    env = dict(os.environ) if env is None else env
    effective = _flatten(load_config(config_path if config_path.exists() else None, env=env).model_dump(mode="json"))
    default = _flatten(StationConfig().model_dump(mode="json"))
    lines = key_lines(config_path.read_text(encoding="utf-8")) if config_path.exists() else {}
    _layer, env_origin = env_layer(env)
    out = []
    for key, value in effective.items():
        if value == default.get(key):
            continue
        where = env_origin.get(key) or (f"{config_path.name}:{lines[key]}" if key in lines else "?")
        out.append({"key": key, "value": value, "default": default.get(key), "where": where})
    return out


@click.command("diff")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def config_diff(obj: Ctx, as_json: bool) -> None:
    """Show what differs from the built-in defaults, with file:line (or the environment variable)."""
    from station.config import ConfigError

    try:
        diffs = config_differences(obj.config)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(diffs, indent=2, ensure_ascii=False))
        return
    if not diffs:
        click.echo("everything is at its default")
    for d in diffs:
        value, default = json.dumps(d["value"], ensure_ascii=False), json.dumps(d["default"], ensure_ascii=False)
        click.echo(f"{d['where']}: {d['key']} = {value}  (default {default})")


@click.command("edit")
@click.option("--editor", default=None, help="Default: $VISUAL, $EDITOR, then vi")
@click.pass_obj
def config_edit(obj: Ctx, editor: str | None) -> None:
    """Edit the config in $EDITOR; written only if valid (atomically, old file kept as .bak)."""
    from station.config import validate_text
    from station.ops.fileio import atomic_write

    path: Path = obj.config
    original = path.read_text(encoding="utf-8") if path.exists() else ""
    editor = editor or os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    fd, tmp_name = tempfile.mkstemp(prefix="station-", suffix=".toml")  # .toml: editors highlight it
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(original)
        while True:
            try:
                click.edit(filename=str(tmp), editor=editor)
            except click.ClickException as exc:
                click.echo(f"cannot run the editor {editor!r}: {exc.message}", err=True)
                sys.exit(2)
            text = tmp.read_text(encoding="utf-8")
            if text == original:
                click.echo("no changes")
                return
            problems = validate_text(text, path.name)
            if not problems:
                break
            click.echo("not valid, nothing written:", err=True)
            for p in problems:
                click.echo(f"  {p}", err=True)
            # No terminal (a script, a test): never loop on a prompt nobody answers.
            if not sys.stdin.isatty() or not click.confirm("edit again?", default=True):
                click.echo(f"abandoned; {path} unchanged", err=True)
                sys.exit(1)
        try:
            atomic_write(path, text)
        except OSError as exc:  # not allowed to keep the file's owner, read-only card, …: nothing was written
            click.echo(f"not written: {exc.strerror or exc}; {path} unchanged", err=True)
            sys.exit(1)
        click.echo(f"{path} written (previous version in {path.name}.bak); restart the daemon to apply")
    finally:
        tmp.unlink(missing_ok=True)
