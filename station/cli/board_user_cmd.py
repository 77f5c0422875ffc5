"""``stationctl board-user add|remove|list``: the command-centre board's users file (station/board/auth.py)."""

from __future__ import annotations

import getpass
import sys
from pathlib import Path

import click

from station.board.auth import ROLES, AuthError, UsersFile, describe
from station.cli.common import group

USERS_OPTION = click.option(
    "--users",
    "users_path",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="The board's users file (station board --users FILE)",
)


@group("board-user")
def board_user() -> None:
    """Users of the command-centre board (指挥大屏): scrypt-hashed passwords, roles viewer / admin."""


@board_user.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), default="viewer", show_default=True)
@USERS_OPTION
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin (scripts) instead of prompting")
def add(name: str, role: str, users_path: Path, password_stdin: bool) -> None:
    """Add user NAME (or set their role and a new password: their sessions end)."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"password for {name}: ")
        if password != getpass.getpass("again: "):
            click.echo("the two passwords differ", err=True)
            sys.exit(2)
    try:
        UsersFile(users_path).add(name, role, password)
    except AuthError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    click.echo(f"board user {name} ({role}) saved in {users_path}")


@board_user.command("remove")
@click.argument("name")
@USERS_OPTION
def remove(name: str, users_path: Path) -> None:
    """Remove user NAME (their sessions end at their next request)."""
    try:
        found = UsersFile(users_path).remove(name)
    except AuthError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    if not found:
        click.echo(f"no board user {name}", err=True)
        sys.exit(1)
    click.echo(f"board user {name} removed")


@board_user.command("list")
@USERS_OPTION
def list_users(users_path: Path) -> None:
    """Users and roles (never the hashes)."""
    try:
        for row in describe(UsersFile(users_path)):
            click.echo(f"{row['user']}\t{row['role']}")
    except AuthError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
