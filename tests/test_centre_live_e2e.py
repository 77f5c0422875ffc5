"""A watched checkpoint sends pictures faster, and falls back by itself: real mosquitto, real PostgreSQL, the demo station.

The station is ``station demo`` at walking pace (the real pipeline, its real snapshot publisher and
command link) trusting the centre's command key; the centre is the screen's real app (Starlette
TestClient, a viewer logged in) with a :class:`LiveHub` on the broker. A separate MQTT client times
the station's snapshots as they are published. Idle: one every ``snapshots.interval_s`` (4 s here);
a page's ``POST /api/watch`` makes the centre send a signed ``watch`` lease (8 s here) and the
station publishes every ``watch_interval_s`` (1 s); nobody renews, and the station is back at 4 s
after the lease. The centre serves the newest picture as the station sent it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from starlette.testclient import TestClient

from station.centre.live import LiveHub, WatchLeases
from station.centre.page import Screen, create_screen_app
from station.link.command_auth import new_signing_key, private_pem, public_pem
from tests.support.broker import Broker, mosquitto_available
from tests.support.centre_screen import VIEWER, add_users, login
from tests.support.postgres import pg_server, pg_url
from tests.support.waiting import wait_until

__all__ = ["pg_server", "pg_url"]

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not mosquitto_available(), reason="mosquitto not installed")]

ROOT = Path(__file__).resolve().parents[1]
SITE, STATION = "district-9", "gate-w"
IDLE_S, WATCHED_S, LEASE_S = 4.0, 1.0, 8.0
BASE = "http://127.0.0.1:8090"


class SnapshotClock:
    """Times every snapshot the station publishes (a plain subscriber beside the centre)."""

    def __init__(self, port: int) -> None:
        self.times: list[float] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="snapshot-clock", protocol=MQTTProtocolVersion.MQTTv5)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"checkpoint/v1/{SITE}/{STATION}/snapshot", qos=0)
        self.client.on_message = self._on_message
        self.client.connect_async("127.0.0.1", port, 30)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if not msg.retain:  # the retained copy on subscribe is not a publication
            with self.lock:
                self.times.append(time.monotonic())

    def since(self, t: float) -> list[float]:
        with self.lock:
            return [x for x in self.times if x >= t]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def gaps(times: list[float]) -> list[float]:
    return [round(b - a, 2) for a, b in zip(times, times[1:], strict=False)]


@pytest.fixture()
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "broker")
    b.start()
    yield b
    b.kill()


def test_a_watched_station_sends_pictures_faster_until_the_lease_runs_out(tmp_path: Path, broker: Broker, pg_url: str) -> None:
    key = new_signing_key()
    (tmp_path / "centre-key.pem").write_bytes(private_pem(key))
    (tmp_path / "centre-pub.pem").write_text(public_pem(key.public_key()))
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        CHECKPOINT_CONFIG=str(tmp_path / "absent.toml"),
        CHECKPOINT_STATION__ID=STATION,
        CHECKPOINT_STATION__SITE=SITE,
        CHECKPOINT_SNAPSHOTS__INTERVAL_S=str(IDLE_S),
        CHECKPOINT_SNAPSHOTS__WATCH_INTERVAL_S=str(WATCHED_S),
        CHECKPOINT_CENTRE__COMMAND_KEYS_FILE=str(tmp_path / "centre-pub.pem"),
    )
    # Walking pace and a long queue: the scene camera films only while people remain (a finished scene sends
    # no new frames, and a station re-sends no unchanged picture), so the queue outlasts the test.
    args = [sys.executable, "-m", "station.cli.station_main", "demo", "--keep-running", "--people", "40"]
    args += ["--data-dir", str(tmp_path / "station"), "--mqtt", broker.url]
    log = tmp_path / "station.log"
    station = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(log, "wb"))  # noqa: SIM115
    clock = SnapshotClock(broker.port)
    add_users(pg_url)
    sc = Screen(pg_url)
    sc.open()
    sc.live = LiveHub(
        broker.url,
        key_path=tmp_path / "centre-key.pem",
        signer="district-centre",
        leases=WatchLeases(lease_s=LEASE_S, renew_margin_s=4.0, page_lease_s=6.0, min_send_interval_s=1.0),
    )
    sc.live.start()
    try:
        client = TestClient(create_screen_app(sc), base_url=BASE)
        assert login(client, VIEWER).status_code == 303

        def alive() -> None:
            assert station.poll() is None, f"the station exited: {log.read_text()[-3000:]}"

        def picture_served() -> bool:
            alive()
            return client.get("/api/snapshot", params={"site": SITE, "station": STATION}).status_code == 200

        wait_until(picture_served, 90, "the station's first snapshot served by the centre")
        pic = client.get("/api/snapshot", params={"site": SITE, "station": STATION})
        assert pic.headers["content-type"] == "image/jpeg" and pic.headers["cache-control"] == "no-store"
        assert pic.content[:3] == b"\xff\xd8\xff" and pic.headers["x-snapshot-blur"] == "faces", "blurred by the station"

        # Idle: three pictures in a row at the station's own interval.
        t_idle = time.monotonic()
        wait_until(lambda: alive() or len(clock.since(t_idle)) >= 3, 20, "three idle snapshots")
        idle = gaps(clock.since(t_idle)[:3])
        assert min(idle) > IDLE_S - 0.8, f"idle gaps {idle}"

        # A page opens the picture: the centre sends a signed lease, the station speeds up.
        t_watch = time.monotonic()
        state = client.post("/api/watch", json={"site": SITE, "station": STATION}, headers={"Origin": BASE}).json()
        assert state["watch"]["sent"] is True and state["watch"]["why"] == "due", state
        again = client.post("/api/watch", json={"site": SITE, "station": STATION}, headers={"Origin": BASE}).json()
        assert again["watch"]["sent"] is False and again["watch"]["why"] == "station_lease_running", "one command per lease"
        wait_until(lambda: alive() or len(clock.since(t_watch)) >= 5, 15, "five snapshots at the watched rate")
        watched_times = clock.since(t_watch)[:5]
        watched = gaps(watched_times)
        assert max(watched) < WATCHED_S + 0.8, f"watched gaps {watched} (idle {idle})"
        assert watched_times[0] - t_watch < 2.5, "the lease cuts the idle wait short"
        wait_until(lambda: (sc.live.answers.get((SITE, STATION)) or {}).get("ok") is True, 5, "the station's ok to the watch")
        served = client.get("/api/live", params={"node": f"unassigned/{SITE}/{STATION}"}).json()
        assert served["stations"][0]["picture"]["ts"] > 0 and served["signing"] is True

        # Nobody renews: after the lease (8 s from the command) the station is back at its idle rate by itself.
        t_after = t_watch + LEASE_S + WATCHED_S
        wait_until(lambda: alive() or len(clock.since(t_after)) >= 3, 25, "three snapshots after the lease")
        after = gaps(clock.since(t_after)[:3])
        assert min(after) > IDLE_S - 0.8, f"after the lease: gaps {after}"
        stats = client.get("/api/live/stats").json()
        assert stats["counts"]["watch_sent"] == 1 and stats["counts"]["answers_ok"] == 1
        assert stats["pictures"]["stations"] == 1 and stats["pictures"]["counts"]["stored"] >= 8
        print(f"\nsnapshot gaps idle {idle} watched {watched} after the lease {after}")  # noqa: T201
    finally:
        sc.live.stop()
        sc.close()
        clock.close()
        if station.poll() is None:
            station.send_signal(signal.SIGINT)
            try:
                station.wait(30)
            except subprocess.TimeoutExpired:
                station.kill()
                station.wait(5)
