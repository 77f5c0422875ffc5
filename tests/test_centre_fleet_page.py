"""The fleet page's API (station/centre/page_fleet.py): hostile push requests refused naming the field, roles, grouping.

The push checks are pure; the API tests run the real app (Starlette TestClient) on a real PostgreSQL with
the fleet rows written by the centre's own fleet writer (``write_updates`` of parsed retained messages).
A push reaching a station is in tests/test_centre_fleet_browser.py (real daemon, mosquitto, chromium).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from starlette.testclient import TestClient

from sim.issuer import demo_issuer, demo_trust_signer
from station.centre import fleet as fl
from station.centre import screen
from station.centre.page import Screen, create_screen_app
from station.centre.page_fleet import FILE_MAX, Invalid, PushRequest, parse_push
from station.codes.trust_list import certificate_entry, sign_document
from tests.support.centre_screen import ADMIN, TRACER, TREE, UTC, VIEWER, add_users, login, seed
from tests.support.postgres import pg_server, pg_url

__all__ = ["pg_server", "pg_url"]

BASE = "http://127.0.0.1:8090"
ORIGIN = {"Origin": BASE}
P = "checkpoint/v1"
OK = {"command": "set-threshold", "station": "gate-a/st-01", "reason": "summer re-calibration", "fever_threshold_c": 37.5}


def _plates(plates: Any, **extra: Any) -> dict[str, Any]:
    return {**OK, "command": "resident-plates", "fever_threshold_c": None, "file": json.dumps({"plates": plates, **extra})}


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ([], "body", "JSON object"),
        ({**OK, "command": "district-key"}, "command", "one of"),
        ({**OK, "command": "open-gate"}, "command", "one of"),
        ({**OK, "station": "gate-a"}, "station", "site/station"),
        ({**OK, "station": "gate-a/<b>x</b>"}, "station", "site/station"),
        ({**OK, "node": "east"}, "station", "one target"),
        ({k: v for k, v in OK.items() if k != "station"}, "station", "one target"),
        ({**OK, "station": None, "node": 5}, "node", "tree path"),
        ({**OK, "reason": "why"}, "reason", "8-300"),
        ({**OK, "reason": ["summer re-calibration"]}, "reason", "8-300"),
        ({**OK, "fever_threshold_c": 41.0}, "fever_threshold_c", "outside 35-40"),
        ({**OK, "fever_threshold_c": 34.9}, "fever_threshold_c", "outside 35-40"),
        ({**OK, "fever_threshold_c": True}, "fever_threshold_c", "a number"),
        ({**OK, "fever_threshold_c": "37.5"}, "fever_threshold_c", "a number"),
        ({**OK, "fever_threshold_c": float("nan")}, "fever_threshold_c", "a number"),
        ({**OK, "fever_threshold_c": 10**400}, "fever_threshold_c", "outside"),
        ({**OK, "command": "resident-plates"}, "file", "choose a JSON file"),
        ({**OK, "command": "resident-plates", "file": "x" * (FILE_MAX + 1)}, "file", f"at most {FILE_MAX} bytes"),
        ({**OK, "command": "resident-plates", "file": "{not json"}, "file", "not valid JSON"),
        ({**OK, "command": "resident-plates", "file": "[" * 150000 + "]" * 150000}, "file", "at most"),
        ({**OK, "command": "resident-plates", "file": "[" * 5000 + "]" * 5000}, "file", "not valid JSON"),
        ({**OK, "command": "resident-plates", "file": '["浙A12345"]'}, "file", "JSON object"),
        (_plates("浙A12345"), "file.plates", "JSON array"),
        (_plates(["浙A12345", "<script>", 7]), "file.plates", "2 bad entries"),
        (_plates(["浙A12345"], version=0), "file.version", ">= 1"),
        (_plates(["浙A12345"], owner="x"), "file", "unexpected keys"),
        ({**OK, "command": "trust-list", "file": json.dumps({"version": 2, "certificates": []})}, "file.signature", "missing"),
        (
            {
                **OK,
                "command": "trust-list",
                "file": json.dumps({"version": 2, "certificates": [{"kid": "AA==", "der": "AA=="}], "signature": "AAAA"}),
            },
            "file.certificates",
            "certificate 0",
        ),
        (
            {**OK, "command": "trust-list", "file": json.dumps({"version": "2", "certificates": [], "signature": "AAAA"})},
            "file.version",
            ">= 1",
        ),
    ],
)
def test_hostile_push_requests_are_refused_naming_the_field(body: Any, field: str, words: str) -> None:
    got = parse_push(body)
    assert isinstance(got, Invalid), got
    assert got.field == field and words in got.message, str(got)


def test_good_push_requests_become_the_commands_args() -> None:
    got = parse_push(OK)
    assert got == PushRequest("set-threshold", {"fever_threshold_c": 37.5}, ("gate-a", "st-01"), None, "summer re-calibration")
    plates = parse_push({**_plates(["浙A12345", "浙A12345", "浙B54321"], version=3), "station": None, "node": ""})
    assert isinstance(plates, PushRequest) and plates.node == "" and plates.station is None
    assert plates.args == {"plates": ["浙A12345", "浙B54321"], "version": 3}
    doc = sign_document([certificate_entry(demo_issuer().cert_der)], 4, demo_trust_signer())
    trust = parse_push({**OK, "command": "trust-list", "file": json.dumps(doc)})
    assert isinstance(trust, PushRequest) and trust.args == {"version": 4, "document": doc}


def _status(site: str, station: str, part: str, body: dict[str, Any], at: float = 1.0) -> fl.StateUpdate:
    topic = f"{P}/{site}/{station}/status" if part == "status" else f"{P}/{site}/{station}/state/{part}"
    got = fl.parse_state(P, topic, json.dumps(body).encode(), at)
    assert isinstance(got, fl.StateUpdate), got
    return got


@pytest.fixture()
def screen_app(pg_url: str) -> Iterator[tuple[Screen, TestClient]]:
    import time

    add_users(pg_url)
    now = time.time()
    seed(pg_url, dt.datetime.now(UTC).date(), [("market", "m1", 8, "pass", "green", 2)])  # heard on events, no state published
    with psycopg.connect(pg_url) as conn:
        # seed() numbers a day's records from 100000 × (day % 1000): below them nothing is expected (not 95 million missing)
        conn.execute("INSERT INTO station_seq_floor SELECT site, station, min(seq) - 1 FROM events GROUP BY site, station")
        fl.ensure_fleet_schema(conn)
        fl.write_updates(
            conn,
            [
                _status("gate-a", "st-01", "status", {"state": "online", "session": 3, "version": "1.4.0"}, now),
                _status("gate-a", "st-01", "fleet", {"config_hash": "0123456789abcdef", "trust_list_version": 2}, now),
                _status("gate-a", "st-01", "outbox", {"pending": 17, "oldest_age_s": 4, "mqtt": "connected"}, now),
                _status("rogue", "x-1", "status", {"state": "offline", "session": 1, "version": "<img src=x onerror=alert(1)>"}, now - 900),
            ],
        )
        screen.ensure_screen_schema(conn)
        screen.save_tree(conn, 0, TREE, "setup", "admin", "tree.load", "")
    sc = Screen(pg_url)
    sc.open()
    try:
        yield sc, TestClient(create_screen_app(sc), base_url=BASE)
    finally:
        sc.close()


def _stations(node: dict[str, Any]) -> dict[str, list[str]]:
    out = {node["path"]: [f"{s['site']}/{s['station']}" for s in node.get("stations", [])]}
    for child in node.get("children", []):
        out |= _stations(child)
    return out


@pytest.mark.slow
def test_the_fleet_is_grouped_along_the_tree_and_a_viewer_cannot_push(screen_app: tuple[Screen, TestClient], pg_url: str) -> None:
    sc, client = screen_app
    login(client, VIEWER)
    assert client.get("/fleet").status_code == 200 and client.get("/fleet/fleet.js").status_code == 200
    assert client.get("/fleet/secrets.py").status_code == 404
    body = client.get("/api/fleet").json()
    placed = _stations(body["tree"])
    assert placed["east/g1/gate"] == ["gate-a/st-01"] and placed["west/g2/market"] == ["market/m1"]
    assert placed["unassigned"] == ["rogue/x-1"], "a station the tree does not place is under unassigned, never dropped"
    rows = {f"{r['site']}/{r['station']}": r for r in body["tree"]["children"][0]["children"][0]["children"][0]["stations"]}
    st = rows["gate-a/st-01"]
    assert (st["version"], st["config_hash"], st["outbox_pending"], st["trust_list_version"]) == ("1.4.0", "0123456789abcdef", 17, 2)
    rogue = body["tree"]["children"][-1]["stations"][0]
    assert rogue["version"] == "<img src=x onerror=alert(1)>" and rogue["offline_over_10min"] is True
    market = body["tree"]["children"][1]["children"][0]["children"][0]["stations"][0]
    assert market == {"site": "market", "station": "m1", "state": None, "no_state": True}
    assert body["summary"]["stations"] == 3 and body["summary"]["no_state"] == 1 and body["summary"]["offline_over_10min"] == 1
    assert body["tree"]["summary"]["online"] == 1
    assert body["pushes"]["available"] is False
    refused = client.post("/api/fleet/push", json=OK, headers=ORIGIN)
    assert refused.status_code == 403 and refused.json()["error"] == "admin role required"
    assert client.get("/api/fleet/pushes").status_code == 403
    login(client, TRACER)
    assert client.post("/api/fleet/push", json=OK, headers=ORIGIN).status_code == 403
    with psycopg.connect(pg_url) as conn:
        audit = conn.execute("SELECT actor, role, action FROM centre_audit WHERE action LIKE 'push%' ORDER BY id").fetchall()
    assert audit == [("wall", "viewer", "push.refused"), ("duty", "tracer", "push.refused")]


@pytest.mark.slow
def test_without_a_command_key_an_admin_is_told_pushes_are_unavailable_and_hostile_bodies_are_refused(
    screen_app: tuple[Screen, TestClient], tmp_path: Path
) -> None:
    sc, client = screen_app
    login(client, ADMIN)
    pushes = client.get("/api/fleet").json()["pushes"]
    assert pushes["available"] is False and "--command-key" in pushes["why"] and pushes["threshold_range"] == [35.0, 40.0]
    off = client.post("/api/fleet/push", json=OK, headers=ORIGIN)
    assert off.status_code == 503 and "pushes are unavailable" in off.json()["error"]

    from station.centre.mirror import AlarmMirror
    from station.link.command_auth import new_signing_key, private_pem

    (tmp_path / "k.pem").write_bytes(private_pem(new_signing_key()))
    sc.mirror = AlarmMirror("mqtt://127.0.0.1:1", tmp_path / "k.pem")  # never started: nothing below reaches a broker
    assert client.get("/api/fleet").json()["pushes"]["available"] is True
    cases = [
        ({**OK, "fever_threshold_c": 45}, 400, "fever_threshold_c"),
        ({**OK, "station": "gate-a/st-99"}, 400, "station"),
        ({**OK, "station": None, "node": "nowhere"}, 400, "node"),
        ({**OK, "station": None, "node": "east/g1/empty"}, 400, "node"),
        ({**OK, "command": "resident-plates", "file": "x" * (3 * FILE_MAX)}, 413, "file"),
    ]
    for body, status, field in cases:
        got = client.post("/api/fleet/push", json=body, headers=ORIGIN)
        assert (got.status_code, got.json()["field"]) == (status, field), (body.get("station"), got.json())
    assert client.post("/api/fleet/push", content=b"[1]", headers={**ORIGIN, "content-type": "application/json"}).json()["field"] == "body"
    assert client.post("/api/fleet/push", content=b"{}", headers={**ORIGIN, "content-type": "text/plain"}).status_code == 415
    assert client.post("/api/fleet/push", json=OK, headers={"Origin": "https://evil.example"}).status_code == 403
    assert client.get("/api/fleet/pushes").json() == {"pushes": []}, "refused requests were not signed, sent or audited as pushes"


@pytest.mark.slow
def test_an_admin_pushes_plates_to_a_tree_node_and_a_signed_trust_list_to_a_station_each_answered_and_audited(
    screen_app: tuple[Screen, TestClient], pg_url: str, tmp_path: Path
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from station.centre.mirror import AlarmMirror
    from station.link.command_auth import private_pem
    from station.store import residents
    from tests.support.command_rig import Rig

    sc, client = screen_app
    list_signer = ec.generate_private_key(ec.SECP256R1())
    signer_pem = tmp_path / "trust-signer.pem"
    signer_pem.write_bytes(
        list_signer.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    rig = Rig(tmp_path, trust_list_signer=signer_pem)  # the real command link of gate-a/st-01 on mosquitto
    try:
        (tmp_path / "centre.key").write_bytes(private_pem(rig.key))
        sc.mirror = AlarmMirror(rig.broker.url, tmp_path / "centre.key")  # its key and broker; a push opens its own connection
        login(client, ADMIN)
        plates = {"plates": ["浙A12345", "浙B54321"], "version": 5}
        body = {"command": "resident-plates", "node": "east", "reason": "weekly resident list", "file": json.dumps(plates)}
        sent = client.post("/api/fleet/push", json=body, headers=ORIGIN).json()
        assert sent["ok"] is True and sent["args"] == {"version": 5, "plates": 2}
        assert [(o["site"], o["station"], o["ok"], o["result"]) for o in sent["outcomes"]] == [
            ("gate-a", "st-01", True, {"count": 2, "version": 5, "previous_version": 0})
        ], "the node's one known station, and only what the audit keeps of its answer"
        assert residents.version(residents.resident_path(rig.data)) == 5
        doc = sign_document([certificate_entry(demo_issuer().cert_der)], 3, list_signer)
        trust = {"command": "trust-list", "station": "gate-a/st-01", "reason": "new issuer certificate", "file": json.dumps(doc)}
        first = client.post("/api/fleet/push", json=trust, headers=ORIGIN).json()
        assert first["ok"] is True and first["outcomes"][0]["result"]["version"] == 3
        again = client.post("/api/fleet/push", json=trust, headers=ORIGIN).json()
        assert again["ok"] is False and "the old list is kept" in again["outcomes"][0]["error"], "the station refuses a list not newer"
        shown = client.get("/api/fleet/pushes").json()["pushes"]
    finally:
        rig.close()
    assert [(p["actor"], p["action"], p["target"], p["detail"]["ok"]) for p in reversed(shown)] == [
        ("chief", "push.resident-plates", "gate-a/st-01", True),
        ("chief", "push.trust-list", "gate-a/st-01", True),
        ("chief", "push.trust-list", "gate-a/st-01", False),
    ]
    with psycopg.connect(pg_url) as conn:
        everything = conn.execute("SELECT string_agg(t::text, ' ') FROM centre_audit t").fetchone()
    assert "浙A12345" not in (everything[0] if everything else ""), "the audit keeps a count, never the plates"


def _events(url: str, day: dt.date, seqs: dict[tuple[str, str], list[int]]) -> None:
    """Write screenings numbered ``seqs`` per station with the centre's own batch writer (what the ingest does)."""
    from station.centre import db
    from tests.support.centre_screen import screening

    rows = [
        screening(site, station, dt.datetime.combine(day, dt.time(9, i % 60), tzinfo=UTC).timestamp(), "pass", "green", seq=n)
        for (site, station), numbers in seqs.items()
        for i, n in enumerate(numbers)
    ]
    with db.connect(url) as conn:
        db.create_partitions(conn, [day], UTC)
        db.write_batch(conn, rows, [])


