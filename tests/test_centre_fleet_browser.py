"""The fleet page in Debian's chromium against a real station daemon, a real mosquitto and a real PostgreSQL.

The station is ``station run`` (the thermal emulator on a pty, a video file as camera, mock GPIO) trusting
the centre's command key; the centre is the real replica (station/centre/run.py: ingest, the fleet
subscriber, the screen with ``--command-key``) served by uvicorn on a thread. An admin pushes a fever
threshold from the page, the daemon verifies the signature and writes it into its own config file, the
page shows the station's answer and the push is in ``centre_audit``; a viewer sees the same fleet table
with no push controls and gets 403 from the push API; a station with a gap shows its missing count and its given-up
repair; a station string (a version, a repair answer) carrying markup shows as text.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from playwright.sync_api import expect

from sim.gy_mcu90640_emulator import GyMcu90640Emulator
from station.centre import screen
from station.centre.run import Centre, CentreOptions
from station.link.command_auth import new_signing_key, private_pem, public_pem
from tests.support.broker import Broker, free_port, mosquitto_available
from tests.support.browser import browser
from tests.support.centre_screen import ADMIN, VIEWER, add_users
from tests.support.daemon import write_config
from tests.support.postgres import pg_server, pg_url
from tests.support.sync_rig import Collector
from tests.support.waiting import wait_until

__all__ = ["browser", "pg_server", "pg_url"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not mosquitto_available(), reason="mosquitto not installed"),
]

ROOT = Path(__file__).resolve().parents[1]
BASE = "checkpoint/v1/test-site/gate-3"
HOSTILE_VERSION = "<img src=x onerror=alert(1)>"
HOSTILE_NAME = '<img src=x onerror="document.body.dataset.pwned=1">东门'
TREE = f"""[district]
name = "测试区"

[towns.east]
name = "城东街道"

[towns.east.grids.g1]
name = "网格一"

