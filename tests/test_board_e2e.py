"""The command-centre board end to end: three demo stations (real pipelines, real SQLite, real MQTT)
publishing to a real mosquitto, `station board` as its own process, and the page in headless
Chromium (Debian's package through Playwright's executable_path).

The board shows the three stations, each with its live (face-blurred) picture; its per-station
counts equal the stations' own SQLite; a SIGKILLed station turns offline through its MQTT Will and
moves to the top of the page; a restarted board (clean MQTT session: nothing is re-delivered) still
has the day's counts from its history.

docs/board.png is made by docs/board_screenshot.py (walking pace, faces in view), not by this test.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.board_auth import VIEWER, make_users
from tests.support.broker import Broker, free_port, mosquitto_available
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Station id → people walking up (CAST order: pass, fever, red code): different counts per station.
STATIONS = {"gate-north": 1, "gate-east": 2, "gate-south": 3}
VICTIM = "gate-east"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not mosquitto_available(), reason="mosquitto not installed"),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium not installed (CI installs it)"),
]


class Proc:
    """A child process whose stdout lines are collected by a thread."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self.lines: list[str] = []
        self.p = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=open(log, "wb"), text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            if line.strip():
                self.lines.append(line)

    def stop(self, sig: int = signal.SIGINT, timeout: float = 20) -> None:
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), CHECKPOINT_CONFIG=str(tmp_path / "absent.toml"), **extra)


def start_board(tmp_path: Path, url: str, port: int, name: str) -> Proc:
    if not (tmp_path / "board" / "board-users.json").exists():
        make_users(tmp_path / "board" / "board-users.json")
    return Proc(
        [
            sys.executable,
            "-m",
            "station.cli.station_main",
            "board",
            "--mqtt",
            url,
            "--listen",
            f"127.0.0.1:{port}",
            "--data-dir",
            str(tmp_path / "board"),
            "--session-expiry",
            "0",
            "--client-id",
            name,
        ],
        _env(tmp_path),
        tmp_path / f"{name}.log",
    )


_clients: dict[int, httpx.Client] = {}


def client(port: int) -> httpx.Client:
    """A logged-in HTTP client for the board on ``port`` (the session survives a board restart: same secret)."""
    c = _clients.get(port)
    if c is None:
        c = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5)
        r = c.post("/login", data={"user": VIEWER[0], "password": VIEWER[1]})
        assert r.status_code == 303 and r.headers["location"] == "/", r.text
        _clients[port] = c
    return c


def api(port: int) -> dict[str, Any]:
    r = client(port).get("/api/stations")
    r.raise_for_status()
    return r.json()  # type: ignore[no-any-return]


def api_up(port: int) -> bool:
    try:
        api(port)
        return True
    except httpx.HTTPError:
        return False


def rows(port: int) -> dict[str, dict[str, Any]]:
    return {r["station"]: r for r in api(port)["stations"]}


def station_db(tmp_path: Path, name: str) -> dict[str, Any]:
    """What a station's own SQLite says: events recorded, alarms, the last event, outbox backlog."""
    db = sqlite3.connect(tmp_path / name / "events.sqlite3", timeout=10)
    try:
        events, alarms = db.execute("SELECT count(*), coalesce(sum(alarm), 0) FROM events").fetchone()
        last = db.execute("SELECT event_id FROM events ORDER BY ts DESC LIMIT 1").fetchone()
        pending = db.execute("SELECT count(*) FROM outbox WHERE acked_at IS NULL AND dropped_at IS NULL").fetchone()[0]
    finally:
        db.close()
    return {"events": int(events), "alarms": int(alarms), "last": last[0] if last else None, "pending": int(pending)}