@pytest.mark.slow
def test_each_station_shows_its_missing_events_and_what_the_gap_repair_is_doing(screen_app: tuple[Screen, TestClient], pg_url: str) -> None:
    from psycopg.types.json import Jsonb

    from station.centre import repair

    _sc, client = screen_app
    _events(pg_url, dt.datetime.now(UTC).date(), {("gate-a", "st-01"): [1, 2, 3, 7, 8, 12], ("gate-a", "st-02"): [1, 2, 3]})
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT to_regclass('centre_repairs')").fetchone() == (None,), "a centre without a command key"
        view = fl.fleet_view(conn)
    rows = {f"{r['site']}/{r['station']}": r for r in view["stations"]}
    st = rows["gate-a/st-01"]
    assert (st["missing_events"], st["gaps"], st["repair"]) == (6, 2, None), "numbers 4-6 and 9-11 never arrived"
    assert (rows["rogue/x-1"]["missing_events"], rows["rogue/x-1"]["gaps"], rows["rogue/x-1"]["repair"]) == (0, 0, None)
    assert view["heard_only"] == [], "st-02 (events, no state) misses nothing: not listed"
    assert {k: view["summary"][k] for k in ("missing_events", "stations_missing", "repairs_given_up", "repairs_not_kept")} == {
        "missing_events": 6,
        "stations_missing": 1,
        "repairs_given_up": 0,
        "repairs_not_kept": 0,
    }

    hostile = "<img src=x onerror=alert(1)> range refused"
    with psycopg.connect(pg_url) as conn:
        repair.ensure_repair_schema(conn)
        plan = [  # (station, first, last, state, answered minutes ago, answer)
            ("st-01", 4, 4, "waiting", None, None),
            ("st-01", 5, 5, "asked", 5, {"ok": False, "reason": "bad_args", "error": hostile, "result": None}),
            ("st-01", 6, 6, "asked", None, None),
            ("st-01", 9, 9, "not_kept", 1, {"ok": True, "reason": "None", "error": None, "result": {"seqs_found": 0, "not_found": 1}}),
            ("st-01", 10, 11, "given_up", None, None),
            ("st-01", 1, 1, "closed", 0.5, {"ok": True, "reason": "None", "error": None, "result": {"seqs_found": 1}}),
            ("st-02", 2, 2, "closed", None, None),  # a repair that closed: the station was seen, nothing open
        ]
        with conn.transaction():
            for station, first, last, state, ago_min, answer in plan:
                conn.execute(
                    "INSERT INTO centre_repairs (site, station, first_seq, last_seq, state, answered_at, answer) "
                    "VALUES ('gate-a', %s, %s, %s, %s, now() - make_interval(secs => %s), %s)",
                    (station, first, last, state, None if ago_min is None else ago_min * 60, None if answer is None else Jsonb(answer)),
                )
    login(client, VIEWER)
    body = client.get("/api/fleet").json()
    gate = {f"{r['site']}/{r['station']}": r for r in body["tree"]["children"][0]["children"][0]["children"][0]["stations"]}
    st, st2 = gate["gate-a/st-01"], gate["gate-a/st-02"]
    answered = st["repair"].pop("answered_at")
    assert (st["missing_events"], st["gaps"]) == (6, 2)
    assert st["repair"] == {
        "waiting": 1,
        "asked": 2,
        "not_kept": 1,
        "given_up": 1,
        "answer": "ok · seqs_found 1",
    }, "open rows counted by state (closed ones not); the latest answer, whichever row it came from"
    assert abs(answered - (body["generated_at"] - 30)) < 20
    assert st2["no_state"] is True and st2["repair"] == {
        "waiting": 0,
        "asked": 0,
        "not_kept": 0,
        "given_up": 0,
        "answered_at": None,
        "answer": None,
    }
    assert "missing_events" in st2 and st2["missing_events"] == 0, "a no-state station seen by the repair is still shown"
    rogue = body["tree"]["children"][-1]["stations"][0]
    assert (rogue["missing_events"], rogue["repair"]) == (0, None), "never seen by the repair loop"
    totals = {k: body["summary"][k] for k in ("missing_events", "stations_missing", "repairs_given_up", "repairs_not_kept")}
    assert totals == {"missing_events": 6, "stations_missing": 1, "repairs_given_up": 1, "repairs_not_kept": 1}
    assert body["tree"]["children"][0]["summary"]["missing_events"] == 6 and body["tree"]["children"][1]["summary"]["missing_events"] == 0
    with psycopg.connect(pg_url) as conn:
        conn.execute("UPDATE centre_repairs SET answered_at = now() - interval '1 hour' WHERE state = 'closed'")
        conn.commit()
        again = {f"{r['site']}/{r['station']}": r for r in fl.fleet_view(conn)["stations"]}
    assert again["gate-a/st-01"]["repair"]["answer"] == "ok · not_found 1, seqs_found 0", "the newest answer once the closed row's is older"
    assert fl.answer_text({"ok": False, "reason": "bad_args", "error": hostile, "result": None}) == f"refused · bad_args · {hostile}"
    assert fl.answer_text("not an object") is None