[towns.east.grids.g1.checkpoints.gate]
name = {json.dumps(HOSTILE_NAME, ensure_ascii=False)}
stations = ["test-site/gate-3"]
"""


@pytest.fixture()
def rig(tmp_path: Path, pg_url: str, emulator: GyMcu90640Emulator, video: Path) -> Iterator[dict[str, Any]]:
    """A running daemon trusting the centre's key, a hostile second station, and the centre replica on a port."""
    import uvicorn

    broker = Broker(tmp_path / "broker")
    broker.start()
    key = new_signing_key()
    key_file = tmp_path / "centre-command.key"
    key_file.write_bytes(private_pem(key))
    trusted = tmp_path / "centre-keys.pem"
    trusted.write_text(public_pem(key.public_key()))
    cfg = write_config(tmp_path, emulator.port, video)
    cfg.write_text(cfg.read_text() + f'\n[mqtt]\nurl = "{broker.url}"\n\n[centre]\ncommand_keys_file = "{trusted}"\n')
    watcher = Collector(broker.port, "fleet-test-watcher", f"{BASE}/#", persistent=False)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "station.cli.station_main", "run", "--config", str(cfg)],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    evil = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="evil-st-9")
    evil.connect("127.0.0.1", broker.port)
    evil.loop_start()
    evil.publish(
        "checkpoint/v1/evil/st-9/status", json.dumps({"state": "online", "session": 1, "version": HOSTILE_VERSION}), qos=1, retain=True
    ).wait_for_publish(5)
    add_users(pg_url)
    port = free_port()
    centre = Centre(CentreOptions(mqtt_url=broker.url, db_url=pg_url, port=port, client_id="fleet-test-centre", command_key=str(key_file)))
    centre.start()
    with psycopg.connect(pg_url) as conn:
        screen.save_tree(conn, 0, TREE, "setup", "admin", "tree.load", "")
    server = uvicorn.Server(uvicorn.Config(centre.app, host="127.0.0.1", port=port, log_config=None, lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=10)
    try:
        yield {"url": f"http://127.0.0.1:{port}", "cfg": cfg, "watcher": watcher, "daemon": daemon}
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        centre.stop()
        if daemon.poll() is None:
            daemon.terminate()
            try:
                daemon.wait(20)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        evil.loop_stop()
        evil.disconnect()
        watcher.close()
        broker.kill()
        assert not thread.is_alive()


def _open_fleet(browser: Any, base: str, who: tuple[str, str]) -> Any:
    page = browser.new_context().new_page()
    page.errors = []
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    page.on("dialog", lambda d: (page.errors.append(f"dialog {d.message}"), d.dismiss()))
    page.goto(base + "/fleet")
    assert page.url.endswith("/login")
    page.fill("#user", who[0])
    page.fill("#password", who[1])
    page.click("#login")
    page.wait_for_url(base + "/")
    page.goto(base + "/fleet")
    page.wait_for_selector("body[data-loaded='1']", timeout=15000)
    return page


def _gap_given_up(url: str) -> None:
    """Give evil/st-9 records 1, 2 and 5 and a given-up repair of 3-4 whose answer carries markup, in one transaction."""
    import datetime as dt
    import time

    from psycopg.types.json import Jsonb

    from station.centre import db, repair
    from tests.support.centre_screen import UTC, screening

    now = time.time()
    rows = [screening("evil", "st-9", now - 60 + n, "pass", "green", seq=n) for n in (1, 2, 5)]
    answer = {"ok": False, "reason": "refused", "error": HOSTILE_VERSION, "result": None}
    with db.connect(url) as conn:
        repair.ensure_repair_schema(conn)
        db.create_partitions(conn, [dt.datetime.fromtimestamp(now - 60, UTC).date(), dt.datetime.fromtimestamp(now, UTC).date()], UTC)
        with conn.transaction():  # the running repair loop never sees the gap without its row (it would open a waiting one)
            conn.execute(
                "INSERT INTO centre_repairs (site, station, first_seq, last_seq, state, tries, answered_at, answer) "
                "VALUES ('evil', 'st-9', 3, 4, 'given_up', 5, now(), %s)",
                (Jsonb(answer),),
            )
            db.write_batch(conn, rows, [])


def _latest(watcher: Collector, topic: str) -> dict[str, Any]:
    got = [json.loads(p) for t, p, _ in watcher.raw() if t == topic]
    return got[-1] if got else {}


def test_an_admin_pushes_a_threshold_the_daemon_applies_it_and_a_viewer_sees_no_push_controls(
    rig: dict[str, Any], browser: Any, pg_url: str
) -> None:
    watcher, base = rig["watcher"], rig["url"]
    wait_until(
        lambda: bool(_latest(watcher, f"{BASE}/state/fleet")) and bool(_latest(watcher, f"{BASE}/state/outbox")), 90, "daemon states"
    )
    fleet, outbox = _latest(watcher, f"{BASE}/state/fleet"), _latest(watcher, f"{BASE}/state/outbox")
    status = _latest(watcher, f"{BASE}/status")

    _gap_given_up(pg_url)
    page = _open_fleet(browser, base, ADMIN)
    row = page.locator("#fleet tr.station[data-station='test-site/gate-3']")
    expect(row.locator("td[data-key='config']")).to_have_text(fleet["config_hash"], timeout=30000)
    expect(row.locator("td[data-key='version']")).to_have_text(status["version"])
    expect(row.locator("td[data-key='state']")).to_contain_text("online")
    assert row.locator("td[data-key='outbox']").text_content().split(" ")[0] == str(outbox["pending"])
    assert row.locator("td[data-key='trust']").text_content() == f"v{fleet['trust_list_version']}"
    group = page.locator("#fleet tr.group[data-path='east/g1/gate'] .name")
    assert group.text_content() == HOSTILE_NAME, "the node name with markup is shown as text"
    evil = page.locator("#fleet tr.station[data-station='evil/st-9']")
    expect(evil.locator("td[data-key='version']")).to_have_text(HOSTILE_VERSION)
    assert page.locator("#fleet tr.group[data-path='unassigned']").count() == 1, "a station the tree does not place is under unassigned"
    missing = evil.locator("td[data-key='missing']")
    expect(missing).to_contain_text("已放弃 · given up")
    assert missing.text_content().startswith("2 · 1 gap") and "bad" in (missing.get_attribute("class") or "")
    assert missing.get_attribute("title").endswith("refused · refused · " + HOSTILE_VERSION), "the station's answer as plain text"
    expect(page.locator("#summary [data-key='repairs_given_up'] b")).to_have_text("1")

    row.locator("button.pick").click()
    assert page.input_value("#push-target") == "station:test-site/gate-3"
    page.select_option("#push-command", "set-threshold")
    page.fill("#push-threshold", "37.6")
    page.fill("#push-reason", "summer re-calibration of the east gate")
    page.click("#push-send")
    answer = page.locator("#push-results tr[data-station='test-site/gate-3']")
    expect(answer).to_have_attribute("data-ok", "1", timeout=30000)
    assert '"new":37.6' in answer.text_content() and '"persisted":true' in answer.text_content()
    assert "fever_threshold_c = 37.6" in rig["cfg"].read_text(), "the daemon wrote the pushed threshold into its own config"
    expect(page.locator("#push-audit tr[data-action='push.set-threshold']")).to_have_count(1)

    page.fill("#push-threshold", "41")  # the input's min/max are advice (the form is novalidate): the server refuses, naming the field
    page.click("#push-send")
    expect(page.locator("#push-error")).to_contain_text("fever_threshold_c:")
    page.select_option("#push-command", "resident-plates")
    page.set_input_files(
        "#push-file", files=[{"name": "plates.json", "mimeType": "application/json", "buffer": b'{"plates": ["<b>1</b>"]}'}]
    )
    page.click("#push-send")
    expect(page.locator("#push-error")).to_contain_text("file.plates:")
    assert page.locator("#push-results b, #push-error b").count() == 0

    with psycopg.connect(pg_url) as conn:
        audit = conn.execute("SELECT actor, role, action, target, reason, detail FROM centre_audit WHERE action LIKE 'push%'").fetchall()
    assert len(audit) == 1, "refused requests were never signed or sent"
    actor, role, action, target, reason, detail = audit[0]
    assert (actor, role, action, target, reason) == (
        "chief",
        "admin",
        "push.set-threshold",
        "test-site/gate-3",
        "summer re-calibration of the east gate",
    )
    assert detail["ok"] is True and detail["args"] == {"fever_threshold_c": 37.6} and detail["result"]["new"] == 37.6
    results = [json.loads(p) for t, p, _ in watcher.raw() if t == f"{BASE}/cmd/set-threshold/result"]
    assert [r["id"] for r in results] == [detail["id"]] and results[0]["ok"] is True

    viewer = _open_fleet(browser, base, VIEWER)
    vrow = viewer.locator("#fleet tr.station[data-station='test-site/gate-3']")
    expect(vrow.locator("td[data-key='config']")).to_have_text(fleet["config_hash"])
    assert viewer.locator("#push").count() == 0 and viewer.locator("button.pick").count() == 0, "no push controls for a viewer"
    assert (
        viewer.evaluate(
            "fetch('/api/fleet/push', {method: 'POST', headers: {'Content-Type': 'application/json'}, body: '{}'}).then(r => r.status)"
        )
        == 403
    )
    for p in (page, viewer):
        assert p.locator("#fleet img").count() == 0 and p.evaluate("document.body.dataset.pwned") is None
        assert p.errors == [], p.errors
