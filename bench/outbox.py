"""Store-and-forward figures: durable event write rate and catch-up rate after an outage.

``sync_bench(n_events)`` records ``n_events`` screening events (event row + outbox row, one
transaction, WAL, ``synchronous=FULL``) while no broker is reachable, then starts a local mosquitto
and times the outbox pump (QoS 1, window 10, delete on PUBACK) until the outbox is empty.

Run alone: ``python -m bench.outbox [N]``. Needs Debian's mosquitto; everything stays on 127.0.0.1.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from drivers.publish.mqtt import ProtocolName


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_mosquitto(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    import os
    import pwd

    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nuser {pwd.getpwuid(os.getuid()).pw_name}\n"
        "max_inflight_messages 0\nmax_queued_messages 100000\n"
    )
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise RuntimeError("mosquitto did not start")


def _event(i: int) -> Any:
    from station.domain.model import Decision, ScreeningEvent

    return ScreeningEvent(
        f"{i:032x}", "bench", "bench", "entry", Decision.PASS, "ok", False, time.time(), 36.6, {}, None, {}, {}, {}, {"total": 1.0}, {}
    )


def sync_bench(n_events: int = 10_000, protocol: ProtocolName = "auto") -> dict[str, Any]:
    """Record ``n_events`` with no broker, then time the outbox's catch-up to a local Mosquitto.

    ``protocol``: the publisher's MQTT version ("auto" = 5 with 3.1.1 fallback, "5", "3.1.1").
    """
    from drivers.publish.mqtt import MqttPublisher
    from station.link.sync import OutboxPump
    from station.store.events import SqliteEventStore

    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        return {"skipped": "mosquitto not installed"}
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        store = SqliteEventStore(work / "events.sqlite3", station_id="bench", site="bench")
        store.begin_session()
        t0 = time.perf_counter()
        for i in range(n_events):
            store.record(_event(i))
        write_s = time.perf_counter() - t0
        port = _free_port()
        publisher = MqttPublisher(
            f"mqtt://127.0.0.1:{port}",
            "bench-station",
            "bench/status",
            b"offline",
            b"online",
            reconnect_min_delay=0.1,
            reconnect_max_delay=0.2,
            protocol=protocol,
        )
        pump = OutboxPump(store, publisher, max_in_flight=10)
        pump.start()
        publisher.start()
        broker = _start_mosquitto(work, port)
        try:
            t1 = time.perf_counter()
            while not publisher.connected():
                time.sleep(0.005)
            t2 = time.perf_counter()
            drained = pump.drain(600)
            t3 = time.perf_counter()
        finally:
            pump.stop()
            publisher.stop()
            broker.kill()
            broker.wait()
            pending = store.outbox_stats()["pending"]
            store.close()
    return {
        "events": n_events,
        "durable_write_per_s": round(n_events / write_s, 1),
        "synchronous": "FULL",
        "catch_up_per_s": round(n_events / (t3 - t2), 1),
        "catch_up_s": round(t3 - t2, 2),
        "reconnect_s": round(t2 - t1, 2),
        "window": 10,
        "protocol": protocol,
        "drained": drained,
        "pending_after": pending,
    }


if __name__ == "__main__":
    print(json.dumps(sync_bench(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000), indent=2))
