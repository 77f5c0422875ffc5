"""The board's login: users file, sessions, roles, cookie flags, rate limits, logout and revocation
(Starlette TestClient against the real app, real users and secret files)."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from station.board.auth import (
    COOKIE,
    AuthError,
    UsersFile,
    hash_password,
    load_secret,
    verify_password,
)
from station.board.history import BoardHistory
from station.board.run import Board, BoardOptions
from station.board.state import BoardState
from station.board.web import create_app
from tests.support.board_auth import ADMIN, VIEWER, login, make_auth

P = "checkpoint/v1"
BASE = "http://127.0.0.1:8080"


def _app(tmp_path: Path, **kw: object) -> tuple[BoardState, object, TestClient]:
    state = BoardState(BoardHistory(tmp_path / "b.sqlite3"), P)
    state.handle(f"{P}/s1/lane-1/status", json.dumps({"state": "online", "session": 1}).encode())
    auth = make_auth(tmp_path / "data", **kw)  # type: ignore[arg-type]
    return state, auth, TestClient(create_app(state, auth), base_url=BASE)


def test_every_page_and_endpoint_needs_a_session(tmp_path: Path) -> None:
    _state, _auth, client = _app(tmp_path)
    page = client.get("/", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/login"
    for path in ("/api/stations", "/api/stream", "/api/whoami", "/static/board.js", "/api/stations/s1/lane-1/snapshot.jpg"):
        assert client.get(path).status_code == 401, path
    assert client.post("/api/stations/s1/lane-1/forget").status_code == 401
    health = client.get("/healthz")
    assert health.status_code == 200 and "lane-1" not in health.text, "healthz has counters only, no station data"
    assert health.json()["board"]["stations"] == 1
    login_page = client.get("/login?e=<script>")
    assert login_page.status_code == 200 and "<script>" not in login_page.text, "the query is never reflected"
    assert "script-src 'self'" in login_page.headers["content-security-policy"]


def test_login_sets_a_strict_httponly_cookie_and_roles_are_enforced(tmp_path: Path) -> None:
    state, _auth, client = _app(tmp_path)
    r = login(client, ("wall", "not-the-password"))
    assert r.status_code == 303 and r.headers["location"] == "/login?e=bad" and COOKIE not in r.headers.get("set-cookie", "")
    r = login(client)
    cookie = r.headers["set-cookie"]
    assert r.status_code == 303 and r.headers["location"] == "/"
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie, "plain http here: no Secure"
    assert client.get("/api/whoami").json()["role"] == "viewer"
    assert client.get("/api/stations").json()["totals"]["stations"] == 1
    assert client.post("/api/stations/s1/lane-1/forget").status_code == 403, "a viewer changes nothing"

    admin = TestClient(client.app, base_url=BASE)
    login(admin, ADMIN)
    refused = admin.post("/api/stations/s1/lane-1/forget", headers={"Origin": "https://evil.example"})
    assert refused.status_code == 403, "cross-site request refused"
    assert admin.post("/api/stations/s1/lane-1/forget", headers={"Origin": BASE}).json() == {"ok": True}
    assert state.view()["totals"]["stations"] == 0


def test_secure_cookie_behind_a_https_origin_and_cross_site_login_refused(tmp_path: Path) -> None:
    _state, _auth, client = _app(tmp_path, public_origin="https://board.example")
    assert "Secure" in login(client).headers["set-cookie"]
    other = TestClient(client.app, base_url=BASE)
    r = other.post(
        "/login", data={"user": VIEWER[0], "password": VIEWER[1]}, headers={"Origin": "https://evil.example"}, follow_redirects=False
    )
    assert r.headers["location"] == "/login?e=origin" and "set-cookie" not in r.headers
    r = other.post(
        "/login", data={"user": VIEWER[0], "password": VIEWER[1]}, headers={"Origin": "https://board.example"}, follow_redirects=False
    )
    assert r.headers["location"] == "/", "the configured public origin is our own"


def test_login_attempts_are_rate_limited_per_user(tmp_path: Path) -> None:
    _state, auth, client = _app(tmp_path)
    for _ in range(5):
        assert login(client, (VIEWER[0], "wrong-password-x")).headers["location"] == "/login?e=bad"
    r = login(client)  # the right password, but the user's budget is spent
    assert r.headers["location"] == "/login?e=limited" and client.get("/api/whoami").status_code == 401
    assert login(client, ADMIN).headers["location"] == "/", "another user is not locked out"
    assert auth.per_user.refused_total() == 1  # type: ignore[attr-defined]


def test_logout_password_change_removal_and_tampering_end_a_session(tmp_path: Path) -> None:
    _state, auth, client = _app(tmp_path)
    login(client)
    cookie = client.cookies[COOKIE]
    assert client.post("/logout", follow_redirects=False).status_code == 303
    replay = TestClient(client.app, base_url=BASE, cookies={COOKIE: cookie})
    assert replay.get("/api/whoami").status_code == 401, "a logged-out cookie is void"

    users: UsersFile = auth.users  # type: ignore[attr-defined]
    fresh = TestClient(client.app, base_url=BASE)
    login(fresh)
    assert fresh.get("/api/whoami").status_code == 200
    payload, mac = fresh.cookies[COOKIE].split(".")
    forged = TestClient(client.app, base_url=BASE, cookies={COOKIE: payload.replace("d", "e", 1) + "." + mac})
    assert forged.get("/api/whoami").status_code == 401
    users.add(VIEWER[0], "viewer", "a-brand-new-password")
    assert fresh.get("/api/whoami").status_code == 401, "a new password ends the old sessions"
    login(fresh, (VIEWER[0], "a-brand-new-password"))
    assert fresh.get("/api/whoami").status_code == 200
    users.remove(VIEWER[0])
    assert fresh.get("/api/whoami").status_code == 401, "a removed user is out at the next request"


def test_users_file_holds_only_scrypt_hashes_and_secrets_are_private(tmp_path: Path) -> None:
    _app(tmp_path)
    path = tmp_path / "data" / "board-users.json"
    text = path.read_text()
    assert VIEWER[1] not in text and ADMIN[1] not in text
    entries = json.loads(text)["users"]
    assert {n: e["role"] for n, e in entries.items()} == {"wall": "viewer", "chief": "admin"}
    assert all(e["password"].startswith("scrypt$16384$8$1$") for e in entries.values())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "data" / "board-session.key").stat().st_mode) == 0o600
    assert load_secret(tmp_path / "data") == load_secret(tmp_path / "data"), "created once, then kept"
    a, b = hash_password("same-password-1"), hash_password("same-password-1")
    assert a != b and verify_password("same-password-1", a) and not verify_password("same-password-2", a)
    assert not verify_password("x", "scrypt$1$1$1$00$00") and not verify_password("x", "garbage")
    with pytest.raises(AuthError):
        hash_password("short")
    with pytest.raises(AuthError):
        UsersFile(tmp_path / "u.json").add("bad name!", "viewer", "long-enough-pass")
    with pytest.raises(AuthError):
        UsersFile(tmp_path / "u.json").add("ok", "root", "long-enough-pass")


@pytest.mark.slow
def test_board_refuses_to_start_without_users_and_the_cli_adds_one(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no board users"):
        Board(BoardOptions(mqtt_url="mqtt://127.0.0.1:1", data_dir=tmp_path / "board"))
    users = tmp_path / "board" / "board-users.json"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "station.cli.stationctl",
            "board-user",
            "add",
            "ops",
            "--role",
            "admin",
            "--users",
            str(users),
            "--password-stdin",
        ],
        input="ops-long-password\n",
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    listed = subprocess.run(
        [sys.executable, "-m", "station.cli.stationctl", "board-user", "list", "--users", str(users)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert listed.stdout.split() == ["ops", "admin"]
    assert UsersFile(users).authenticate("ops", "ops-long-password") is not None
    assert UsersFile(users).authenticate("ops", "ops-long-passwore") is None
    assert UsersFile(users).authenticate("nobody", "ops-long-password") is None
    board = Board(BoardOptions(mqtt_url="mqtt://127.0.0.1:1", data_dir=tmp_path / "board"))
    board.history.close()
