"""The centre's tracing and report pages: parameter checks (pure), and the endpoints on a real PostgreSQL.

The traced data is tests/test_centre_tracing.py's: two real stations with a pushed district key saw
the same code holder and the same outsider plate, their outboxes ingested by the real ``Ingestor``.
The app is the real Starlette app (TestClient) with the district key handed to the screen as
``station centre run --district-key-file`` does.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from station.centre import screen, tracing
from station.centre.cli import centre
from station.centre.page import Screen, create_screen_app
from station.centre.page_reports import parse_format, parse_node, parse_period
from station.centre.page_trace import BadParam, parse_fever, parse_seen
from station.codes.trace_key import key_id_of, trace_ref
from tests.support.centre_screen import login
from tests.support.postgres import pg_server, pg_url
from tests.test_centre_tracing import HOLDER, PLATE, traced_db
from tests.test_district_key import KEY1

__all__ = ["pg_server", "pg_url", "traced_db"]

UTC = ZoneInfo("UTC")
BASE = "http://127.0.0.1:8090"
ORIGIN = {"Origin": BASE}
TRACER = ("tina", "correct horse battery")
VIEWER = ("victor", "correct horse battery")
HOSTILE = '<img src=x onerror="document.body.dataset.pwned=1">东门'
TREE = f"""[district]
name = "测试区"

[towns.east]
name = "城东街道"

[towns.east.grids.g1]
name = "网格一"

