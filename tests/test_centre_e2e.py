"""The centre end to end: demo stations on a real Mosquitto, two ``station centre run`` replicas sharing the stream,
a broker restart and a replica killed mid-stream; the day's report equals what the stations recorded, exactly.

* three demo stations (``station demo --mqtt``, each its own site/id) publish live;
* a fourth station recorded 1 200 screenings while cut off, its outbox bound dropped the oldest 200
  (the real ``outbox_enforce_bounds``), and ``stationctl outbox flush`` sends the rest in one burst:
  the stream the killed replica is in the middle of;
* the broker is restarted (clean stop with persistence: sessions survive) while the demos run;
* replica A is SIGKILLed while the burst flows and started again under its client id.

Then ``station centre report --json`` (summed over the days the events fall on) equals each station's
own SQLite counts by decision; the database holds every message once; the fourth station's dropped
rows are its missing events.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest

from station.store.events import OutboxBounds, SqliteEventStore
from tests.support.broker import Broker, free_port, mosquitto_available
from tests.support.events import make_event
from tests.support.postgres import pg_server, pg_url, postgres_available
from tests.support.waiting import wait_until

__all__ = ["pg_server", "pg_url"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not mosquitto_available(), reason="mosquitto not installed"),
    pytest.mark.skipif(not postgres_available(), reason="PostgreSQL not installed"),
]

ROOT = Path(__file__).resolve().parents[1]
SITE = "dist-a"
DEMOS = ("gate-1", "gate-2", "gate-3")
BACKLOG_STATION = "gate-9"
BACKLOG, KEPT = 1200, 1000  # recorded offline; the outbox bound keeps the newest 1000 ordinary rows
PEOPLE = 5  # pass, fever (+ its alarm copy), red code, yellow code, no code (retry after the code timeout)


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT))


def _config(path: Path, station: str, data_dir: Path) -> Path:
    path.write_text(f'[station]\nsite = "{SITE}"\nid = "{station}"\ndata_dir = "{data_dir}"\n')
    return path


class Replica:
    """One ``station centre run`` process with its own client id, health port and log file."""

    def __init__(self, name: str, mqtt_url: str, db_url: str, workdir: Path) -> None:
        self.name, self.mqtt_url, self.db_url = name, mqtt_url, db_url
        self.port = free_port()
        self.log = workdir / f"centre-{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "station.cli.station_main",
                    "centre",
                    "run",
                    *("--mqtt", self.mqtt_url, "--db", self.db_url, "--listen", f"127.0.0.1:{self.port}"),
                    *("--share-group", "district", "--client-id", f"centre-{self.name}", "--session-expiry", "600"),
                    *("--batch-size", "100", "--batch-ms", "50"),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=_env(),
            )

    def health(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as resp:
                return dict(json.loads(resp.read()))
        except (OSError, ValueError):
            return None

    def healthy(self) -> bool:
        h = self.health()
        return bool(h and h["status"] == "ok")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def _demo(station: str, workdir: Path, mqtt_url: str) -> subprocess.Popen[bytes]:
    data = workdir / station
    cfg = _config(workdir / f"{station}.toml", station, data)
    out = open(workdir / f"{station}.out", "wb")  # noqa: SIM115  # the child keeps its copy
    return subprocess.Popen(
        [sys.executable, "-m", "station.cli.station_main", "demo", "--fast", "--json", "--people", str(PEOPLE)]
        + ["--data-dir", str(data), "--config", str(cfg), "--mqtt", mqtt_url],
        stdout=out,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env=_env(),
    )


def _stationctl(workdir: Path, station: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    cfg = workdir / f"{station}.toml"
    return subprocess.run(
        [sys.executable, "-m", "station.cli.stationctl", "--config", str(cfg), "--data-dir", str(workdir / station), "outbox", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=_env(),
    )


def _backlog_station(workdir: Path) -> int:
    """Record BACKLOG screenings at a cut-off station and apply a row bound; return how many rows it dropped."""
    data = workdir / BACKLOG_STATION
    data.mkdir()
    _config(workdir / f"{BACKLOG_STATION}.toml", BACKLOG_STATION, data)
    store = SqliteEventStore(data / "events.sqlite3", station_id=BACKLOG_STATION, site=SITE)
    store.begin_session()
    for i in range(BACKLOG):
        store.record(make_event(i))
    store.outbox_bounds = OutboxBounds(max_rows=KEPT, max_bytes=10**9, max_age_s=10**9)
    dropped = store.outbox_enforce_bounds()
    store.close()
    return dropped


def _station_counts(db_path: Path) -> tuple[Counter[str], set[dt.date]]:
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute("SELECT decision, ts FROM events").fetchall()
    return Counter(d for d, _ in rows), {dt.datetime.fromtimestamp(ts, dt.UTC).date() for _, ts in rows}


def _rows(db_url: str, station: str) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT count(*) FROM events WHERE station = %s", (station,)).fetchone()
    return int(row[0]) if row else 0


def test_two_replicas_a_broker_restart_and_a_killed_replica_lose_and_duplicate_nothing(pg_url: str, tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker", persistence=True)
    broker.start()
    replicas = [Replica("a", broker.url, pg_url, tmp_path), Replica("b", broker.url, pg_url, tmp_path)]
    demos: list[subprocess.Popen[bytes]] = []
    try:
        dropped = _backlog_station(tmp_path)
        assert dropped == BACKLOG - KEPT
        for r in replicas:
            r.start()
        try:  # a replica starts in ~2 s; the generous bound is for a machine loaded by other work
            wait_until(lambda: all(r.healthy() for r in replicas), 90, "both replicas healthy")
        except AssertionError as exc:
            logs = "\n".join(r.log.read_text(errors="replace")[-1500:] for r in replicas if r.log.exists())
            raise AssertionError(f"{exc}\n{logs}") from None
        demos = [_demo(s, tmp_path, broker.url) for s in DEMOS]

        # Broker restart mid-stream. mosquitto 2.0.11 restores sessions but not *shared* subscriptions
        # from its persistence file: what a station publishes after the restart and before the replicas
        # have subscribed again reaches nobody (docs/centre.md; the next test shows it surfacing as
        # missing events). The stations are frozen over the restart so that they come back after the
        # replicas: this part checks what the centre guarantees (in-flight and queued messages, re-sends).
        wait_until(lambda: sum(_rows(pg_url, s) for s in DEMOS) >= 2, 90, "the first demo events in PostgreSQL")
        for p in demos:
            p.send_signal(signal.SIGSTOP)
        broker.stop()
        broker.start()
        wait_until(
            lambda: all((h := r.health()) and h["mqtt"]["connects"] == 2 and h["status"] == "ok" for r in replicas), 30, "replicas back"
        )
        for p in demos:
            p.send_signal(signal.SIGCONT)

        # A burst from the cut-off station; replica A is killed in the middle of it and comes back.
        flush = subprocess.Popen(
            [sys.executable, "-m", "station.cli.stationctl", "--config", str(tmp_path / f"{BACKLOG_STATION}.toml")]
            + ["--data-dir", str(tmp_path / BACKLOG_STATION), "outbox", "flush", "--mqtt", broker.url, "--timeout", "120", "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=_env(),
        )
        wait_until(lambda: _rows(pg_url, BACKLOG_STATION) >= 150, 60, "the burst reaching PostgreSQL")
        replicas[0].kill()
        at_kill = _rows(pg_url, BACKLOG_STATION)
        wait_until(lambda: _rows(pg_url, BACKLOG_STATION) > at_kill + 100, 60, "replica B going on alone")
        replicas[0].start()
        wait_until(replicas[0].healthy, 30, "replica A back")

        out, err = flush.communicate(timeout=150)
        assert flush.returncode == 0, out + err
        assert json.loads(out)["sent"] == KEPT + 1  # the kept rows and the overflow notice
        for p in demos:
            # 1 = "only N of M people got a decision": the demo's scene runs on the wall clock, so the
            # freeze over the broker restart may let a person walk through unseen. The station's own
            # SQLite file is what the centre is held to, whatever the scene expected.
            assert p.wait(180) in (0, 1)
        for s in DEMOS:  # a demo gives up waiting for a broker after a while: what it left is sent now
            status = json.loads(_stationctl(tmp_path, s, "status", "--json").stdout)
            if status["pending"]:
                assert _stationctl(tmp_path, s, "flush", "--mqtt", broker.url, "--timeout", "60").returncode == 0

        expected = {}
        days: set[dt.date] = set()
        for s in (*DEMOS, BACKLOG_STATION):
            expected[s], d = _station_counts(tmp_path / s / "events.sqlite3")
            days |= d
        total_messages = sum(sum(c.values()) for c in expected.values()) - dropped + 1
        total_messages += sum(c["deny_fever"] for s, c in expected.items() if s != BACKLOG_STATION)  # alarm copies

        def stored() -> int:
            with psycopg.connect(pg_url) as conn:
                return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])  # type: ignore[index]

        try:
            wait_until(lambda: stored() >= total_messages, 60, f"all {total_messages} messages stored")
        except AssertionError as exc:
            with psycopg.connect(pg_url) as conn:
                got = conn.execute("SELECT station, kind, count(*), min(seq), max(seq) FROM events GROUP BY 1, 2 ORDER BY 1, 2").fetchall()
            raise AssertionError(f"{exc}: stored {got}, expected {dict(expected)}, health {[r.health() for r in replicas]}") from None
        time.sleep(0.5)  # anything late would be a duplicate or a stranger: there must be none
        assert stored() == total_messages

        with psycopg.connect(pg_url) as conn:
            assert conn.execute("SELECT count(*) - count(DISTINCT msg_id) FROM events").fetchone() == (0,)
            assert conn.execute(
                "SELECT count(*) FROM (SELECT 1 FROM events GROUP BY station, kind, event_id HAVING count(*) > 1) d"
            ).fetchone() == (0,)
            assert conn.execute("SELECT count(*) FROM events_misdated").fetchone() == (0,)

        reports = []
        for day in sorted(days):
            done = subprocess.run(
                [sys.executable, "-m", "station.cli.station_main", "centre", "report", "--db", pg_url, "--day", day.isoformat(), "--json"],
                capture_output=True,
                text=True,
                timeout=60,
                cwd=ROOT,
                env=_env(),
            )
            assert done.returncode == 0, done.stderr
            reports.append(json.loads(done.stdout))
        by_decision: Counter[str] = Counter()
        for rep in reports:
            by_decision.update(rep["by_decision"])
        missing = Counter[str]()
        for rep in reports:
            missing.update(rep["missing_by_station"])
        station_total: Counter[str] = Counter()
        for c in expected.values():
            station_total.update(c)
        backlog_lost = Counter({"pass": dropped})  # make_event(i) is a pass
        assert by_decision == station_total - backlog_lost
        assert sum(rep["screened"] for rep in reports) == sum(station_total.values()) - dropped
        assert dict(missing) == {f"{SITE}/{BACKLOG_STATION}": dropped}
        assert sum(rep["missing_events"] for rep in reports) == dropped
        assert sum(rep["reported_dropped"] for rep in reports) == dropped
        assert max(rep["stations"] for rep in reports) == 4
        for s in DEMOS:
            assert sum(expected[s].values()) >= 2, expected  # the stations did screen people

        # The replicas' own books: both took a share, nothing was dropped as bad.
        healths = [r.health() for r in replicas]
        assert all(h and h["writer"]["dropped"] == {} for h in healths), healths
        assert all(h and h["writer"]["inserted"] > 0 for h in healths[1:]), healths
    finally:
        for p in demos:
            if p.poll() is None:
                p.kill()
        codes = [r.stop() for r in replicas]
        broker.kill()
    assert codes == [0, 0], "a SIGTERM is a clean stop"


def _record_and_flush(workdir: Path, station: str, mqtt_url: str, first: int, n: int) -> None:
    store = SqliteEventStore(workdir / station / "events.sqlite3", station_id=station, site=SITE)
    store.begin_session()
    for i in range(first, first + n):
        store.record(make_event(i))
    store.close()
    done = _stationctl(workdir, station, "flush", "--mqtt", mqtt_url, "--timeout", "30", "--json")
    assert done.returncode == 0, done.stdout + done.stderr


def test_what_the_broker_loses_over_a_restart_is_a_missing_event_never_a_silent_hole(pg_url: str, tmp_path: Path) -> None:
    """The raw broker behaviour, with no command key (so no repair): the lost record stays a missing event.

    With a command key the centre asks for it again and the gap closes: tests/test_centre_repair.py.
    """
    from station.centre.run import Centre, CentreOptions

    broker = Broker(tmp_path / "broker", persistence=True)
    broker.start()
    station = "gate-5"
    (tmp_path / station).mkdir()
    _config(tmp_path / f"{station}.toml", station, tmp_path / station)
    opts = CentreOptions(mqtt_url=broker.url, db_url=pg_url, share_group="district", client_id="centre-x", batch_window_s=0.02)
    centre = Centre(opts)
    try:
        centre.start()
        assert centre.subscriber is not None and centre.subscriber.subscribed.wait(10)
        _record_and_flush(tmp_path, station, broker.url, 0, 3)
        wait_until(lambda: _rows(pg_url, station) == 3, 20, "seq 1-3 stored")
        centre.stop()  # a clean stop: the session (and its subscription) stays on the broker
        broker.stop()
        broker.start()
        _record_and_flush(tmp_path, station, broker.url, 3, 1)  # seq 4, acknowledged by the restarted broker
        centre = Centre(opts)
        centre.start()
        assert centre.subscriber is not None and centre.subscriber.subscribed.wait(10)
        _record_and_flush(tmp_path, station, broker.url, 4, 1)  # seq 5
        wait_until(lambda: centre.writer.stats()["inserted"] >= 1, 20, "seq 5 stored")
        with psycopg.connect(pg_url) as conn:
            seqs = [r[0] for r in conn.execute("SELECT seq FROM events WHERE station = %s ORDER BY seq", (station,))]
            missing = conn.execute("SELECT coalesce(sum(missing), 0) FROM station_gaps WHERE station = %s", (station,)).fetchone()
            gaps = conn.execute("SELECT first_missing, last_missing FROM station_gaps WHERE station = %s", (station,)).fetchall()
        # Every record the station made is either stored or counted missing, never neither.
        assert missing is not None and len(seqs) + int(missing[0]) == 5
        assert gaps == [(s, s) for s in range(1, 6) if s not in seqs]
        # mosquitto 2.0.11 (Debian 12) restores the session but not its shared subscription: seq 4 reached nobody.
        # Should a broker keep shared subscriptions over a restart, seq 4 arrives and docs/centre.md needs updating.
        assert seqs == [1, 2, 3, 5], "mosquitto kept the shared subscription over its restart: update docs/centre.md"
    finally:
        centre.stop()
        broker.kill()
