"""Centre ingest figures: ``python -m bench.centre [--json] [--stations N] [--live-s S] [--backlog N]``.

Everything real and local: a mosquitto on 127.0.0.1, a PostgreSQL cluster made with ``initdb``
(fsync and synchronous commit **on**, as a centre would run it), two ``station centre run`` replicas
in one shared-subscription group, and publisher processes that play ``--stations`` stations: each
message is the station's own envelope (``msg_id``, ``seq``, ``session``, …) around a full screening
record from ``ScreeningEvent.as_record()`` (temperature detail, code, face, latencies: ~1 kB), with
the station's mix of alarm copies (5 %), vehicle readings (5 %) and audit records (1 %).

Two measurements:

* **live** — publishers send as fast as the broker takes QoS 1 for ``--live-s`` seconds while both
  replicas ingest; the ingest rate is rows committed per second over the steady part (first and
  last seconds left out), with the lag (commit time minus event time) at the end;
* **backlog** — both replicas stopped (their broker sessions keep queueing), ``--backlog`` messages
  published, replicas started: the time until every message is committed gives the catch-up rate.

Each run also reports CPU seconds per component (publishers, broker, replicas, PostgreSQL), since
the 2 cores are shared by all of them: the rate is what this machine gives with the load generator
on it, not a property of the centre alone. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "checkpoint/v1"
QUEUE_PER_SESSION = 1_000_000  # mosquitto's max_queued_messages for each replica's session in this bench


# --------------------------------------------------------------------------- the simulated stations


def _templates(rng: random.Random) -> dict[str, list[str]]:
    """Return compact-JSON message templates per kind, with placeholders for the per-message values.

    Built once from real records (``ScreeningEvent.as_record()``, the station's envelope), so sizes
    and shapes are the station's; per message only ids, numbers and times are filled in.
    """
    from station.domain.model import CodeColour, Decision, ScreeningEvent
    from station.store.outbox import compact_json, jsonable

    out: dict[str, list[str]] = {"screening": [], "fever": [], "vehicle": [], "audit": []}
    envelope = {"schema": 1, "msg_id": "@MSG@", "station_id": "@STATION@", "site": "@SITE@", "seq": "@SEQ@", "session": 1}
    envelope |= {"ts": "@TS@", "clock_synced": True}
    for decision in (Decision.PASS, Decision.RETRY, Decision.DENY_CODE, Decision.MANUAL_CHECK, Decision.DENY_FEVER):
        fever = decision is Decision.DENY_FEVER
        event = ScreeningEvent(
            event_id="@EID@",
            station_id="@STATION@",
            site="@SITE@",
            lane="entry",
            decision=decision,
            reason="fever" if fever else "ok",
            alarm=fever,
            wall_ts=1.8e9,
            temperature_c=38.3 if fever else round(rng.uniform(36.0, 37.1), 2),
            temperature={"skin_c": 34.2, "n_pixels": 48, "offset_c": 2.4, "terms": {"ambient": 0.3, "distance": 0.1}, "stable": 3},
            code_colour=CodeColour.GREEN,
            code={"status": "valid", "reason": "ok", "source": "local", "decoder": "zxing", "issuer": "demo", "kid": "k1"},
            face={"box": [210.0, 120.0, 330.0, 270.0], "score": 0.97, "px": 150},
            stage_t={"enter": 0.0, "face": 0.12, "temperature": 0.41, "code": 0.63, "decision": 0.64},
            latency_ms={"face": 120.0, "temperature": 410.0, "code": 630.0, "decision": 640.0, "total": 640.0},
            policy={
                "temperature": "hard",
                "yellow_code": "manual_check",
                "uncoloured_code": "manual_check",
                "idcard_unknown": "manual_check",
            },
            clock_synced=True,
        )
        record = jsonable(event.as_record())
        record["ts"] = "@TS@"
        out["fever" if fever else "screening"].append(compact_json({**envelope, "event": record}))
    vehicle = {"vehicle_id": "@EID@", "ts": "@TS@", "type": "outsider_vehicle", "plate": "浙C12345", "confidence": 0.93}
    out["vehicle"].append(compact_json({**envelope, "vehicle": vehicle}))
    audit = {"kind": "operator_action", "action": "recheck", "operator": "op-1", "ok": True, "reason": "ok"}
    out["audit"].append(compact_json({**envelope, **audit}))
    return out


def _fill(template: str, msg_id: str, site: str, station: str, seq: int, ts: float, eid: str) -> bytes:
    text = template.replace('"@SEQ@"', str(seq)).replace('"@TS@"', repr(ts)).replace("@MSG@", msg_id).replace("@EID@", eid)
    return text.replace("@STATION@", station).replace("@SITE@", site).encode()


def _messages(stations: int, seed: int, clock: Any = time.time) -> Any:
    """Yield ``(topic, payload)`` forever: a district's event mix across ``stations`` stations, stamped ``clock()``.

    Per 100 records: 5 vehicles, 1 audit (no seq of its own), and screenings of which 85 % pass,
    6 % retry, 4 % red code, 3 % manual check and 2 % fever (each fever also sent as its alarm copy).
    """
    from station.store.outbox import new_msg_id

    rng = random.Random(seed)
    templates = _templates(rng)
    ordinary = templates["screening"][:1] * 85 + templates["screening"][1:2] * 6 + templates["screening"][2:3] * 4
    ordinary += templates["screening"][3:4] * 3
    seqs = [0] * stations
    while True:
        i = rng.randrange(stations)
        site, station = f"town-{i // 50:03d}", f"gate-{seed}-{i:05d}"
        base = f"{PREFIX}/{site}/{station}/events"
        now = clock()
        roll = rng.random()
        if roll < 0.01:
            yield f"{base}/audit", _fill(templates["audit"][0], new_msg_id(), site, station, seqs[i], now, new_msg_id())
            continue
        seqs[i] += 1
        eid = new_msg_id()
        if roll < 0.06:
            yield f"{base}/vehicle", _fill(templates["vehicle"][0], new_msg_id(), site, station, seqs[i], now, eid)
        elif roll < 0.08:
            fever = templates["fever"][0]
            yield f"{base}/screening", _fill(fever, new_msg_id(), site, station, seqs[i], now, eid)
            yield f"{base}/alarm", _fill(fever, new_msg_id(), site, station, seqs[i], now, eid)
        else:
            yield f"{base}/screening", _fill(rng.choice(ordinary), new_msg_id(), site, station, seqs[i], now, eid)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _publish_packet(topic: str, payload: bytes, packet_id: int) -> bytes:
    """Return an MQTT 3.1.1 PUBLISH at QoS 1 (what a station sends when the broker lacks MQTT 5)."""
    t = topic.encode()
    body = len(t).to_bytes(2, "big") + t + packet_id.to_bytes(2, "big") + payload
    return b"\x32" + _varint(len(body)) + body


def publisher(
    url: str, stations: int, seed: int, count: int, seconds: float, out: str, rate: float = 0.0, window: int = 2000, span_s: float = 0.0
) -> None:
    """Publish ``count`` messages (or for ``seconds``) at QoS 1, at most ``window`` unacknowledged; write what was sent.

    ``rate`` > 0 paces the messages to that many per second (an open-loop offered load); 0 = as fast as acknowledged.
    ``span_s`` > 0 (with ``count``): the records' event times run evenly over the ``span_s`` seconds before
    the start, as a station's records made during an outage are.

    A bare MQTT 3.1.1 client on a socket rather than paho: paho's Python publish path costs ~150 µs a
    message here, so a paho load generator would measure itself, not the centre. Every message is
    still a QoS 1 PUBLISH acknowledged by the broker's PUBACK before it counts as sent.
    """
    import socket
    import threading

    from station.ops.mqtt_url import parse_mqtt_url

    ep = parse_mqtt_url(url)
    sock = socket.create_connection((ep.host, ep.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client_id = f"bench-pub-{seed}-{os.getpid()}".encode()
    variable = b"\x00\x04MQTT\x04\x02\x00\x3c"  # protocol 3.1.1, clean session, keepalive 60 s
    sock.sendall(b"\x10" + _varint(len(variable) + 2 + len(client_id)) + variable + len(client_id).to_bytes(2, "big") + client_id)
    connack = sock.recv(4)
    if connack[:1] != b"\x20" or connack[3:4] != b"\x00":
        raise RuntimeError(f"broker refused the publisher: {connack!r}")
    acked = 0
    done = threading.Event()
    progress = threading.Condition()

    def read_acks() -> None:
        nonlocal acked
        buf = b""
        while not done.is_set():
            try:
                chunk = sock.recv(65536)
            except OSError:  # closed under us at the end of the run
                return
            if not chunk:
                return
            buf += chunk
            whole = len(buf) // 4 * 4  # every packet the broker sends us is a 4-byte PUBACK
            if buf[:1] not in (b"", b"\x40"):
                raise RuntimeError(f"unexpected packet from the broker: {buf[:8]!r}")
            n, buf = whole // 4, buf[whole:]
            with progress:
                acked += n
                progress.notify_all()

    reader = threading.Thread(target=read_acks, daemon=True)
    reader.start()
    made = iter(range(1 << 62))
    t_start = time.time()
    clock = (lambda: t_start - span_s + span_s * min(1.0, next(made) / count)) if span_s and count else time.time
    gen = _messages(stations, seed, clock)
    sent = 0
    packet_id = 0
    t0 = time.monotonic()
    while (count and sent < count) or (not count and time.monotonic() - t0 < seconds):
        with progress:
            while sent - acked >= window:
                progress.wait(1.0)
        room = min(window - (sent - acked), 200, (count - sent) if count else 200)
        if rate:
            ahead = sent / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
            room = min(room, 50)
        packets = []
        for _ in range(room):
            topic, payload = next(gen)
            packet_id = packet_id % 65535 + 1
            packets.append(_publish_packet(topic, payload, packet_id))
        sock.sendall(b"".join(packets))
        sent += len(packets)
    with progress:
        while acked < sent and progress.wait(30):
            pass
    elapsed = time.monotonic() - t0
    done.set()
    sock.sendall(b"\xe0\x00")  # DISCONNECT
    sock.close()
    Path(out).write_text(json.dumps({"sent": sent, "acked": acked, "elapsed_s": elapsed}))


# --------------------------------------------------------------------------- the rig


def _cpu_s(pid: int) -> float:
    """Return the CPU seconds (user + system) a process and its waited-for children used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))
        return ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _postgres_cpu_s(server: Any) -> float:
    try:
        pid = int((server.data / "postmaster.pid").read_text().split()[0])
        out = subprocess.run(["ps", "--ppid", str(pid), "-o", "pid="], capture_output=True, text=True).stdout.split()
        return _cpu_s(pid) + sum(_cpu_s(int(p)) for p in out)
    except (OSError, ValueError):
        return 0.0


