"""``stationctl cmd …``: the command centre's side of signed remote commands, for a technician.

``cmd keygen --out DIR`` makes an Ed25519 key pair: ``DIR/command-centre.key`` (private, mode 0600:
it opens gates) and ``DIR/command-centre.pub.pem`` (what stations trust: ``centre.command_keys_file``).

``cmd sign --key KEY --site S --station ID --command NAME [--args JSON] [--ttl S] --by NAME`` prints
the signed JSON body for ``<prefix>/S/ID/cmd/NAME``, ready for ``mosquitto_pub -m "$(…)"``
(docs/mqtt.md, *Signed commands*). The body can be sent once, before its deadline, to that one
station; the station audits it under ``--by`` and the key id.

Exit codes: 0 ok, 1 the key or the arguments are not usable, 2 usage error.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import click

from station.cli.common import group

KEY_NAME = "command-centre.key"
PUB_NAME = "command-centre.pub.pem"
_LEVEL_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@group("cmd")
def cmd() -> None:
    """Sign remote commands for a station (command-centre keys)."""


@cmd.command("keygen")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Directory for command-centre.key (0600) and command-centre.pub.pem",
)
def keygen(out_dir: Path) -> None:
    """Make a new Ed25519 command-centre key pair (never overwrites one)."""
    from station.link.command_auth import key_id_of, new_signing_key, private_pem, public_pem

    out_dir.mkdir(parents=True, exist_ok=True)
    key_path, pub_path = out_dir / KEY_NAME, out_dir / PUB_NAME
    key = new_signing_key()
    try:
        # O_EXCL: an existing key is never replaced (stations may trust it); 0600 from the first byte.
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        click.echo(f"{key_path} exists; not overwritten (move it away first to make a new key)", err=True)
        sys.exit(1)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem(key))
    pub_path.write_text(public_pem(key.public_key()), encoding="ascii")
    click.echo(json.dumps({"private_key": str(key_path), "public_key": str(pub_path), "key_id": key_id_of(key.public_key())}))


@cmd.command("sign")
@click.option(
    "--key",
    "key_path",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="The centre's private key (PEM; Ed25519 or ECDSA P-256)",
)
@click.option("--site", required=True, help="The station's site id (as in its topics)")
@click.option("--station", required=True, help="The station id")
@click.option("--command", "command", required=True, help="Command name, e.g. open-gate, set-threshold")
@click.option("--args", "args_json", default="{}", show_default=True, help="The command's arguments as a JSON object")
@click.option("--ttl", type=float, default=20.0, show_default=True, help="Seconds until the deadline (stations refuse > 60 by default)")
@click.option("--by", "by", required=True, help="Who signs: the name the station's audit records")
@click.option("--id", "command_id", default=None, help="Unique command id (default: a random one)")
def sign(key_path: Path, site: str, station: str, command: str, args_json: str, ttl: float, by: str, command_id: str | None) -> None:
    """Print a signed command body for <prefix>/SITE/STATION/cmd/COMMAND."""
    from station.link.command_auth import KeyListError, load_private_key, sign_command

    problems = [
        f"--{name} must be 1-64 letters, digits, '_' or '-'"
        for name, value in (("site", site), ("station", station), ("command", command))
        if not _LEVEL_RE.match(value)
    ]
    if not (0 < len(by) <= 64 and by.isprintable()):
        problems.append("--by must be 1-64 printable characters")
    if command_id is not None and not re.match(r"^[\x21-\x7e]{1,128}$", command_id):
        problems.append("--id must be 1-128 printable ASCII characters without spaces")
    if not 0 < ttl <= 3600:
        problems.append("--ttl must be > 0 and <= 3600 seconds")
    try:
        args: Any = json.loads(args_json)
    except ValueError as exc:
        problems.append(f"--args is not JSON: {exc}")
        args = None
    if args is not None and not isinstance(args, dict):
        problems.append("--args must be a JSON object")
    if problems:
        for p in problems:
            click.echo(p, err=True)
        sys.exit(1)
    try:
        key = load_private_key(key_path)
    except (KeyListError, ValueError, TypeError) as exc:
        click.echo(f"{key_path}: not a usable private key: {exc}", err=True)
        sys.exit(1)
    if ttl > 60:
        click.echo(
            f"warning: --ttl {ttl:g} s is beyond the stations' default window (60 s): it will be refused "
            "as deadline_too_far unless centre.command_max_window_s allows it",
            err=True,
        )
    body = sign_command(key, site=site, station=station, command=command, args=args, by=by, ttl_s=ttl, command_id=command_id)
    click.echo(json.dumps(body, ensure_ascii=False, separators=(",", ":")))
