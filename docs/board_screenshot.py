"""Regenerate docs/board.png: the command-centre board watching three demo stations, one of them killed.

The stations run at walking pace; the board is shot in headless Chromium while people (faces
blurred by the stations) stand at the two that are alive.

    .venv/bin/python docs/board_screenshot.py [--out docs/board.png]

Needs mosquitto and Debian's chromium. Takes about a minute. Not a test: tests/test_board_e2e.py
checks the behaviour; this only takes the picture.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from station.board.auth import UsersFile  # noqa: E402
from tests.support.broker import Broker, free_port  # noqa: E402

USER, PASSWORD = "screenshot", "screenshot-password"
_opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())  # keeps the session cookie
_logged_in: set[int] = set()


def api(port: int) -> dict:  # type: ignore[type-arg]
    """The board's JSON, logged in (the board has no anonymous access)."""
    base = f"http://127.0.0.1:{port}"
    if port not in _logged_in:
        form = urllib.parse.urlencode({"user": USER, "password": PASSWORD}).encode()
        with _opener.open(f"{base}/login", data=form, timeout=5):
            _logged_in.add(port)
    with _opener.open(f"{base}/api/stations", timeout=5) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def wait(pred, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if pred():
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"timed out waiting for {what}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "board.png")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="board-shot-"))
    broker = Broker(tmp / "broker")
    broker.start()
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), CHECKPOINT_CONFIG=str(tmp / "absent.toml"))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    UsersFile(tmp / "board" / "board-users.json").add(USER, "viewer", PASSWORD)
    board = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "station.cli.station_main",
            "board",
            "--mqtt",
            broker.url,
            "--listen",
            f"127.0.0.1:{port}",
            "--data-dir",
            str(tmp / "board"),
        ],
        cwd=ROOT,
        env=env,
        stderr=open(tmp / "board.log", "wb"),
    )
    try:
        wait(lambda: api(port) is not None, 20, "the board")
        for name, site, people in (("east-gate", "xinhua-st", 12), ("north-gate", "xinhua-st", 12), ("lane-3", "riverside", 3)):
            procs[name] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "station.cli.station_main",
                    "demo",
                    "--keep-running",
                    "--people",
                    str(people),
                    "--data-dir",
                    str(tmp / name),
                    "--mqtt",
                    broker.url,
                ],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=open(tmp / f"{name}.log", "wb"),
                env=dict(env, CHECKPOINT_STATION__ID=name, CHECKPOINT_STATION__SITE=site, CHECKPOINT_SNAPSHOTS__INTERVAL_S="1"),
            )
        wait(lambda: "all people done" in (tmp / "lane-3.log").read_text(), 120, "lane-3's people")
        procs["lane-3"].send_signal(signal.SIGKILL)
        wait(lambda: any(r["state"] == "offline" for r in api(port)["stations"]), 20, "the Will")

        def faces_at_both() -> bool:
            rows = {r["station"]: r for r in api(port)["stations"]}
            return all(rows[n]["snapshot"] and (rows[n]["last"] or {}).get("decision") for n in ("east-gate", "north-gate"))

        wait(faces_at_both, 60, "pictures and decisions at both gates")
        from playwright.sync_api import sync_playwright

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 720}, bypass_csp=True)  # Playwright's waits use eval
            page.goto(f"http://127.0.0.1:{port}/login")
            page.fill("#user", USER)
            page.fill("#password", PASSWORD)
            page.click("#login")
            page.wait_for_function("document.querySelectorAll('.tile').length === 3")
            best = None
            for _ in range(40):  # wait for a moment when someone stands at a gate (a blurred face in view)
                rows = api(port)["stations"]
                blurred = sum(1 for r in rows if r["snapshot"] and r["state"] == "online" and _faces(port, r) > 0)
                if blurred >= 1:
                    best = blurred
                    page.wait_for_timeout(1200)  # the SSE update and the new image
                    break
                time.sleep(0.5)
            page.wait_for_function("[...document.querySelectorAll('.tile img')].every(i => i.complete && i.naturalWidth > 0)")
            page.screenshot(path=str(args.out))
            browser.close()
        print(f"wrote {args.out} (stations with a blurred face in view: {best})")
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs.values():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        board.send_signal(signal.SIGTERM)
        board.wait(20)
        broker.kill()


def _faces(port: int, row: dict) -> int:  # type: ignore[type-arg]
    return int(row["snapshot"].get("faces_blurred") or 0)


if __name__ == "__main__":
    main()