class Replica:
    """One ``station centre run`` process."""

    def __init__(self, name: str, mqtt_url: str, db_url: str, port: int, log: Path) -> None:
        self.name, self.mqtt_url, self.db_url, self.port, self.log = name, mqtt_url, db_url, port, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.cpu_s = 0.0

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "station.cli.station_main", "centre", "run", "--mqtt", self.mqtt_url, "--db", self.db_url]
                + ["--listen", f"127.0.0.1:{self.port}", "--share-group", "bench", "--client-id", f"bench-centre-{self.name}"]
                + ["--session-expiry", "3600", "--log-level", "WARNING"],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=dict(os.environ, PYTHONPATH=str(ROOT)),
            )

    def health(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as resp:
                return dict(json.loads(resp.read()))
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.cpu_s += _cpu_s(self.proc.pid)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _rows(db_url: str) -> int:
    import psycopg

    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT count(*) FROM events").fetchone()
    return int(row[0]) if row else 0


def _wait(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _committed(db_url: str, before: int, sent: int, broker: Any) -> bool:
    """Return whether ``sent`` more rows are committed; raise when the broker dropped messages instead (its queue limit)."""
    if _rows(db_url) - before >= sent:
        return True
    if "being dropped" in broker.log.read_text(encoding="utf-8", errors="replace"):
        raise RuntimeError(f"the broker dropped messages (max_queued_messages {QUEUE_PER_SESSION} a session): see {broker.log}")
    return False


def _publishers(
    url: str, stations: int, procs: int, count: int, seconds: float, workdir: Path, rate: float = 0.0, span_s: float = 0.0
) -> list[tuple[subprocess.Popen[bytes], Path]]:
    out = []
    for k in range(procs):
        result = workdir / f"pub-{k}-{time.monotonic_ns()}.json"
        cmd = [sys.executable, "-m", "bench.centre", "--publisher", url, str(stations // procs), str(k), str(count // procs), str(seconds)]
        cmd += [str(rate / procs), str(span_s)]
        out.append((subprocess.Popen([*cmd, str(result)], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT))), result))
    return out


def _live(
    broker: Any, server: Any, replicas: list[Replica], db_url: str, stations: int, procs: int, seconds: float, rate: float, workdir: Path
) -> dict[str, Any]:
    """Offer ``rate`` messages/s (0 = as fast as the broker takes them) for ``seconds``; return ingest rate, lag and CPU."""
    before = _rows(db_url)
    pg_cpu0, broker_cpu0 = _postgres_cpu_s(server), _cpu_s(broker.proc.pid if broker.proc else 0)
    rep_cpu0 = [_cpu_s(r.proc.pid) if r.proc else 0.0 for r in replicas]
    children0 = os.times().children_user + os.times().children_system
    pubs = _publishers(broker.url, stations, procs, 0, seconds, workdir, rate)
    samples: list[tuple[float, int, float]] = []
    t0 = time.monotonic()
    while any(p.poll() is None for p, _ in pubs):
        ages = [((r.health() or {}).get("writer") or {}).get("last_event_age_s") or 0.0 for r in replicas]
        samples.append((time.monotonic() - t0, _rows(db_url) - before, max(ages)))
        time.sleep(0.5)
    sent = sum(json.loads(path.read_text())["sent"] for p, path in pubs if p.wait() == 0 and path.exists())
    pub_cpu = os.times().children_user + os.times().children_system - children0  # waited-for publishers
    _wait(lambda: _committed(db_url, before, sent, broker), 600, "the stream committed")
    t_done = time.monotonic() - t0
    steady = [(t, n) for t, n, _ in samples if 2.0 <= t <= seconds - 1.0]
    ingest = (steady[-1][1] - steady[0][1]) / (steady[-1][0] - steady[0][0]) if len(steady) >= 2 else None
    lags = sorted(a for t, _, a in samples if t >= 2.0)
    cpu = {
        "publishers": pub_cpu,
        "broker": _cpu_s(broker.proc.pid if broker.proc else 0) - broker_cpu0,
        "replicas": sum((_cpu_s(r.proc.pid) if r.proc else 0.0) - c for r, c in zip(replicas, rep_cpu0, strict=True)),
        "postgres": _postgres_cpu_s(server) - pg_cpu0,
    }
    per_msg = {k: round(v / max(1, sent) * 1e6, 1) for k, v in cpu.items()}
    centre_us = per_msg["broker"] + per_msg["replicas"] + per_msg["postgres"]
    return {
        "offered_rate_per_s": rate or "as fast as acknowledged",
        "seconds": seconds,
        "messages_sent": sent,
        "publish_rate_per_s": round(sent / seconds, 1),
        "ingest_rate_per_s_steady": round(ingest, 1) if ingest else None,
        "ingest_rate_per_s_overall": round(sent / t_done, 1),
        "all_committed_after_s": round(t_done, 2),
        "lag_s_median": round(lags[len(lags) // 2], 3) if lags else None,
        "lag_s_max": round(lags[-1], 3) if lags else None,
        "cpu_us_per_message": per_msg,
        # What 2 otherwise idle cores could take (broker + replicas + PostgreSQL, no load generator):
        # the machine is shared with other work, so the CPU cost is the steadier figure.
        "capacity_per_s_2_free_cores": round(2e6 / centre_us) if centre_us else None,
        "cpu_s": {
            "publishers": round(pub_cpu, 1),
            "broker": round(_cpu_s(broker.proc.pid if broker.proc else 0) - broker_cpu0, 1),
            "replicas": [round((_cpu_s(r.proc.pid) if r.proc else 0.0) - c, 1) for r, c in zip(replicas, rep_cpu0, strict=True)],
            "postgres": round(_postgres_cpu_s(server) - pg_cpu0, 1),
        },
    }


def run(stations: int, live_s: float, rate: float, max_s: float, backlog: int, procs: int) -> dict[str, Any]:
    """Run the three measurements (sustained at ``rate``, as fast as possible, backlog) and return the figures."""
    import psycopg

    from tests.support.broker import Broker, free_port
    from tests.support.postgres import PostgresServer

    workdir = Path(tempfile.mkdtemp(prefix="bench-centre-"))
    server = PostgresServer(fsync=True)
    # The as-fast-as-possible run queues what the replicas cannot take yet (up to ~300 000 messages in its
    # 10 s): each replica's session must hold that, as a centre's broker must hold the backlog it is meant to
    # survive (docs/centre.md); past the limit mosquitto drops the messages.
    broker = Broker(workdir / "broker", max_queued_messages=QUEUE_PER_SESSION)
    replicas: list[Replica] = []
    result: dict[str, Any] = {"stations": stations, "publisher_processes": procs, "cores": os.cpu_count()}
    try:
        server.start()
        db_url = server.create_database("centre")
        broker.start()
        replicas = [Replica(n, broker.url, db_url, free_port(), workdir / f"centre-{n}.log") for n in ("a", "b")]
        for r in replicas:
            r.start()
        _wait(lambda: all((h := r.health()) and h["status"] == "ok" for r in replicas), 60, "replicas healthy")
        with psycopg.connect(db_url) as conn:
            size0 = conn.execute("SELECT pg_database_size(current_database())").fetchone()

        result["sustained"] = _live(broker, server, replicas, db_url, stations, procs, live_s, rate, workdir)
        result["max"] = _live(broker, server, replicas, db_url, stations, procs, max_s, 0.0, workdir)

        # backlog ---------------------------------------------------------------------------
        before = _rows(db_url)
        for r in replicas:
            r.stop()
        pubs = _publishers(broker.url, stations, procs, backlog, 0, workdir)
        queued = sum(json.loads(path.read_text())["sent"] for p, path in pubs if p.wait() == 0 and path.exists())
        rep_cpu0 = [r.cpu_s for r in replicas]
        t0 = time.monotonic()
        for r in replicas:
            r.start()
        marks: list[tuple[float, int]] = []
        deadline = t0 + 900
        while (n := _rows(db_url) - before) < queued:
            if time.monotonic() > deadline:
                raise RuntimeError("timed out waiting for the backlog to be committed")
            marks.append((time.monotonic() - t0, n))
            time.sleep(0.2)
        took = time.monotonic() - t0
        # The steady rate between 10 % and 90 % of the backlog: process start-up and the tail left out.
        middle = [(t, n) for t, n in marks if 0.1 * queued <= n <= 0.9 * queued]
        steady_backlog = (middle[-1][1] - middle[0][1]) / (middle[-1][0] - middle[0][0]) if len(middle) >= 2 else None
        healths = [r.health() or {} for r in replicas]
        with psycopg.connect(db_url) as conn:
            from zoneinfo import ZoneInfo

            from station.centre import db as centre_db

            tz = ZoneInfo(centre_db.ensure_schema(conn))
            timings = {}
            for name, query in (
                ("report_ms", lambda: centre_db.report(conn, centre_db.day_of(time.time(), tz), tz)),
                ("missing_by_station_ms", lambda: centre_db.missing_by_station(conn)),
            ):
                runs = []
                for _ in range(3):
                    t1 = time.perf_counter()
                    query()
                    runs.append((time.perf_counter() - t1) * 1000)
                timings[name] = round(sorted(runs)[1], 1)  # median of 3
            dup = conn.execute("SELECT count(*) - count(DISTINCT msg_id) FROM events").fetchone()
            size1 = conn.execute("SELECT pg_database_size(current_database())").fetchone()
            missing = conn.execute("SELECT coalesce(sum(missing_events), 0) FROM station_missing").fetchone()
        result["backlog"] = {
            "messages": queued,
            "drained_s": round(took, 2),
            "rate_per_s_incl_start": round(queued / took, 1),
            "rate_per_s_steady": round(steady_backlog, 1) if steady_backlog else None,
            "cpu_s_replicas": [
                round(r.cpu_s - c + (_cpu_s(r.proc.pid) if r.proc else 0.0), 1) for r, c in zip(replicas, rep_cpu0, strict=True)
            ],
            "per_replica_inserted": [h.get("writer", {}).get("inserted") for h in healths],
        }
        result["database"] = {
            "rows": before + queued,
            "duplicates": int(dup[0]) if dup else None,
            "missing_events": int(missing[0]) if missing else None,
            **timings,
            "bytes_per_row": round(((size1[0] if size1 else 0) - (size0[0] if size0 else 0)) / max(1, before + queued), 1),
            "fsync": True,
        }
        result["target_events_per_s"] = 5000
        sustained = result["sustained"]
        result["met"] = {
            # Sustained: the offered 5 000/s was taken at that rate with the lag staying under 2 s.
            "sustained_5000_per_s": bool(rate >= 5000 and (sustained["ingest_rate_per_s_steady"] or 0) >= 0.97 * rate)
            and (sustained["lag_s_max"] or 99) < 2.0,
            "max_ingest_5000_per_s": (result["max"]["ingest_rate_per_s_steady"] or 0) >= 5000,
            "backlog_5000_per_s": (result["backlog"]["rate_per_s_steady"] or 0) >= 5000,
        }
    finally:
        for r in replicas:
            r.stop()
        broker.kill()
        server.remove()
    return result


def backlog_hour(stations: int, per_station_hour: int, procs: int) -> dict[str, Any]:
    """Replay a 1-hour backlog of ``stations`` stations after a centre outage; return the drain rate, time and exact counts.

    Simulated: the broker stays up while both replicas are down (their persistent sessions, expiry
    3600 s, keep queueing the shared subscription's messages); the stations publish the hour's records
    (``per_station_hour`` messages a station on average, event times spread over the last hour); then
    both replicas start and drain. Counted from the database: rows equal messages sent, no msg_id
    twice, no seq missing.
    """
    import psycopg

    from tests.support.broker import Broker, free_port
    from tests.support.postgres import PostgresServer

    workdir = Path(tempfile.mkdtemp(prefix="bench-centre-backlog-"))
    server = PostgresServer(fsync=True)
    broker = Broker(workdir / "broker")
    replicas: list[Replica] = []
    messages = stations * per_station_hour
    result: dict[str, Any] = {"stations": stations, "per_station_hour": per_station_hour, "publisher_processes": procs}
    result["simulated"] = "messages queued in the replicas' persistent broker sessions (broker up, both replicas down)"
    result["load_average_before"] = os.getloadavg()
    try:
        server.start()
        db_url = server.create_database("centre")
        broker.start()
        replicas = [Replica(n, broker.url, db_url, free_port(), workdir / f"centre-{n}.log") for n in ("a", "b")]
        for r in replicas:
            r.start()
        _wait(lambda: all((h := r.health()) and h["status"] == "ok" for r in replicas), 60, "replicas healthy")
        for r in replicas:
            r.stop()  # the outage: sessions stay on the broker
        t_pub = time.monotonic()
        pubs = _publishers(broker.url, stations, procs, messages, 0, workdir, span_s=3600.0)
        queued = sum(json.loads(path.read_text())["sent"] for p, path in pubs if p.wait() == 0 and path.exists())
        result["publish_s"] = round(time.monotonic() - t_pub, 1)
        rep_cpu0 = [r.cpu_s for r in replicas]
        pg_cpu0 = _postgres_cpu_s(server)
        t0 = time.monotonic()
        for r in replicas:
            r.start()
        marks: list[tuple[float, int]] = []
        deadline = t0 + 1800
        while (n := _rows(db_url)) < queued:
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out: {n} of {queued} committed")
            marks.append((time.monotonic() - t0, n))
            time.sleep(0.2)
        took = time.monotonic() - t0
        middle = [(t, n) for t, n in marks if 0.1 * queued <= n <= 0.9 * queued]
        steady = (middle[-1][1] - middle[0][1]) / (middle[-1][0] - middle[0][0]) if len(middle) >= 2 else None
        time.sleep(3.0)  # anything still in flight (a redelivery) would land now
        with psycopg.connect(db_url) as conn:
            counts = conn.execute(
                "SELECT count(*), count(DISTINCT msg_id), count(DISTINCT (site, station)), "
                "extract(epoch FROM max(ts) - min(ts)) FROM events"
            ).fetchone()
            missing = conn.execute("SELECT coalesce(sum(missing_events), 0) FROM station_missing").fetchone()
        assert counts is not None and missing is not None
        healths = [r.health() or {} for r in replicas]
        result["load_average_after"] = os.getloadavg()
        result["backlog"] = {
            "messages": queued,
            "drained_s": round(took, 2),
            "rate_per_s_incl_start": round(queued / took, 1),
            "rate_per_s_steady": round(steady, 1) if steady else None,
            "cpu_s_replicas": [
                round(r.cpu_s - c + (_cpu_s(r.proc.pid) if r.proc else 0.0), 1) for r, c in zip(replicas, rep_cpu0, strict=True)
            ],
            "cpu_s_postgres": round(_postgres_cpu_s(server) - pg_cpu0, 1),
            "per_replica_inserted": [h.get("writer", {}).get("inserted") for h in healths],
            "per_replica_duplicates": [h.get("writer", {}).get("duplicates") for h in healths],
        }
        result["database"] = {
            "rows": int(counts[0]),
            "distinct_msg_ids": int(counts[1]),
            "stations": int(counts[2]),
            "event_time_span_s": round(float(counts[3] or 0), 1),
            "duplicates": int(counts[0]) - int(counts[1]),
            "missing_events": int(missing[0]),
            "rows_minus_sent": int(counts[0]) - queued,
        }
        result["exact"] = int(counts[0]) == queued and int(counts[1]) == queued and int(missing[0]) == 0
    finally:
        for r in replicas:
            r.stop()
        broker.kill()
        server.remove()
    return result


def main(argv: list[str] | None = None) -> None:
    """Run the centre bench and print its figures."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--publisher"]:
        url, stations, seed, count, seconds, rate, span, out = argv[1:9]
        publisher(url, int(stations), int(seed), int(count), float(seconds), out, float(rate), span_s=float(span))
        return
    if argv[:1] == ["--queries"]:  # query latency over a big store (bench/centre_queries.py)
        from bench.centre_queries import main as queries

        queries(argv[1:])
        return
    ap = argparse.ArgumentParser(prog="python -m bench.centre", description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--stations", type=int, default=2000)
    ap.add_argument("--live-s", type=float, default=30.0, help="seconds of the sustained run")
    ap.add_argument("--rate", type=float, default=5000.0, help="messages/s offered in the sustained run")
    ap.add_argument("--max-s", type=float, default=10.0, help="seconds of the as-fast-as-possible run")
    ap.add_argument("--backlog", type=int, default=60000)
    ap.add_argument("--publishers", type=int, default=2, help="publisher processes")
    ap.add_argument("--backlog-hour", action="store_true", help="only the 1-hour backlog of --stations replayed after an outage")
    ap.add_argument("--per-station-hour", type=int, default=60, help="records a station makes in the hour of the outage")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    args = ap.parse_args(argv)
    if args.backlog_hour:
        result = backlog_hour(args.stations, args.per_station_hour, args.publishers)
    else:
        result = run(args.stations, args.live_s, args.rate, args.max_s, args.backlog, args.publishers)
    if args.out:
        args.out.write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print(json.dumps(result, ensure_ascii=False, indent=2))


if __name__ == "__main__":
    main()
