"""The big screen in Debian's chromium: tap a checkpoint tile → its live picture; the wait-time chart drawn with data.

Real PostgreSQL (events with the stations' stage times, through the centre's batch writer), a real
mosquitto carrying a station's snapshot — rendered by the station's own code, faces blurred by the
real detector — to the screen's :class:`LiveHub`, and the real app served by uvicorn on a thread.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import paho.mqtt.publish as mqtt_publish
import psycopg
import pytest

from station.centre import db, screen
from station.centre.live import LiveHub
from station.centre.page import Screen, create_screen_app
from station.lane.vision import build_face_detector
from station.link.command_auth import new_signing_key, private_pem
from station.link.snapshots import SnapshotSettings, render_snapshot, snapshot_payload
from station.models import default_models_dir
from tests.support.broker import Broker, free_port, mosquitto_available
from tests.support.browser import browser
from tests.support.centre_screen import TREE, UTC, VIEWER, add_users, screening
from tests.support.postgres import pg_server, pg_url
from tests.support.waiting import wait_until

__all__ = ["browser", "pg_server", "pg_url"]

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.skipif(not mosquitto_available(), reason="mosquitto not installed")]

PHOTO = Path("/work/shared/data/images/faces/ultraface-5.jpg")
rng = np.random.default_rng(11)
WAITS = {  # (site, station, hour) → the stations' latency_ms.total of each screening
    ("gate-a", "st-01", 8): [float(v) for v in rng.gamma(4.0, 300.0, 30).round(1)],
    ("gate-a", "st-02", 9): [float(v) for v in rng.gamma(4.0, 600.0, 20).round(1)],
    ("market", "m1", 9): [float(v) for v in rng.gamma(2.0, 2000.0, 15).round(1)],
}


def _snapshot() -> tuple[bytes, bytes]:
    """A station's snapshot message of a real photo, faces blurred by the real detector (the station's own code)."""
    if not PHOTO.exists():
        pytest.skip(f"test photo missing: {PHOTO}")
    image = cv2.imread(str(PHOTO))
    h, w = image.shape[:2]
    image = cv2.resize(image, (640, round(h * 640 / w)))
    detector = build_face_detector("ultraface-rfb-320", default_models_dir(), score_threshold=0.5)
    jpeg, meta = render_snapshot(image, detector, SnapshotSettings())
    assert meta["blur"] == "faces" and meta["faces_blurred"] >= 1
    return jpeg, snapshot_payload(jpeg, meta, {"station_id": "st-01", "site": "gate-a"}, dt.datetime.now(UTC).timestamp())


@pytest.fixture()
def centre(pg_url: str, tmp_path: Path) -> Iterator[tuple[str, Screen, bytes]]:
    import uvicorn

    today = dt.datetime.now(UTC).date()
    add_users(pg_url)
    rows = []
    for (site, station, hour), waits in WAITS.items():
        base = dt.datetime.combine(today, dt.time(hour), UTC).timestamp()
        for i, w in enumerate(waits):
            rows.append(dataclasses.replace(screening(site, station, base + 60 * i, "pass", "green", seq=hour * 1000 + i), wait_ms=w))
    with db.connect(pg_url) as conn:
        db.ensure_schema(conn)
        db.create_partitions(conn, [today], UTC)
        db.write_batch(conn, rows, [])
    broker = Broker(tmp_path / "broker")
    broker.start()
    jpeg, message = _snapshot()
    mqtt_publish.single("checkpoint/v1/gate-a/st-01/snapshot", message, qos=0, retain=True, hostname="127.0.0.1", port=broker.port)
    key = tmp_path / "centre-key.pem"
    key.write_bytes(private_pem(new_signing_key()))
    sc = Screen(pg_url)
    sc.open()
    sc.live = LiveHub(broker.url, key_path=key)
    sc.live.start()
    wait_until(lambda: sc.live.store.get("gate-a", "st-01") is not None, 10, "the retained snapshot taken by the hub")
    with psycopg.connect(pg_url) as conn:
        screen.save_tree(conn, 0, TREE, "setup", "admin", "tree.load", "")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_screen_app(sc), host="127.0.0.1", port=port, log_config=None, lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=10)
    try:
        yield f"http://127.0.0.1:{port}", sc, jpeg
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sc.live.stop()
        sc.close()
        broker.kill()


def _login(browser: Any, base: str) -> Any:
    page = browser.new_context(bypass_csp=True).new_page()  # Playwright's waits evaluate strings, which the CSP forbids
    page.errors = []
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    page.on("response", lambda r: page.errors.append(f"{r.status} {r.url}") if r.status >= 400 and "favicon" not in r.url else None)
    page.goto(base + "/")
    page.fill("#user", VIEWER[0])
    page.fill("#password", VIEWER[1])
    page.click("#login")
    try:
        page.wait_for_selector("body[data-loaded='1']", timeout=15000)
    except Exception:
        raise AssertionError(f"the screen did not load: {page.errors}") from None
    return page


def _seconds(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)) / 100) / 10  # live.js shows seconds to 0.1


def _wait_data(page: Any) -> list[list[Any]]:
    return page.evaluate("Chart.getChart(document.getElementById('chart-wait')).data.datasets.map(d => d.data)")  # type: ignore[no-any-return]


def test_the_wait_chart_shows_median_and_p95_per_hour_for_the_selected_node(centre: tuple[str, Screen, bytes], browser: Any) -> None:
    base, _sc, _jpeg = centre
    page = _login(browser, base)
    page.wait_for_function("typeof Chart !== 'undefined' && Chart.getChart(document.getElementById('chart-wait')) !== undefined")
    median, p95 = _wait_data(page)
    gate8 = WAITS[("gate-a", "st-01", 8)]
    all9 = WAITS[("gate-a", "st-02", 9)] + WAITS[("market", "m1", 9)]
    assert median[8] == pytest.approx(_seconds(gate8, 50), abs=0.11) and p95[8] == pytest.approx(_seconds(gate8, 95), abs=0.11)
    assert p95[9] == pytest.approx(_seconds(all9, 95), abs=0.11), "the district: both checkpoints"
    assert median[7] is None and p95[12] is None, "no screenings: a gap"
    drawn = page.evaluate(
        "(() => { const c = document.getElementById('chart-wait');"
        " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;"
        " for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n; })()"
    )
    assert drawn > 1000, "the canvas has pixels drawn on it"
    page.click("nav button[data-path='west/g2/market']")
    page.wait_for_function("document.getElementById('chart-wait').dataset.node === 'west/g2/market'")
    median, p95 = _wait_data(page)
    market = WAITS[("market", "m1", 9)]
    assert median[8] is None and median[9] == pytest.approx(_seconds(market, 50), abs=0.11)
    assert p95[9] == pytest.approx(_seconds(market, 95), abs=0.11)
    assert not page.errors, page.errors


def test_tapping_a_checkpoint_tile_shows_its_live_picture_and_watches_it(centre: tuple[str, Screen, bytes], browser: Any) -> None:
    base, sc, jpeg = centre
    page = _login(browser, base)
    page.wait_for_selector("#sparks .spark[data-path='east/g1/gate']")
    page.click("#sparks .spark[data-path='east/g1/gate']")
    page.wait_for_selector("#live-overlay:not([hidden])")
    assert "东门卡口" in page.text_content("#live-title")
    pic = "#live-pics .live-pic[data-key='gate-a/st-01']"
    loaded = f'(() => {{ const i = document.querySelector("{pic} img"); return i && i.complete && i.naturalWidth > 0; }})()'
    page.wait_for_function(loaded)
    assert page.evaluate(f'document.querySelector("{pic} img").naturalWidth') == 320, "the station's 320-px picture"
    assert "faces blurred" in page.text_content(f"{pic} figcaption")
    assert "no picture yet" in page.text_content("#live-pics .live-pic[data-key='gate-a/st-02'] figcaption")
    served = page.evaluate(
        "fetch('/api/snapshot?site=gate-a&station=st-01')"
        ".then(async r => [r.headers.get('cache-control'), (await r.arrayBuffer()).byteLength])"
    )
    assert served == ["no-store", len(jpeg)], "the station's bytes, never cached"
    wait_until(lambda: sc.live.stats()["counts"].get("watch_sent", 0) >= 1, 10, "the page's watch: a signed lease to the station")
    page.wait_for_selector(f"{pic}[data-watch]")
    page.wait_for_selector("#live-pics .live-pic[data-key='gate-a/st-02'][data-watch]")
    assert page.get_attribute(pic, "data-watch") in ("due", "station_lease_running")
    assert page.get_attribute("#live-pics .live-pic[data-key='gate-a/st-02']", "data-watch") == "no_picture", "no picture, no command"
    assert sc.live.stats()["counts"]["watch_sent"] == 1
    page.click("#live-close")
    page.wait_for_selector("#live-overlay", state="hidden")
    assert not page.errors, page.errors
