"""The tracing and report pages in Debian's chromium (Playwright) against a real PostgreSQL.

The data is tests/test_centre_tracing.py's (two real stations with a pushed district key saw the
same code holder; their outboxes ingested by the real ``Ingestor``); the app is the real one
(station/centre/page.py) served by uvicorn on a thread, with the district key handed to the screen
as ``station centre run --district-key-file`` does.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from playwright.sync_api import expect

from station.centre import screen, tracing
from station.centre.cli import centre
from station.centre.page import Screen, create_screen_app
from station.codes.trace_key import key_id_of, trace_ref
from tests.support.broker import free_port
from tests.support.postgres import pg_server, pg_url
from tests.support.waiting import wait_until
from tests.test_centre_browser import _login, browser
from tests.test_centre_trace_page import HOSTILE, TRACER, TREE, UTC, VIEWER, tables_holding
from tests.test_centre_tracing import HOLDER, PLATE, traced_db
from tests.test_district_key import KEY1

__all__ = ["browser", "pg_server", "pg_url", "traced_db"]

pytestmark = [pytest.mark.browser, pytest.mark.slow]

HOSTILE_REASON = '<img src=x onerror="document.body.dataset.pwned=1">case 2026-117'


@pytest.fixture()
def site(traced_db: tuple[str, str]) -> Iterator[tuple[str, str]]:
    import uvicorn

    url, _ = traced_db
    sc = Screen(url, district_keys=(tracing.DistrictKey(key_id_of(KEY1), KEY1),))
    sc.open()
    with psycopg.connect(url) as conn:
        screen.save_tree(conn, 0, TREE, "setup", "admin", "tree.load", "")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_screen_app(sc), host="127.0.0.1", port=port, log_config=None, lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=10)
    try:
        yield f"http://127.0.0.1:{port}", url
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        assert not thread.is_alive()
        sc.close()


def test_a_viewer_sees_no_trace_link_and_the_trace_page_and_api_refuse_it(site: tuple[str, str], browser: Any) -> None:
    base, url = site
    page = _login(browser, base, VIEWER)
    assert page.locator("#nav-trace").count() == 0 and page.locator("#nav-reports").is_visible()
    assert page.goto(base + "/trace").status == 403
    status = page.evaluate(
        "fetch('/api/trace/seen', {method: 'POST', headers: {'Content-Type': 'application/json'},"
        " body: JSON.stringify({domain: 'holder', value: 'x', reason: 'a viewer trying it'})}).then(r => r.status)"
    )
    assert status == 403
    page.goto(base + "/reports")
    page.wait_for_selector("body[data-loaded='1']")
    assert page.locator("#nav-trace").count() == 0
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM trace_audit").fetchone() == (0,)


def test_a_tracer_traces_the_holder_downloads_csv_and_the_reason_is_audited_and_shown_as_text(
    site: tuple[str, str], browser: Any, tmp_path: Path
) -> None:
    base, url = site
    page = _login(browser, base, TRACER)
    page.click("#nav-trace")
    page.wait_for_selector("body[data-loaded='1']")
    assert key_id_of(KEY1) in page.text_content("#keys")
    page.select_option("#seen-domain", "holder")
    page.fill("#seen-value", HOLDER)
    page.fill("#seen-days", "2")
    page.fill("#seen-reason", HOSTILE_REASON)
    page.click("#seen-go")
    page.wait_for_selector("body[data-rows='4']")
    ref = trace_ref(KEY1, "holder", HOLDER)
    rows = page.locator("#results tbody tr")
    assert rows.count() == 4
    assert set(page.locator("#results td.c-station").all_text_contents()) == {"st-01", "st-02"}
    assert set(page.locator("#results td.c-trace_ref").all_text_contents()) == {ref}
    expect(page.locator("#result-status")).to_contain_text("audited")

    with page.expect_download() as download:
        page.click("#seen-csv")
    saved = tmp_path / "trace.csv"
    download.value.save_as(saved)
    lines = saved.read_text(encoding="utf-8").strip().splitlines()
    assert download.value.suggested_filename.startswith("trace-seen-") and lines[0] == ",".join(tracing.COLUMNS) and len(lines) == 5

    expect(page.locator("#history tbody tr")).to_have_count(2)
    reasons = page.locator("#history td.c-reason").all_text_contents()
    assert reasons == [HOSTILE_REASON, HOSTILE_REASON], "the reason shown as typed, markup as text"
    assert page.locator("#history img, #results img").count() == 0 and page.evaluate("document.body.dataset.pwned") is None

    now = dt.datetime.now(UTC)  # the centre's zone (UTC here): the form's local times are read in it
    page.select_option("#fever-node", "east/g1/gate")
    page.fill("#fever-from", (now - dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"))
    page.fill("#fever-to", (now + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"))
    page.fill("#fever-reason", "fever cluster at the east gate")
    page.click("#fever-go")
    page.wait_for_selector("body[data-rows='1']")
    assert page.locator("#results td.c-decision").all_text_contents() == ["deny_fever"]
    shown = page.locator("#results td.c-ts").text_content() or ""
    assert shown.startswith(now.strftime("%Y-%m-%d ")) and len(shown) == 19, f"local time to the second: {shown!r}"
    assert "(UTC)" in (page.locator("#results th").first.text_content() or "")

    page.locator("#results button.retrace").first.click()  # a row's reference into the query, then a refused trace
    assert page.input_value("#seen-value") == ref and page.input_value("#seen-domain") == "ref"
    page.fill("#seen-reason", "short")
    page.click("#seen-go")
    expect(page.locator("#result-status.error")).to_contain_text("reason is required")
    expect(page.locator("#result-status")).to_contain_text("audited")

    with psycopg.connect(url) as conn:
        audit = list(reversed(tracing.audit_log(conn)))
        found = tables_holding(conn, {"holder": HOLDER, "key": KEY1.hex(), "plate": PLATE})
    assert [(a["query"], a["ok"], a["params"].get("export"), a["reason"]) for a in audit] == [
        ("where_seen", True, None, HOSTILE_REASON),
        ("where_seen", True, "csv", HOSTILE_REASON),
        ("fever_passages", True, None, "fever cluster at the east gate"),
        ("fever_passages", True, None, "fever cluster at the east gate"),
        ("where_seen", False, None, "short"),
    ]
    assert {a["username"] for a in audit} == {"tina"} and [a["params"]["station"] for a in audit[2:4]] == ["st-01", "st-02"]
    assert audit[0]["params"]["refs"] == [ref] and audit[0]["rows"] == 4
    assert found == [], "the holder id typed into the page is nowhere in PostgreSQL"


def test_the_printable_report_shows_the_cli_reports_screened_and_a_hostile_node_name_as_text(site: tuple[str, str], browser: Any) -> None:
    base, url = site
    today = dt.datetime.now(UTC).date().isoformat()
    cli = CliRunner().invoke(centre, ["report", "--db", url, "--day", today, "--json"])
    assert cli.exit_code == 0, cli.output
    screened = json.loads(cli.stdout)["screened"]
    assert screened == 4

    page = _login(browser, base, VIEWER)
    page.click("#nav-reports")
    page.wait_for_selector("body[data-loaded='1']")
    assert page.url == base + "/reports?day=" + page.input_value("#day"), "today in the browser's zone, shown at once"
    page.goto(f"{base}/reports?day={today}")  # the centre's day (the browser's zone may differ)
    page.wait_for_selector("body[data-loaded='1']")
    district = page.locator("table.district tbody tr").first
    assert district.locator("td.c-screened").text_content() == str(screened)
    assert district.locator("td.c-fevers").text_content() == "1"
    captions = page.locator("#levels caption").all_text_contents()
    assert [c.split(" · ")[1] for c in captions] == ["District", "Towns", "Grids", "Checkpoints", "Stations"]
    checkpoint = page.locator("table.checkpoint tbody tr").first
    assert checkpoint.locator("th .n").text_content() == HOSTILE and checkpoint.locator("td.c-screened").text_content() == "4"
    assert page.locator("#report img").count() == 0 and page.evaluate("document.body.dataset.pwned") is None
    assert page.get_attribute("#csv", "href") == f"/api/reports?day={today}&format=csv"

    page.select_option("#node", "east/g1")
    expect(page.locator("table.grid tbody tr").first).to_have_attribute("data-path", "east/g1")
    assert page.locator("table.district").count() == 0 and page.locator("table.town").count() == 0
    assert "node=east%2Fg1" in page.url

    page.emulate_media(media="print")
    assert not page.locator("header").is_visible() and not page.locator("#report-form").is_visible()
    assert page.locator("table.checkpoint").is_visible()
    pdf = page.pdf(format="A4", prefer_css_page_size=True)
    assert pdf[:5] == b"%PDF-" and len(pdf) > 5000, "it prints"
