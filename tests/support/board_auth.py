"""Board login helpers shared by the board tests: a users file with a viewer and an admin, and a login."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from station.board.auth import Sessions, UsersFile, load_secret
from station.board.web import BoardAuth

VIEWER = ("wall", "wall-screen-password")
ADMIN = ("chief", "chief-admin-password")


def make_users(path: Path) -> UsersFile:
    users = UsersFile(path)
    users.add(VIEWER[0], "viewer", VIEWER[1])
    users.add(ADMIN[0], "admin", ADMIN[1])
    return users


def make_auth(data_dir: Path, **kw: Any) -> BoardAuth:
    data_dir.mkdir(parents=True, exist_ok=True)
    users = make_users(data_dir / "board-users.json")
    return BoardAuth(users, Sessions(load_secret(data_dir), users), **kw)


def login(client: Any, who: tuple[str, str] = VIEWER) -> Any:
    """Log ``client`` (Starlette TestClient or httpx.Client) in; returns the response to POST /login."""
    return client.post("/login", data={"user": who[0], "password": who[1]}, follow_redirects=False)