[towns.east.grids.g1.checkpoints.gate]
name = '{HOSTILE}'
stations = ["gate-a/*"]
"""


# --- parameters (pure) ---------------------------------------------------------------------------

GOOD_SEEN = {"domain": "holder", "value": " DEMO-1 ", "days": 7, "reason": "case 2026-117"}


def test_a_good_seen_request_is_taken_with_the_domain_hashed_as_the_station_does() -> None:
    q = parse_seen(GOOD_SEEN)
    assert (q.domain, q.value, q.days, q.reason, q.export) == ("holder", "DEMO-1", 7, "case 2026-117", None)
    assert parse_seen({**GOOD_SEEN, "domain": "code", "days": "30", "format": "csv"}).domain == "holder"
    assert parse_seen({**GOOD_SEEN, "domain": "code", "days": "30", "format": "csv"}).export == "csv"
    assert parse_seen({**GOOD_SEEN, "domain": "ref", "value": "AB" * 16}).value == "AB" * 16
    assert parse_seen({**GOOD_SEEN, "reason": "why\x00 <b>\u202e"}).reason == "why  <b> ", "NUL and bidi made spaces; markup kept as text"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"domain": "name"}, "domain"),
        ({"domain": ["holder"]}, "domain"),
        ({"domain": None}, "domain"),
        ({"value": ""}, "value"),
        ({"value": "   "}, "value"),
        ({"value": 42}, "value"),
        ({"value": "x" * 129}, "value"),
        ({"domain": "ref", "value": "' OR 1=1 --"}, "value"),
        ({"days": 0}, "days"),
        ({"days": 401}, "days"),
        ({"days": -3}, "days"),
        ({"days": 1.5}, "days"),
        ({"days": True}, "days"),
        ({"days": "7; DROP TABLE events"}, "days"),
        ({"days": "99999"}, "days"),
        ({"reason": ["why"]}, "reason"),
        ({"reason": "w" * 1001}, "reason"),
        ({"format": "xlsx"}, "format"),
    ],
)
def test_a_bad_seen_parameter_is_refused_naming_its_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(BadParam) as refused:
        parse_seen({**GOOD_SEEN, **change})
    assert refused.value.field == field and str(refused.value).startswith(field + ":")


@pytest.mark.parametrize("body", [None, [], "x", 3])
def test_a_seen_body_that_is_not_an_object_is_refused(body: Any) -> None:
    with pytest.raises(BadParam, match="body"):
        parse_seen(body)


GOOD_FEVER = {"station": "gate-a/st-02", "from": "2026-12-04T08:00", "to": "2026-12-04T18:00+08:00", "reason": "fever cluster"}


def test_a_good_fever_request_reads_local_times_in_the_centres_zone() -> None:
    q = parse_fever(GOOD_FEVER, ZoneInfo("Asia/Shanghai"))
    assert q.station == ("gate-a", "st-02") and q.node is None and q.fever_c == tracing.DEFAULT_FEVER_C
    assert q.start == dt.datetime(2026, 12, 4, 0, 0, tzinfo=dt.UTC) and q.end - q.start == dt.timedelta(hours=10)
    by_node = parse_fever({**GOOD_FEVER, "station": "", "node": "east/g1/gate", "fever_c": "37.8"}, UTC)
    assert (by_node.station, by_node.node, by_node.fever_c) == (None, "east/g1/gate", 37.8)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"station": "gate-a"}, "station"),
        ({"station": "gate-a/st 02"}, "station"),
        ({"station": "<b>/x"}, "station"),
        ({"station": 7}, "station"),
        ({"station": "", "node": ""}, "station"),
        ({"station": None, "node": "East/G1"}, "node"),
        ({"station": None, "node": "a/b/c/d/e"}, "node"),
        ({"station": None, "node": 3}, "node"),
        ({"from": "yesterday"}, "from"),
        ({"from": "2026-13-04T08:00"}, "from"),
        ({"from": None}, "from"),
        ({"from": "1970-01-01T00:00"}, "from"),
        ({"to": "2026-12-04T07:00"}, "to"),
        ({"to": "2028-12-04T07:00"}, "to"),
        ({"to": "2026-12-04T08:00" + "0" * 60}, "to"),
        ({"fever_c": "hot"}, "fever_c"),
        ({"fever_c": 99}, "fever_c"),
        ({"fever_c": float("nan")}, "fever_c"),
        ({"reason": {"why": 1}}, "reason"),
        ({"format": "pdf"}, "format"),
    ],
)
def test_a_bad_fever_parameter_is_refused_naming_its_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(BadParam) as refused:
        parse_fever({**GOOD_FEVER, **change}, UTC)
    assert refused.value.field == field


@pytest.mark.parametrize(
    ("query", "want"),
    [
        ({"day": "2026-12-04"}, (dt.date(2026, 12, 4), 1)),
        ({"week": "2026-W49"}, (dt.date(2026, 11, 30), 7)),
        ({"week": "2020-W53"}, (dt.date(2020, 12, 28), 7)),
    ],
)
def test_a_report_period_is_a_day_or_an_iso_week(query: dict[str, str], want: tuple[dt.date, int]) -> None:
    assert parse_period(query) == want


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({}, "day"),
        ({"day": "2026-12-04", "week": "2026-W49"}, "day"),
        ({"day": "20261204"}, "day"),
        ({"day": "2026-02-30"}, "day"),
        ({"day": "2026-12-04T00:00"}, "day"),
        ({"day": "1999-12-31"}, "day"),
        ({"day": "<script>"}, "day"),
        ({"week": "2026-49"}, "week"),
        ({"week": "2026-W54"}, "week"),
        ({"week": "2026-W49-1"}, "week"),
    ],
)
def test_a_bad_report_period_is_refused_naming_its_field(query: dict[str, str], field: str) -> None:
    with pytest.raises(BadParam) as refused:
        parse_period(query)
    assert refused.value.field == field


def test_report_node_and_format_are_checked() -> None:
    assert parse_node({"node": "/east/g1/"}) == "east/g1" and parse_node({}) == ""
    assert parse_format({}) == "json" and parse_format({"format": "csv"}) == "csv"
    for bad in ({"node": "x" * 401}, {"node": "east\x00"}):
        with pytest.raises(BadParam, match="node"):
            parse_node(bad)
    with pytest.raises(BadParam, match="format"):
        parse_format({"format": "html"})


# --- the endpoints on a real PostgreSQL ----------------------------------------------------------


def tables_holding(conn: psycopg.Connection[Any], needles: dict[str, str]) -> list[tuple[str, str, str]]:
    """Return (table, column, what) for every column of every public table whose text contains a needle."""
    columns = conn.execute(
        "SELECT table_name, column_name FROM information_schema.columns c JOIN pg_class k ON k.relname = c.table_name "
        "WHERE table_schema = 'public' AND k.relkind IN ('r', 'p')"
    ).fetchall()
    found = []
    for table, column in columns:
        for what, needle in needles.items():
            n = conn.execute(f'SELECT count(*) FROM "{table}" WHERE "{column}"::text LIKE %s', ("%" + needle + "%",)).fetchone()
            if n and n[0]:
                found.append((table, column, what))
    return found


@pytest.fixture
def traced_app(traced_db: tuple[str, str]) -> Iterator[tuple[str, Screen]]:
    url, _ = traced_db
    sc = Screen(url, district_keys=(tracing.DistrictKey(key_id_of(KEY1), KEY1),))
    sc.open()
    with psycopg.connect(url) as conn:
        screen.save_tree(conn, 0, TREE, "setup", "admin", "tree.load", "")
    yield url, sc
    sc.close()


def _client(sc: Screen, who: tuple[str, str]) -> TestClient:
    client = TestClient(create_screen_app(sc), base_url=BASE)
    assert login(client, who).headers["location"] == "/"
    return client


@pytest.mark.slow
def test_a_viewer_cannot_trace_and_the_page_and_api_say_so(traced_app: tuple[str, Screen]) -> None:
    url, sc = traced_app
    viewer = _client(sc, VIEWER)
    assert viewer.get("/trace").status_code == 403
    assert viewer.get("/api/trace/info").status_code == 403
    assert viewer.get("/api/trace/history").status_code == 403
    body = {**GOOD_SEEN, "value": HOLDER, "reason": "a viewer trying"}
    assert viewer.post("/api/trace/seen", json=body, headers=ORIGIN).status_code == 403
    assert viewer.post("/api/trace/fever", json=GOOD_FEVER, headers=ORIGIN).status_code == 403
    assert TestClient(create_screen_app(sc), base_url=BASE).post("/api/trace/seen", json=body, headers=ORIGIN).status_code == 401
    assert viewer.get("/reports").status_code == 200 and viewer.get("/api/reports", params={"day": "2026-12-04"}).status_code == 200
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM trace_audit").fetchone() == (0,), "refused at the door: nothing was asked"


@pytest.mark.slow
def test_a_tracer_traces_the_holder_seen_at_two_stations_exports_csv_and_every_query_is_audited(traced_app: tuple[str, Screen]) -> None:
    url, sc = traced_app
    tracer = _client(sc, TRACER)
    assert tracer.get("/trace").status_code == 200
    info = tracer.get("/api/trace/info").json()
    assert info["keys"] == [key_id_of(KEY1)] and info["domains"] == ["ref", "holder", "idcard", "plate"]
    assert [n["path"] for n in info["nodes"]] == ["east", "east/g1", "east/g1/gate"] and info["nodes"][2]["name"] == HOSTILE
    ref = trace_ref(KEY1, "holder", HOLDER)

    got = tracer.post("/api/trace/seen", json={"domain": "code", "value": HOLDER, "days": 2, "reason": "case 2026-117 <b>"}, headers=ORIGIN)
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["count"] == 4 and body["refs"] == [ref]
    assert {(r["site"], r["station"]) for r in body["rows"]} == {("gate-a", "st-01"), ("gate-a", "st-02")}
    assert all(r["trace_ref"] == ref and r["ts"].endswith("+00:00") for r in body["rows"])

    csv = tracer.post(
        "/api/trace/seen", json={"domain": "plate", "value": "浙a 12345", "reason": "outsider follow-up", "format": "csv"}, headers=ORIGIN
    )
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    assert csv.headers["content-disposition"].startswith('attachment; filename="trace-seen-')
    lines = csv.text.strip().splitlines()
    assert lines[0] == ",".join(tracing.COLUMNS) and len(lines) == 3 and all(",vehicle," in line for line in lines[1:])

    start = dt.datetime.now(UTC) - dt.timedelta(hours=1)
    window = {"from": start.isoformat(), "to": (start + dt.timedelta(hours=2)).isoformat(), "reason": "fever cluster at gate-a"}
    fevers = tracer.post("/api/trace/fever", json={**window, "node": "east/g1/gate"}, headers=ORIGIN).json()
    assert fevers["stations"] == ["gate-a/st-01", "gate-a/st-02"], "a node's stations, each asked (and audited) in turn"
    assert [(r["station"], r["decision"], r["trace_ref"]) for r in fevers["rows"]] == [("st-02", "deny_fever", ref)]
    one = tracer.post("/api/trace/fever", json={**window, "station": "gate-a/st-02", "format": "csv"}, headers=ORIGIN)
    assert one.status_code == 200 and len(one.text.strip().splitlines()) == 2

    refused = tracer.post("/api/trace/seen", json={"domain": "holder", "value": HOLDER, "reason": "why"}, headers=ORIGIN)
    assert refused.status_code == 400 and refused.json()["field"] == "reason" and refused.json()["audited"] is True
    for bad, field in (({"domain": "face"}, "domain"), ({"days": 999}, "days"), ({"domain": "ref", "value": HOLDER}, "value")):
        r = tracer.post("/api/trace/seen", json={"domain": "holder", "value": HOLDER, "reason": "a good reason", **bad}, headers=ORIGIN)
        assert r.status_code == 400 and r.json()["field"] == field, r.text
    assert tracer.post("/api/trace/fever", json={**window, "station": "gate-a/st-02", "to": "soon"}, headers=ORIGIN).json()["field"] == "to"
    assert tracer.post("/api/trace/fever", json={**window, "node": "east/nowhere"}, headers=ORIGIN).json()["field"] == "node"
    assert tracer.post("/api/trace/seen", content=b"{", headers={**ORIGIN, "content-type": "application/json"}).status_code == 400
    assert tracer.post("/api/trace/seen", data={"domain": "holder"}, headers=ORIGIN).status_code == 415
    cross = tracer.post("/api/trace/seen", json=GOOD_SEEN, headers={"Origin": "https://evil.example"})
    assert cross.status_code == 403

    with psycopg.connect(url) as conn:
        audit = list(reversed(tracing.audit_log(conn)))
        found = tables_holding(conn, {"holder": HOLDER, "key": KEY1.hex(), "plate": PLATE, "plate_digits": "12345", "typed": "浙a 12345"})
    assert [(a["username"], a["query"], a["ok"], a["params"].get("export")) for a in audit] == [
        ("tina", "where_seen", True, None),
        ("tina", "where_seen", True, "csv"),
        ("tina", "fever_passages", True, None),
        ("tina", "fever_passages", True, None),
        ("tina", "fever_passages", True, "csv"),
        ("tina", "where_seen", False, None),
    ]
    assert audit[0]["reason"] == "case 2026-117 <b>" and audit[0]["params"]["refs"] == [ref] and audit[0]["rows"] == 4
    assert audit[2]["params"]["station"] == "st-01" and audit[3]["params"]["station"] == "st-02"
    assert found == [], "the typed holder id, plate and the district key are nowhere in PostgreSQL"
    mine = tracer.get("/api/trace/history").json()["audit"]
    assert len(mine) == 6 and mine[-1]["reason"] == "case 2026-117 <b>"


@pytest.mark.slow
def test_without_a_district_key_only_references_can_be_traced(traced_db: tuple[str, str]) -> None:
    url, _ = traced_db
    sc = Screen(url)
    sc.open()
    try:
        tracer = _client(sc, TRACER)
        info = tracer.get("/api/trace/info").json()
        assert (info["keys"], info["domains"], info["timezone"]) == ([], ["ref"], "UTC")
        assert info["stations"] == ["gate-a/st-01", "gate-a/st-02"] and info["nodes"] == [], "no tree saved yet"
        r = tracer.post("/api/trace/seen", json={"domain": "holder", "value": HOLDER, "reason": "a good reason"}, headers=ORIGIN)
        assert r.status_code == 400 and r.json()["field"] == "domain" and "--district-key-file" in r.json()["error"]
        ref = trace_ref(KEY1, "holder", HOLDER)
        by_ref = tracer.post("/api/trace/seen", json={"domain": "ref", "value": ref.upper(), "reason": "a good reason"}, headers=ORIGIN)
        assert by_ref.json()["count"] == 4
    finally:
        sc.close()


@pytest.mark.slow
def test_the_report_api_counts_as_the_cli_report_per_tree_level_and_as_csv(traced_app: tuple[str, Screen]) -> None:
    url, sc = traced_app
    viewer = _client(sc, VIEWER)
    today = dt.datetime.now(UTC).date().isoformat()
    cli = CliRunner().invoke(centre, ["report", "--db", url, "--day", today, "--json"])
    assert cli.exit_code == 0, cli.output
    want = json.loads(cli.stdout)
    body = viewer.get("/api/reports", params={"day": today}).json()
    assert body["totals"]["screened"] == want["screened"] == 4 and body["totals"]["fevers"] == 1
    gate = body["tree"]["children"][0]["children"][0]["children"][0]
    assert gate["name"] == HOSTILE and gate["level"] == "checkpoint" and gate["totals"]["screened"] == 4
    node = viewer.get("/api/reports", params={"day": today, "node": "east/g1"}).json()
    assert node["node"] == "east/g1" and node["totals"]["screened"] == 4 and {s["station"] for s in node["stations"]} == {"st-01", "st-02"}
    week = dt.date.fromisoformat(today).isocalendar()
    assert viewer.get("/api/reports", params={"week": f"{week.year}-W{week.week:02d}"}).json()["totals"]["screened"] == 4
    csv = viewer.get("/api/reports", params={"day": today, "format": "csv"})
    assert csv.headers["content-disposition"] == f'attachment; filename="report-district-{today}.csv"'
    rows = [line.split(",") for line in csv.text.strip().splitlines()]
    assert rows[1][2:5] == ["district", "", "4"] and [r[2] for r in rows[1:5]] == ["district", "town", "grid", "checkpoint"]
    assert viewer.get("/api/reports", params={"day": today, "node": "west"}).status_code == 404
    bad = viewer.get("/api/reports", params={"day": "2026-02-30"})
    assert bad.status_code == 400 and bad.json()["field"] == "day"
    assert viewer.get("/api/reports", params={"week": "2026-W60"}).json()["field"] == "week"
    assert viewer.get("/api/reports", params={"day": today, "format": "pdf"}).json()["field"] == "format"


def test_run_reads_the_district_key_files_and_refuses_a_bad_one_before_connecting(tmp_path: Any) -> None:
    from station.centre.run import Centre, CentreOptions

    good = tmp_path / "district-v1.json"
    good.write_text(json.dumps({"version": 1, "key": KEY1.hex()}))
    opts = CentreOptions(mqtt_url="mqtt://127.0.0.1:1", db_url="postgresql://nobody@127.0.0.1:1/none", district_key_files=(str(good),))
    assert [k.key_id for k in Centre(opts).screen.district_keys] == [key_id_of(KEY1)]
    (tmp_path / "short.json").write_text(json.dumps({"key": "ab" * 8}))
    for bad in ("short.json", "missing.json"):
        argv = ["run", "--mqtt", "mqtt://127.0.0.1:1", "--db", "postgresql://nobody@127.0.0.1:1/none"]
        result = CliRunner().invoke(centre, [*argv, "--district-key-file", str(tmp_path / bad)])
        assert result.exit_code == 2 and f"--district-key-file {tmp_path / bad}" in result.output, result.output
