"""The centre's big screen in Debian's chromium (Playwright) against a real PostgreSQL: login per role, the tree,
charts drawn with data, alarm acknowledge → close, and names with markup shown as text.

The app is the real one (station/centre/page.py) served by uvicorn on a thread; events are seeded through
the centre's batch writer (tests/support/centre_screen.py).
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from playwright.sync_api import expect

from station.centre import screen
from station.centre.page import Screen, create_screen_app
from tests.support.broker import free_port
from tests.support.browser import browser
from tests.support.centre_screen import ADMIN, TRACER, TREE, UTC, VIEWER, add_users, seed
from tests.support.postgres import pg_server, pg_url
from tests.support.waiting import wait_until

__all__ = ["browser", "pg_server", "pg_url"]

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture()
def centre(pg_url: str) -> Iterator[str]:
    import uvicorn

    today = dt.datetime.now(UTC).date()
    add_users(pg_url)
    seed(
        pg_url,
        today,
        [
            ("gate-a", "st-01", 8, "pass", "green", 30),
            ("gate-a", "st-01", 9, "deny_fever", "green", 2),
            ("gate-a", "st-02", 9, "pass", "yellow", 12),
            ("market", "m1", 10, "pass", "green", 6),
            ("market", "m1", 10, "deny_code", "red", 1),
            ("rogue", "x-1", 11, "pass", "green", 3),
        ],
    )
    seed(pg_url, today - dt.timedelta(days=7), [("gate-a", "st-01", 8, "pass", "green", 18)])
    sc = Screen(pg_url)
    sc.open()
    with psycopg.connect(pg_url) as conn:
        screen.save_tree(conn, 0, TREE, "setup", "admin", "tree.load", "")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_screen_app(sc), host="127.0.0.1", port=port, log_config=None, lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=10)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        assert not thread.is_alive()
        sc.close()


def _login(browser: Any, base: str, who: tuple[str, str]) -> Any:
    page = browser.new_context().new_page()
    page.errors = []
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    page.on("console", lambda msg: page.errors.append(msg.text) if msg.type == "error" else None)
    page.on("response", lambda r: page.errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.goto(base + "/")
    assert page.url.endswith("/login")
    page.fill("#user", who[0])
    page.fill("#password", who[1])
    page.click("#login")
    try:
        page.wait_for_selector("body[data-loaded='1']", timeout=15000)
    except Exception:
        raise AssertionError(f"the screen did not load: {page.errors}") from None
    return page


def _chart_data(page: Any, canvas_id: str) -> list[list[Any]]:
    return page.evaluate(f"Chart.getChart(document.getElementById('{canvas_id}')).data.datasets.map(d => d.data)")


def test_viewer_sees_the_tree_totals_and_charts_drawn_with_data_but_no_controls(centre: str, browser: Any) -> None:
    page = _login(browser, centre, VIEWER)
    assert page.text_content("#who") == "wall (viewer)"
    names = page.locator("nav button .name").all_text_contents()
    assert names[:1] == ["测试区"] and {"城东街道", "网格一", "东门卡口", "西城街道", "菜场卡口", "未分配 · unassigned"} <= set(names)
    assert page.text_content("#totals [data-key='screened'] b") == "54"
    assert page.text_content("#totals [data-key='fevers'] b") == "2"
    hourly = _chart_data(page, "chart-hourly")
    assert hourly[0][8:12] == [30, 14, 7, 3] and hourly[1][8] == 18, "today against the same weekday last week"
    assert _chart_data(page, "chart-fever")[0][9] == round(100 * 2 / 14, 2)
    assert _chart_data(page, "chart-colours")[0] == [41, 12, 1, 0]
    drawn = page.evaluate(
        "(() => { const c = document.getElementById('chart-hourly');"
        " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;"
        " for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n; })()"
    )
    assert drawn > 1000, "the canvas has pixels drawn on it"
    sparks = page.locator("#sparks .spark")
    assert sparks.count() == 3 and page.locator("#sparks canvas").count() == 3
    spark_sums = page.evaluate(
        "[...document.querySelectorAll('#sparks .spark')].map(s => [s.dataset.path, s.querySelector('.n').textContent])"
    )
    assert spark_sums == [["east/g1/gate", "44"], ["west/g2/market", "7"], ["unassigned/rogue/x-1", "3"]]

    page.click("nav button[data-path='east/g1/gate']")
    expect(page.locator("#totals [data-key='screened'] b")).to_have_text("44")
    assert _chart_data(page, "chart-hourly")[0][10] in (0, None) and page.locator("#sparks .spark").count() == 1

    assert page.locator("#admin").count() == 0, "no tree editor for a viewer"
    page.wait_for_selector("#alarms .alarm")
    assert page.locator("#alarms .alarm").count() == 3 and page.locator("#alarms button").count() == 0, "a viewer cannot act on alarms"


def test_tracer_acknowledges_and_closes_an_alarm_with_a_note(centre: str, browser: Any) -> None:
    page = _login(browser, centre, TRACER)
    assert page.locator("#admin").count() == 0
    page.wait_for_selector("#alarms .alarm[data-state='open'] button.ack")
    first = page.locator("#alarms .alarm[data-state='open']").first
    key = first.get_attribute("data-key")
    first.locator("button.ack").click()
    card = page.locator(f"#alarms .alarm[data-key='{key}']")
    page.wait_for_selector(f"#alarms .alarm[data-key='{key}'][data-state='acknowledged']")
    assert "acknowledged by duty" in card.text_content()
    card.locator("textarea").fill("复测 36.7 °C，已放行 <b>ok</b>")
    card.locator("button.close").click()
    page.wait_for_selector(f"#alarms .alarm[data-key='{key}'][data-state='closed']")
    text = card.text_content()
    assert "closed by duty" in text and "复测 36.7 °C，已放行 <b>ok</b>" in text, "the note is shown as typed, markup as text"
    assert card.locator("b").count() == 0


def test_admin_edits_the_tree_from_the_page_and_a_hostile_name_shows_as_text(centre: str, browser: Any) -> None:
    page = _login(browser, centre, ADMIN)
    page.wait_for_selector("#admin:not([hidden])")
    page.select_option("#edit-op", "rename")
    page.fill("#edit-path", "west")
    page.fill("#edit-name", '<img src=x onerror="document.body.dataset.pwned=1">西城')
    page.click("#edit-save")
    expect(page.locator("#edit-result")).to_contain_text("v2")
    page.select_option("#edit-op", "assign")
    page.fill("#edit-path", "")
    page.fill("#edit-name", "")
    page.fill("#edit-station", "rogue/x-1")
    page.fill("#edit-checkpoint", "west/g2/market")
    page.click("#edit-save")
    expect(page.locator("#edit-result")).to_contain_text("v3")
    expect(page.locator("nav button[data-path='unassigned']")).to_have_count(0)
    west = page.locator("nav button[data-path='west'] .name")
    assert west.text_content() == '<img src=x onerror="document.body.dataset.pwned=1">西城'
    assert page.locator("nav img").count() == 0 and page.evaluate("document.body.dataset.pwned") is None
    page.select_option("#edit-op", "move")
    page.fill("#edit-station", "")
    page.fill("#edit-checkpoint", "")
    page.fill("#edit-path", "east/g1")
    page.fill("#edit-parent", "west/g2")
    page.click("#edit-save")
    expect(page.locator("#edit-result.error")).to_have_count(1)
    assert "its parent must be a town" in page.text_content("#edit-result")