def test_board_with_three_stations(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    broker = Broker(tmp_path / "broker")
    broker.start()
    port = free_port()
    board = start_board(tmp_path, broker.url, port, "board-1")
    stations: dict[str, Proc] = {}
    try:
        wait_until(lambda: api_up(port), 20, f"the board on :{port} ({board.log})")
        for name, people in STATIONS.items():
            stations[name] = Proc(
                [
                    sys.executable,
                    "-m",
                    "station.cli.station_main",
                    "demo",
                    "--fast",
                    "--json",
                    "--keep-running",
                    "--people",
                    str(people),
                    "--data-dir",
                    str(tmp_path / name),
                    "--mqtt",
                    broker.url,
                ],
                _env(tmp_path, CHECKPOINT_STATION__ID=name, CHECKPOINT_STATION__SITE="district-7"),
                tmp_path / f"{name}.log",
            )

        def all_done() -> bool:
            for name, proc in stations.items():
                assert proc.p.poll() is None, f"{name} exited: {proc.log.read_text()[-2000:]}"
                if "all people done" not in proc.log.read_text() or station_db(tmp_path, name)["pending"] != 0:
                    return False
            return True

        wait_until(all_done, 75, "every station decided for its people and emptied its outbox")
        # The stations' own records are the truth (on 2 busy cores a hurried person may also get a
        # `retry` first, so a station can hold more events than people).
        own = {name: station_db(tmp_path, name) for name in STATIONS}
        total = sum(o["events"] for o in own.values())
        assert all(own[n]["events"] >= people for n, people in STATIONS.items()), own
        wait_until(
            lambda: (
                len(rows(port)) == 3
                and all(r["state"] == "online" and r["snapshot"] for r in rows(port).values())
                and sum(r["today"]["screened"] for r in rows(port).values()) >= total
                # state/screening is re-published within its 2 s poll of the last decision
                and all(r["station_count_today"] == own[n]["events"] for n, r in rows(port).items())
            ),
            20,
            "three online stations with pictures and counts on the board",
        )
        board_rows = rows(port)
        for name in STATIONS:
            assert board_rows[name]["today"]["screened"] == own[name]["events"], (name, board_rows[name]["today"], own[name])
            assert board_rows[name]["today"]["alarms"] == own[name]["alarms"], (name, board_rows[name]["today"], own[name])
            assert board_rows[name]["last"]["event_id"] == own[name]["last"]
            assert board_rows[name]["station_count_today"] == own[name]["events"], "the station's own figure (state/screening)"
            assert board_rows[name]["snapshot"]["blur"] == "faces"
            assert board_rows[name]["site"] == "district-7"
        # The second person in the cast has a fever: gate-east and gate-south raised an alarm, gate-north none.
        assert own["gate-north"]["alarms"] == 0 and own["gate-east"]["alarms"] >= 1 and own["gate-south"]["alarms"] >= 1
        pic = client(port).get(board_rows["gate-north"]["snapshot"]["url"])
        assert pic.headers["Content-Type"] == "image/jpeg" and pic.content[:2] == b"\xff\xd8"

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            # bypass_csp: Playwright's waits evaluate strings, which the board's CSP forbids.
            page = browser.new_page(viewport={"width": 1280, "height": 720}, bypass_csp=True)
            page.goto(f"http://127.0.0.1:{port}/")
            page.fill("#user", VIEWER[0])
            page.fill("#password", VIEWER[1])
            page.click("#login")
            page.wait_for_function("document.querySelectorAll('.tile').length === 3")
            page.wait_for_function("[...document.querySelectorAll('.tile img')].every(i => i.complete && i.naturalWidth > 0)")
            tiles = page.locator(".tile")
            assert sorted(tiles.nth(i).get_attribute("data-key") for i in range(3)) == sorted(f"district-7/{n}" for n in STATIONS)
            assert page.locator("#t-screened").inner_text() == str(total)
            south = page.locator('.tile[data-key="district-7/gate-south"]')
            assert south.locator(".count").inner_text() == str(own["gate-south"]["events"])
            south.click()  # a tap opens that checkpoint full-screen
            page.wait_for_selector("#overlay.open")
            assert "gate-south" in page.locator("#ov-side").inner_text()
            assert page.locator("#ov-img").evaluate("i => i.naturalWidth") > 0
            page.keyboard.press("Escape")
            page.click("#lang")
            assert page.locator("h1").inner_text() == "Command centre"

            stations[VICTIM].stop(signal.SIGKILL)  # no clean disconnect: the broker sends its Will
            wait_until(lambda: rows(port)[VICTIM]["state"] == "offline", 20, "the Will marking the station offline")
            # The page follows over SSE, without a reload: the offline station moves to the top.
            page.wait_for_function("document.querySelector('.tile').dataset.state === 'offline'")
            assert page.locator(".tile").first.get_attribute("data-key") == f"district-7/{VICTIM}"
            assert page.locator(".tile.l0").count() == 1
            assert page.locator("#t-offline").inner_text() == "1"
            browser.close()
        assert [r["station"] for r in api(port)["stations"]][0] == VICTIM

        board.stop(signal.SIGTERM)
        assert board.p.returncode == 0, board.log.read_text()[-2000:]
        board = start_board(tmp_path, broker.url, port, "board-2")  # clean session: nothing re-delivered
        wait_until(
            lambda: (
                api_up(port)
                and len(rows(port)) == 3
                and rows(port)[VICTIM]["state"] == "offline"
                and rows(port)["gate-north"]["state"] == "online"
            ),
            20,
            "the restarted board",
        )
        after = rows(port)
        assert {n: r["today"]["screened"] for n, r in after.items()} == {n: o["events"] for n, o in own.items()}, (
            "the day's counts survive a board restart"
        )
        assert {n: r["today"]["alarms"] for n, r in after.items()} == {n: o["alarms"] for n, o in own.items()}
    finally:
        for proc in stations.values():
            proc.stop()
        board.stop(signal.SIGTERM)
        broker.kill()
