"""The centre's big screen against a real PostgreSQL: roll-ups from seeded events, the alarm queue, roles, audit, escaping.

Events are written by the centre's own batch writer (tests/support/centre_screen.py); the app is the
real Starlette app (TestClient), users are ``centre_users`` rows with scrypt hashes.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from starlette.testclient import TestClient

from station.centre import screen
from station.centre.auth import COOKIE
from station.centre.page import Screen, create_screen_app
from tests.support.centre_screen import ADMIN, TRACER, TREE, UTC, VIEWER, add_users, login, seed
from tests.support.postgres import pg_server, pg_url

__all__ = ["pg_server", "pg_url"]

BASE = "http://127.0.0.1:8090"
JSON_ORIGIN = {"Origin": BASE}


@pytest.fixture
def seeded(pg_url: str) -> Iterator[tuple[str, Any]]:
    today = dt.datetime.now(UTC).date()
    add_users(pg_url)
    plan = [
        ("gate-a", "st-01", 8, "pass", "green", 20),
        ("gate-a", "st-01", 8, "deny_fever", "green", 2),
        ("gate-a", "st-02", 9, "pass", "green", 10),
        ("gate-a", "st-02", 9, "deny_code", "red", 3),
        ("market", "m1", 9, "pass", "yellow", 5),
        ("market", "m1", 10, "manual_check", None, 1),
        ("rogue", "x-1", 10, "pass", "green", 4),
        ("rogue", "x-1", 11, "deny_fever", "green", 1),
    ]
    got = seed(pg_url, today, plan)
    seed(pg_url, today - dt.timedelta(days=7), [("gate-a", "st-01", 8, "pass", "green", 9), ("market", "m1", 12, "pass", "green", 2)])
    with psycopg.connect(pg_url) as conn:  # the stations' summary (the writer folds it in about once a second)
        conn.execute("INSERT INTO stations VALUES ('quiet', 'q-1', now(), now()) ON CONFLICT DO NOTHING")
    sc = Screen(pg_url)
    sc.open()
    with psycopg.connect(pg_url) as conn:
        screen.save_tree(conn, 0, TREE, "setup", "admin", "tree.load", "")
    yield pg_url, got
    sc.close()


def _client(url: str, who: tuple[str, str] | None = None) -> TestClient:
    sc = Screen(url)
    sc.open()
    client = TestClient(create_screen_app(sc), base_url=BASE)
    if who:
        assert login(client, who).headers["location"] == "/"
    return client


def test_the_dashboard_rolls_up_along_the_tree_from_the_database(seeded: tuple[str, Any]) -> None:
    url, got = seeded
    client = _client(url, VIEWER)
    body = client.get("/api/dashboard").json()
    t = body["totals"]
    assert t["screened"] == sum(got.screened.values()) == 46, "each fever's alarm copy is not a second screening"
    assert (t["pass"], t["fevers"], t["deny_code"], t["manual_check"]) == (39, 3, 3, 1)
    assert (t["green"], t["yellow"], t["red"]) == (37, 5, 3) and body["colours"]["none"] == 1
    kids = {c["path"]: c for c in body["tree"]["children"]}
    assert kids["east"]["totals"]["screened"] == 35 and kids["west"]["totals"]["screened"] == 6
    loose = kids["unassigned"]
    assert loose["totals"]["screened"] == 5 and loose["totals"]["fevers"] == 1
    assert {(s["site"], s["station"]) for s in loose["stations"]} == {("rogue", "x-1"), ("quiet", "q-1")}, "heard-but-quiet too"
    assert body["hourly"]["today"][8:12] == [22, 18, 5, 1] and sum(n or 0 for n in body["hourly"]["today"]) == 46
    now_hour = dt.datetime.now(UTC).hour
    assert all(n is None for h, n in enumerate(body["hourly"]["today"]) if h > now_hour and h not in (8, 9, 10, 11)), "not yet, not zero"
    assert body["hourly"]["last_week"][8] == 9 and body["hourly"]["last_week"][12] == 2
    assert body["fever_rate_pct"][8] == round(100 * 2 / 22, 2) and body["fever_rate_pct"][0] is None
    assert [s["path"] for s in body["sparklines"]] == ["east/g1/gate", "west/g2/market", "unassigned/quiet/q-1", "unassigned/rogue/x-1"]

    east = client.get("/api/dashboard", params={"node": "east/g1/gate"}).json()
    assert east["totals"]["screened"] == 35 and east["hourly"]["today"][8:10] == [22, 13] and east["hourly"]["last_week"][8] == 9
    assert [s["path"] for s in east["sparklines"]] == ["east/g1/gate"] and sum(east["sparklines"][0]["screened"]) == 35
    assert client.get("/api/dashboard", params={"node": "unassigned"}).json()["totals"]["screened"] == 5
    assert client.get("/api/dashboard", params={"node": "nowhere"}).status_code == 404


def test_dashboard_queries_prune_to_one_day_and_the_alarm_queue_reads_its_partial_index(seeded: tuple[str, Any]) -> None:
    url, _ = seeded
    today = dt.datetime.now(UTC).date()
    start, end = dt.datetime.combine(today, dt.time(), UTC), dt.datetime.combine(today + dt.timedelta(days=1), dt.time(), UTC)
    with psycopg.connect(url) as conn:
        conn.execute("SET enable_seqscan = off")  # the seeded tables are tiny: ask what the planner *can* use
        plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + screen.HOURLY, {"tz": "UTC", "start": start, "end": end}).fetchall())
        assert f"events_p{today:%Y%m%d}" in plan and f"events_p{today - dt.timedelta(days=7):%Y%m%d}" not in plan, plan
        sql = f"EXPLAIN SELECT ts FROM events WHERE ts >= %s AND {screen.ALARM_WHERE}"
        plan = "\n".join(r[0] for r in conn.execute(sql, (start,)).fetchall())
        used = re.findall(r"using (\S+) on", plan)
        assert used, plan
        (indexdef,) = conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", (used[0],)).fetchone() or ("",)
        assert "WHERE" in indexdef and "deny_fever" in indexdef, f"the partial index events_alarm_queue: {indexdef}"


def test_roles_viewer_sees_tracer_handles_alarms_admin_edits_the_tree_and_all_is_audited(seeded: tuple[str, Any]) -> None:
    url, got = seeded
    viewer, tracer, admin = _client(url, VIEWER), _client(url, TRACER), _client(url, ADMIN)
    alarms = viewer.get("/api/alarms").json()["alarms"]
    assert {(a["site"], a["station"], a["event_id"]) for a in alarms} == set(got.alarms) and len(alarms) == 6
    assert all(a["state"] == "open" for a in alarms)
    site, station, event_id = got.alarms[0]
    key = {"site": site, "station": station, "event_id": event_id}
    edit = {"version": 1, "op": "rename", "path": "east", "name": "城东"}

    assert viewer.post("/api/alarms/ack", json=key, headers=JSON_ORIGIN).status_code == 403
    assert viewer.post("/api/tree/edit", json=edit, headers=JSON_ORIGIN).status_code == 403
    assert tracer.post("/api/tree/edit", json=edit, headers=JSON_ORIGIN).status_code == 403, "a tracer cannot edit the tree"
    assert tracer.post("/api/alarms/ack", json=key, headers={"Origin": "https://evil.example"}).status_code == 403
    assert tracer.post("/api/alarms/ack", content=b"site=x", headers={**JSON_ORIGIN, "content-type": "text/plain"}).status_code == 415
    assert tracer.post("/api/alarms/close", json={**key, "note": "x"}, headers=JSON_ORIGIN).status_code == 409, "acknowledge first"
    assert tracer.post("/api/alarms/ack", json=key, headers=JSON_ORIGIN).json() == {
        "ok": True,
        "state": "acknowledged",
        "by": "duty",
        "mirrored": None,
    }
    assert tracer.post("/api/alarms/ack", json=key, headers=JSON_ORIGIN).status_code == 409
    assert tracer.post("/api/alarms/close", json={**key, "note": "  "}, headers=JSON_ORIGIN).status_code == 400, "a note is required"
    assert tracer.post("/api/alarms/ack", json={**key, "event_id": "nope"}, headers=JSON_ORIGIN).status_code == 404
    assert tracer.post("/api/alarms/ack", json={**key, "site": "<b>"}, headers=JSON_ORIGIN).status_code == 400
    assert admin.post("/api/alarms/close", json={**key, "note": "复测 36.8 °C, released"}, headers=JSON_ORIGIN).json()["state"] == "closed"
    after = {a["event_id"]: a for a in viewer.get("/api/alarms").json()["alarms"]}
    done = after[event_id]
    assert (done["state"], done["ack_by"], done["closed_by"], done["note"]) == ("closed", "duty", "chief", "复测 36.8 °C, released")
    assert done["ack_at"] <= done["closed_at"] <= time.time() + 1
    assert list(after)[-1] == event_id, "closed alarms sort after the open ones"

    assert admin.post("/api/tree/edit", json=edit, headers=JSON_ORIGIN).json() == {"ok": True, "version": 2}
    assert admin.post("/api/tree/edit", json=edit, headers=JSON_ORIGIN).status_code == 409, "an edit on an old version is refused"
    bad = admin.post("/api/tree/edit", json={**edit, "version": 2, "op": "move", "parent": "west/g2"}, headers=JSON_ORIGIN)
    assert bad.status_code == 400 and "its parent must be a district" in bad.json()["error"]
    assigned = admin.post(
        "/api/tree/edit", json={"version": 2, "op": "assign", "station": "rogue/x-1", "checkpoint": "west/g2/market"}, headers=JSON_ORIGIN
    )
    assert assigned.json()["version"] == 3
    body = viewer.get("/api/dashboard").json()
    kids = {c["path"]: c for c in body["tree"]["children"]}
    assert kids["east"]["name"] == "城东" and kids["west"]["totals"]["screened"] == 11 and kids["unassigned"]["totals"]["screened"] == 0
    assert "# both lanes of the east gate" in viewer.get("/api/tree").json()["toml"], "the admin's comments survive page edits"

    assert viewer.get("/api/audit").status_code == 403
    audit = admin.get("/api/audit").json()["audit"]
    assert [(a["actor"], a["role"], a["action"], a["target"]) for a in audit[:4]] == [
        ("chief", "admin", "tree.assign", "rogue/x-1"),
        ("chief", "admin", "tree.rename", "east"),
        ("chief", "admin", "alarm.close", f"{site}/{station}/{event_id}"),
        ("duty", "tracer", "alarm.acknowledge", f"{site}/{station}/{event_id}"),
    ]
    assert audit[0]["detail"]["version"] == 3 and audit[2]["detail"]["note"] == "复测 36.8 °C, released"


def test_login_sessions_live_in_the_database_and_logout_holds_on_every_replica(seeded: tuple[str, Any]) -> None:
    url, _ = seeded
    a = _client(url)
    assert a.get("/", follow_redirects=False).headers["location"] == "/login"
    for path in ("/api/dashboard", "/api/alarms", "/api/tree", "/api/whoami", "/static/centre.js", "/static/chart.umd.min.js"):
        assert a.get(path).status_code == 401, path
    assert login(a, (VIEWER[0], "wrong-password!")).headers["location"] == "/login?e=bad"
    r = login(a, VIEWER)
    assert "HttpOnly" in r.headers["set-cookie"] and "SameSite=Strict" in r.headers["set-cookie"] and COOKIE in r.headers["set-cookie"]
    cookie = a.cookies[COOKIE]
    b = _client(url)  # another replica: same database, its own process state
    b.cookies.set(COOKIE, cookie)
    assert b.get("/api/whoami").json()["user"] == "wall", "a session signed by one replica is honoured by another"
    assert a.post("/logout", headers=JSON_ORIGIN, follow_redirects=False).status_code == 303
    assert b.get("/api/whoami").status_code == 401, "logged out on every replica"
    c = _client(url, TRACER)
    from station.board.auth import hash_password
    from station.centre import db

    with db.connect(url) as conn:
        db.add_user(conn, TRACER[0], "viewer", hash_password("a-new-long-password"))
    assert c.get("/api/whoami").status_code == 401, "a new password (or role) ends the old sessions"
    page = c.get("/login?e=<script>alert(1)</script>")
    assert "<script>alert" not in page.text and "script-src 'self'" in page.headers["content-security-policy"]
    assert "unsafe-inline" not in page.headers["content-security-policy"].split("script-src")[1].split(";")[0]


def test_names_with_markup_reach_the_page_only_as_json_data(seeded: tuple[str, Any]) -> None:
    url, _ = seeded
    admin = _client(url, ADMIN)
    hostile = '<img src=x onerror="alert(1)">'
    assert admin.post("/api/tree/edit", json={"version": 1, "op": "rename", "path": "west", "name": hostile}, headers=JSON_ORIGIN).json()[
        "ok"
    ]
    body = admin.get("/api/dashboard")
    assert body.headers["content-type"] == "application/json"
    assert {c["name"] for c in body.json()["tree"]["children"]} >= {hostile}
    page = admin.get("/")
    assert page.status_code == 200 and hostile not in page.text and "onerror" not in page.text, "the page is static; values come as data"
    js = admin.get("/static/centre.js").text
    assert "innerHTML" not in js and "insertAdjacentHTML" not in js and "document.write" not in js
    bad = admin.post("/api/tree/edit", json={"version": 2, "op": "add", "parent": "", "key": "<b>", "name": "x"}, headers=JSON_ORIGIN)
    assert bad.status_code == 400 and bad.json()["problems"] == ["key '<b>' not allowed (1-64 of A-Z a-z 0-9 _ -)"]
    assert admin.post("/api/tree/edit", content=b"\xff\xfe", headers={**JSON_ORIGIN, "content-type": "application/json"}).status_code == 400
    big = admin.post("/api/tree/edit", content=b"{" + b" " * 20000 + b"}", headers={**JSON_ORIGIN, "content-type": "application/json"})
    assert big.status_code == 400


@pytest.mark.slow
def test_tree_cli_checks_loads_and_shows_the_registry(pg_url: str, tmp_path: Any) -> None:
    import subprocess
    import sys

    good = tmp_path / "tree.toml"
    good.write_text(TREE, encoding="utf-8")
    bad = tmp_path / "bad.toml"
    bad.write_text("[towns.t]\nname = 'x'\ncolour = 'red'\n", encoding="utf-8")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "station.centre.cli", "tree", *args], capture_output=True, text=True, timeout=60)

    refused = cli("check", str(bad))
    assert (
        refused.returncode == 2
        and "towns.t.colour: unknown key (allowed for a town: escalate_after_min, grids, name, responders)" in refused.stderr
    )
    assert cli("check", str(good)).stdout.strip().endswith("6 nodes, 2 stations by name, 1 whole sites")
    loaded = cli("load", str(good), "--db", pg_url, "--by", "ops")
    assert loaded.returncode == 0 and "tree version 1 stored" in loaded.stdout, loaded.stderr
    assert cli("show", "--db", pg_url).stdout == TREE
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT actor, action, detail->>'version' FROM centre_audit").fetchall() == [("ops", "tree.load", "1")]


def test_the_hourly_rollup_takes_late_arrivals_into_their_own_hours_and_never_counts_twice(pg_url: str) -> None:
    today = dt.datetime.now(UTC).date()
    seed(pg_url, today, [("gate-a", "st-01", 8, "pass", "green", 10), ("gate-a", "st-01", 9, "deny_fever", "green", 2)])
    with psycopg.connect(pg_url, autocommit=True) as conn:
        tz, _ = screen.ensure_screen_schema(conn)
        first = screen.sync_hourly(conn, [today], tz, min_interval_s=0)
        assert (first.days, first.hours) == (1, 0)
        assert screen.hourly(screen.day_rows(conn, today, tz), {("gate-a", "st-01")})["screened"][8:10] == [10, 2]
        assert screen.sync_hourly(conn, [today], tz, min_interval_s=0).days == 0, "a day is filled once"
        # A station's backlog after an outage: rows for 08:00 and 13:00 arrive now, one of them delivered twice.
        late = seed(pg_url, today, [("gate-a", "st-01", 8, "pass", "yellow", 3), ("gate-a", "st-02", 13, "deny_code", "red", 1)])
        again = screen.sync_hourly(conn, [today], tz, min_interval_s=0)
        assert again.hours >= 2 and again.days == 0
        rows = screen.day_rows(conn, today, tz)
        got = screen.hourly(rows, {("gate-a", "st-01"), ("gate-a", "st-02")})["screened"]
        assert got[8:10] == [13, 2] and got[13] == 1 and sum(got) == 16 == 12 + sum(late.screened.values())
        assert screen.per_station(rows)[("gate-a", "st-01")]["yellow"] == 3
        assert screen.sync_hourly(conn, [today], tz, min_interval_s=0).hours <= 3, (
            "only the hours that received rows within the safety margin"
        )
        assert sum(screen.hourly(screen.day_rows(conn, today, tz), {("gate-a", "st-01")})["screened"]) == 15, "recomputing is idempotent"
        seed(pg_url, today, [("gate-a", "st-01", 10, "pass", "green", 1)])
        assert screen.sync_hourly(conn, [today], tz, min_interval_s=60).hours == 0, "another replica synced moments ago"
        assert screen.sync_hourly(conn, [today], tz, min_interval_s=0).hours >= 1
        conn.execute("SET enable_seqscan = off")
        plan = "\n".join(
            r[0]
            for r in conn.execute(
                "EXPLAIN SELECT DISTINCT date_trunc('hour', ts, 'UTC') FROM events WHERE received_at > now() - interval '1 minute'"
            ).fetchall()
        )
        assert "Bitmap Index Scan" in plan and "received_at_idx" in plan, plan
