"""``station centre tree load|show|check``: the district registry in the centre's database, from and to a TOML file.

* ``station centre tree check FILE`` — validate a registry (every problem: key, value, what is allowed);
* ``station centre tree load FILE --db URL [--by NAME]`` — store it as the next version (audited as ``tree.load``);
* ``station centre tree show --db URL`` — print the current version's TOML (comments as the admins left them).

Exit codes: 0 done, 1 database failure, 2 a bad file or a version saved meanwhile.
"""

from __future__ import annotations

import getpass
import sys
from pathlib import Path
from typing import NoReturn

import click

from station.ops.redact import redact_url


def _fail(message: str, code: int = 2) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(code)


def _read(path: str) -> str:
    from station.centre.tree import TreeError, parse_tree

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        _fail(f"{path}: {exc}")
    result = parse_tree(text)
    if isinstance(result, TreeError):
        _fail(f"{path}: not a usable district tree:\n  " + "\n  ".join(result.problems))
    return text


@click.group("tree")
def tree() -> None:
    """Manage the district tree (district → town → grid → checkpoint → stations) the screen and reports roll up along."""


@tree.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
def check(file: str) -> None:
    """Validate a registry file and print its nodes and station entries."""
    from station.centre.tree import parse_tree

    parsed = parse_tree(_read(file))
    assert not isinstance(parsed, Exception)
    nodes = parsed.nodes()
    click.echo(f"{file}: {len(nodes) - 1} nodes, {len(parsed.exact)} stations by name, {len(parsed.sites)} whole sites")


@tree.command("load")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--db", "db_url", required=True, help="postgresql://… of the centre's database")
@click.option("--by", "actor", default=None, help="Who loads it (the audit's actor; default: this login name)")
def load(file: str, db_url: str, actor: str | None) -> None:
    """Store a registry file as the tree's next version (audited)."""
    import psycopg

    from station.centre import screen

    text = _read(file)
    who = actor or f"cli:{getpass.getuser()}"
    try:
        with psycopg.connect(db_url, connect_timeout=10) as conn:
            screen.ensure_screen_schema(conn)
            base, _ = screen.load_tree_text(conn)
            version = screen.save_tree(conn, base, text, who, None, "tree.load", file)
    except psycopg.Error as exc:
        _fail(f"centre tree load: database {redact_url(db_url)}: {str(exc).strip()}", 1)
    except screen.TreeConflict as exc:
        _fail(str(exc))
    click.echo(f"tree version {version} stored from {file}")


@tree.command("show")
@click.option("--db", "db_url", required=True, help="postgresql://… of the centre's database")
def show(db_url: str) -> None:
    """Print the current tree's TOML."""
    import psycopg

    from station.centre import screen

    try:
        with psycopg.connect(db_url, connect_timeout=10) as conn:
            screen.ensure_screen_schema(conn)
            _version, text = screen.load_tree_text(conn)
    except psycopg.Error as exc:
        _fail(f"centre tree show: database {redact_url(db_url)}: {str(exc).strip()}", 1)
    click.echo(text, nl=not text.endswith("\n"))
