"""Bytes the station writes to its card per screening, by cause, and what that means in card years.

``python -m bench.card_wear [--people 120] [--steady-from 90] [--json] [--out F] [--no-strace] [--source DIR] [--label L]``

Runs the real demo station (``station demo --fast``: real pipeline, real SQLite store, the outbox
pump to a local mosquitto unless ``--no-mqtt``) as a subprocess with its data directory on the
machine's disk and its status file on tmpfs (as systemd's ``RuntimeDirectory=``), and measures at
steady state (from decision :data:`STEADY_FROM` to the last), once with the broker and once without:

- ``card_bytes_per_screening`` (root only): the data directory is an ext4 file system of its own on a
  loop device (:class:`Card`); the bytes it sent to its device (data, metadata, ext4 journal) per
  decision. This is the figure the card years are computed from when it exists;
- ``write_bytes_per_screening``: the growth of ``/proc/<pid>/io`` ``write_bytes`` (bytes the process
  caused to be sent to storage, counted when pages are dirtied, mmap'd ``-shm`` pages included) per
  decision;
- ``by_file``: a second run under ``strace -f -y`` (``write``/``pwrite64`` bytes and ``fsync`` calls
  per file, grouped: event database WAL, main file (checkpoints), ``-shm``, the codes replay memory,
  crops, other) per decision. strace counts what the process hands the kernel; the kernel writes
  whole pages, so the two figures differ a little;
- ``idle``: ``write_bytes`` per hour over :data:`IDLE_S` after the last person (``--keep-running``);
- ``log_bytes_per_screening``: the daemon's log lines (stderr here; journald on the box, on the card
  when the journal is persistent), kept apart from the station's own writes;
- ``card_life``: years until a 32 GB consumer card and a 32 GB industrial (pSLC) card reach their
  endurance at ``screenings_per_day`` (see :data:`CARDS` for the figures assumed and their sources).

Card years are a model, not a measurement: write amplification inside an SD card depends on its
controller and is not visible from Linux.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

SCREENINGS_PER_DAY = 2000
"""A busy market gate: about 2 000 walk-ups a day (a morning peak and a quiet afternoon)."""

CARDS: dict[str, dict[str, Any]] = {
    "consumer_32gb": {
        "capacity_gb": 32,
        "pe_cycles": 1000,
        "write_amplification": 10.0,
        "source": (
            "consumer TLC/QLC NAND: 100-1 000 P/E cycles (TechRepublic on Micron's QLC cards, 2019: 'QLC is rated for 100 to 1,000 "
            "erase/write cycles'); the upper end taken. Write amplification 10: small synchronous 4 KiB writes on a card "
            "without DRAM cache, an assumption (not measurable from Linux)"
        ),
    },
    "consumer_32gb_pessimistic": {
        "capacity_gb": 32,
        "pe_cycles": 300,
        "write_amplification": 30.0,
        "source": "a cheap QLC card: 300 P/E cycles (inside the 100-1 000 range above) and write amplification 30, both assumptions",
    },
    "industrial_32gb": {
        "capacity_gb": 32,
        "pe_cycles": 30000,
        "write_amplification": 10.0,
        "source": (
            "industrial pSLC microSD: 30 000-100 000 P/E cycles (first-hk.com, 'Understanding pSLC lifespan'); the lower end "
            "taken, same write amplification as the consumer card"
        ),
    },
}


def card_life_years(
    bytes_per_screening: float, idle_bytes_per_hour: float = 0.0, screenings_per_day: int = SCREENINGS_PER_DAY
) -> dict[str, Any]:
    """Return per card: the host bytes it can take (capacity x P/E / write amplification) and the years at this rate.

    A day is ``screenings_per_day`` screenings plus 24 hours of the idle (time-driven) writes.
    """
    per_day_bytes = bytes_per_screening * screenings_per_day + idle_bytes_per_hour * 24
    out: dict[str, Any] = {"screenings_per_day": screenings_per_day, "host_bytes_per_day": round(per_day_bytes)}
    for name, card in CARDS.items():
        host_tbw = card["capacity_gb"] * 1e9 * card["pe_cycles"] / card["write_amplification"]
        out[name] = {
            "host_bytes_endurance": host_tbw,
            "years": round(host_tbw / per_day_bytes / 365.25, 1) if per_day_bytes > 0 else None,
            **{k: card[k] for k in ("capacity_gb", "pe_cycles", "write_amplification")},
        }
    return out


def _start_broker(work: Path) -> tuple[subprocess.Popen[bytes] | None, str | None]:
    from bench.outbox import _start_mosquitto
    from tests.support.broker import free_port

    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        return None, None
    port = free_port()
    return _start_mosquitto(work, port), f"mqtt://127.0.0.1:{port}"


def _write_bytes(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/io").read_text()
    except OSError:
        return None
    m = re.search(r"^write_bytes:\s*(\d+)", text, re.M)
    return int(m.group(1)) if m else None


def _category(path: str) -> str:
    name = Path(path).name
    if "/crops/" in path:
        return "crops"
    if name.startswith("seen.sqlite3"):
        return "codes_replay_memory"
    for suffix, label in (("-wal", "events_wal"), ("-shm", "events_shm"), ("-journal", "events_journal")):
        if name == f"events.sqlite3{suffix}":
            return label
    if name == "events.sqlite3":
        return "events_main_checkpoint"
    if name.startswith(".status.json"):
        return "runtime_status_file"  # station.ops.runtime, rewritten every STATUS_PERIOD_S
    return "other:" + name


_STRACE_LINE = re.compile(r"^(\d+)\s+(\d+\.\d+)\s+(\w+)\((\d+)<([^>]*)>.*\)\s+=\s+(-?\d+)")


class Card:
    """An ext4 file system on a loop device (an image in ``work``) as the data directory: what reaches the "card".

    ``/sys/fs/ext4/<dev>/session_write_kbytes`` counts every byte the file system sent to its device
    since it was mounted: data, metadata and the ext4 journal (jbd2 writes, which no process's
    ``/proc/<pid>/io`` shows). ``syncfs`` before each reading makes delayed writeback count where
    it belongs. Needs root, ``mkfs.ext4`` and loop devices; otherwise the data directory is a plain one.
    """

    def __init__(self, work: Path, size_mb: int = 512, options: str = "noatime") -> None:
        self.image = work / "card.img"
        self.mountpoint = work / "card"
        with open(self.image, "wb") as f:
            f.truncate(size_mb << 20)
        # Inode tables and journal written now: lazy init would write them in the background during the run.
        subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", str(self.image)], check=True, capture_output=True
        )
        self.mountpoint.mkdir()
        # noatime: what Raspberry Pi OS puts in its fstab for the root file system.
        subprocess.run(["mount", "-o", f"loop,errors=remount-ro,{options}", str(self.image), str(self.mountpoint)], check=True)
        source = subprocess.run(["findmnt", "-no", "SOURCE", str(self.mountpoint)], capture_output=True, text=True).stdout.strip()
        self.stat = Path("/sys/fs/ext4") / Path(source).name / "session_write_kbytes"

    @staticmethod
    def possible() -> bool:
        """Return whether a card of its own can be mounted here."""
        return os.geteuid() == 0 and all(shutil.which(t) for t in ("mkfs.ext4", "mount", "umount", "findmnt"))

    def written_bytes(self) -> int:
        """Flush the file system, then return the bytes it has sent to its device since mounted."""
        fd = os.open(self.mountpoint, os.O_RDONLY)
        try:
            if ctypes.CDLL(None, use_errno=True).syncfs(fd) != 0:  # os.syncfs only from Python 3.12
                raise OSError(ctypes.get_errno(), "syncfs failed")
        finally:
            os.close(fd)
        return int(self.stat.read_text()) * 1024

    def close(self) -> None:
        """Unmount the card."""
        subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True)


STEADY_FROM = 90
"""First decision of the steady window: past the first WAL checkpoint (~1 000 frames, ~13 a screening).

Until then the WAL file grows, and every commit also costs ext4 a journal commit for the new
blocks; afterwards SQLite overwrites the WAL from its start and ``fdatasync`` writes the data only.
"""

IDLE_S = 30.0
"""How long the station is watched idle after its last person (time-driven writes: bounds, retention, status)."""


def run_once(
    people: int,
    mqtt: bool,
    *,
    strace: bool,
    work: Path,
    source: Path = ROOT,
    config: str = "",
    steady_from: int = 3,
    mount_options: str = "noatime",
) -> dict[str, Any]:
    """Run one demo from the code at ``source`` (with ``config`` as its TOML) and return its steady-state and idle write figures."""
    card = Card(work, options=mount_options) if Card.possible() and not strace else None
    data = (card.mountpoint if card else work) / ("data-strace" if strace else "data")
    broker, url = _start_broker(work) if mqtt else (None, None)
    if mqtt and url is None:
        return {"skipped": "mosquitto not installed"}
    cmd = [sys.executable, "-m", "station.cli.station_main", "demo", "--fast", "--json", "--people", str(people), "--data-dir", str(data)]
    if url:
        cmd += ["--mqtt", url]
    if not strace:
        cmd.append("--keep-running")  # watched idle after the last person, then SIGINT
    trace = work / "strace.txt"
    if strace:
        cmd = ["strace", "-f", "-qq", "-ttt", "-y", "-e", "trace=write,pwrite64,writev,pwritev,fsync,fdatasync", "-o", str(trace), *cmd]
    # As under systemd (RuntimeDirectory=): the status file on tmpfs, not on the card.
    runtime = Path(tempfile.mkdtemp(prefix="card-wear-run-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    config_file = work / "station.toml"
    if config:
        config_file.write_text(config)
    env = dict(os.environ, PYTHONPATH=str(source), CHECKPOINT_CONFIG=str(config_file), RUNTIME_DIRECTORY=str(runtime))
    proc = subprocess.Popen(cmd, cwd=source, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    decisions: list[tuple[float, int | None, int]] = []
    card_marks: dict[int, int] = {}  # decision number -> the card's bytes written (after syncfs)
    log_bytes = [0]
    pid_box: dict[str, int] = {}

    def target_pid() -> int:
        if not strace:
            return proc.pid
        if "pid" not in pid_box:  # strace's child: the python process
            out = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
            if out:
                pid_box["pid"] = int(out[0])
        return pid_box.get("pid", proc.pid)

    def read_out() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("{"):
                decisions.append((time.time(), _write_bytes(target_pid()), log_bytes[0]))
                if card is not None and len(decisions) in (steady_from, people):  # the steady window's ends
                    card_marks[len(decisions)] = card.written_bytes()

    def read_err() -> None:  # the daemon's log lines: on the box they go to journald (persistent: on the card)
        assert proc.stderr is not None
        for line in proc.stderr:
            log_bytes[0] += len(line.encode())

    readers = [threading.Thread(target=fn, daemon=True) for fn in (read_out, read_err)]
    for t in readers:
        t.start()
    idle: dict[str, float] = {}
    try:
        deadline = time.monotonic() + 60 + 20 * people
        while len(decisions) < people and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        if not strace and proc.poll() is None:
            time.sleep(5.0)  # the last person's gate result, crops and outbox settle
            w0, l0, t0 = _write_bytes(proc.pid), log_bytes[0], time.monotonic()
            time.sleep(IDLE_S)
            w1, l1, t1 = _write_bytes(proc.pid), log_bytes[0], time.monotonic()
            if w0 is not None and w1 is not None:
                idle = {
                    "seconds": round(t1 - t0, 1),
                    "write_bytes_per_hour": round((w1 - w0) / (t1 - t0) * 3600),
                    "log_bytes_per_hour": round((l1 - l0) / (t1 - t0) * 3600),
                }
            proc.send_signal(2)  # SIGINT: the demo stops cleanly
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for t in readers:
            t.join(5)
        if broker is not None:
            broker.terminate()
            broker.wait(10)
        shutil.rmtree(runtime, ignore_errors=True)
        if card is not None:
            card.close()
    steady = decisions[steady_from - 1 :]
    result: dict[str, Any] = {
        "mqtt": mqtt,
        "config": config,
        "people": people,
        "decisions": len(decisions),
        "steady_decisions": max(0, len(steady) - 1),
    }
    if len(steady) < 3:
        result["error"] = "too few decisions for a steady state"
        return result
    n = len(steady) - 1
    result["log_bytes_per_screening"] = round((steady[-1][2] - steady[0][2]) / n)
    if not strace:
        counts = [b for _, b, _ in steady if b is not None]
        per = [(b2 - b1) for b1, b2 in zip(counts, counts[1:], strict=False)]
        result["write_bytes_per_screening"] = round((counts[-1] - counts[0]) / (len(counts) - 1))
        result["write_bytes_per_screening_median"] = round(statistics.median(per))
        result["idle"] = idle
        if steady_from in card_marks and len(decisions) in card_marks and len(decisions) > steady_from:
            # ext4 data + metadata + journal between the window's first and last decision, per decision.
            grew = card_marks[len(decisions)] - card_marks[steady_from]
            result["card_bytes_per_screening"] = round(grew / (len(decisions) - steady_from))
        return result
    t0, t1 = steady[0][0], steady[-1][0]
    by_bytes: Counter[str] = Counter()
    by_fsync: Counter[str] = Counter()
    for line in trace.read_text(errors="replace").splitlines():
        m = _STRACE_LINE.match(line)
        if not m:
            continue
        _pid, ts, call, _fd, path, ret = m.groups()
        if not (t0 < float(ts) <= t1) or not path.startswith(str(data)):
            continue
        cat = _category(path)
        if call in ("fsync", "fdatasync"):
            by_fsync[cat] += 1
        elif int(ret) > 0:
            by_bytes[cat] += int(ret)
    result["by_file_bytes_per_screening"] = {k: round(v / n) for k, v in by_bytes.most_common()}
    result["fsyncs_per_screening"] = {k: round(v / n, 2) for k, v in by_fsync.most_common()}
    result["syscall_bytes_per_screening"] = round(sum(by_bytes.values()) / n)
    return result


def measure(
    people: int,
    *,
    with_strace: bool = True,
    label: str = "",
    source: Path = ROOT,
    steady_from: int = STEADY_FROM,
    strace_people: int = 24,
    mount_options: str = "noatime",
    without_broker: bool = True,
    config: str = "",
) -> dict[str, Any]:
    """Run the demo with and without the broker (and once under strace with it); return the figures and card years."""
    out: dict[str, Any] = {
        "label": label,
        "source": str(source),
        "people": people,
        "steady_from_decision": steady_from,
        "mount_options": mount_options,
        "config": config,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    runs = {}
    # The same lane twice: as shipped, and without the broker (no outbox deletes on PUBACK).
    for name, mqtt in (("mqtt", True), ("no_mqtt", False))[: 2 if without_broker else 1]:
        with tempfile.TemporaryDirectory(prefix="card-wear-", dir=os.environ.get("CARD_WEAR_DIR")) as tmp:
            runs[name] = run_once(
                people,
                mqtt,
                strace=False,
                work=Path(tmp),
                source=source,
                steady_from=steady_from,
                mount_options=mount_options,
                config=config,
            )
    if with_strace and shutil.which("strace"):
        with tempfile.TemporaryDirectory(prefix="card-wear-", dir=os.environ.get("CARD_WEAR_DIR")) as tmp:
            runs["mqtt_strace"] = run_once(strace_people, True, strace=True, work=Path(tmp), source=source)
    out["runs"] = runs
    main_run = runs["mqtt"]
    per = main_run.get("card_bytes_per_screening", main_run.get("write_bytes_per_screening"))
    if per is not None:
        out["card_life_from"] = "card_bytes_per_screening" if "card_bytes_per_screening" in main_run else "write_bytes_per_screening"
        out["write_bytes_per_screening"] = main_run.get("write_bytes_per_screening")
        out["card_bytes_per_screening"] = main_run.get("card_bytes_per_screening")
        idle_per_hour = main_run.get("idle", {}).get("write_bytes_per_hour", 0)
        out["idle_write_bytes_per_hour"] = idle_per_hour
        out["card_life"] = card_life_years(per, idle_per_hour)
        out["card_life_with_logs"] = card_life_years(
            per + main_run.get("log_bytes_per_screening", 0), idle_per_hour + main_run.get("idle", {}).get("log_bytes_per_hour", 0)
        )
        out["cards_assumed"] = CARDS
    for key in ("write_bytes_per_screening", "card_bytes_per_screening"):
        with_sync, without = main_run.get(key), runs.get("no_mqtt", {}).get(key)
        if with_sync is not None and without is not None:
            out[f"sync_share_{key}"] = with_sync - without  # outbox deletes on PUBACK (and attempt counts)
    return out


def main() -> None:
    """Run the measurement and print (or write) its JSON."""
    ap = argparse.ArgumentParser(prog="python -m bench.card_wear", description=__doc__.splitlines()[0])
    ap.add_argument("--people", type=int, default=120, help="people walking up per run (default 120)")
    ap.add_argument("--steady-from", type=int, default=STEADY_FROM, help=f"first decision of the steady window (default {STEADY_FROM})")
    ap.add_argument("--strace-people", type=int, default=24, help="people in the run under strace (default 24)")
    ap.add_argument("--mount-options", default="noatime", help="ext4 options of the card (default noatime; try noatime,lazytime)")
    ap.add_argument("--with-broker-only", action="store_true", help="skip the run without the broker")
    ap.add_argument("--config", type=Path, default=None, help="the station's TOML for the runs (default: the schema's defaults)")
    ap.add_argument("--json", action="store_true", help="print the JSON (default: a short summary)")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    ap.add_argument("--no-strace", action="store_true", help="skip the per-file run under strace")
    ap.add_argument("--label", default="", help="a name for this configuration (before/after)")
    ap.add_argument(
        "--source", type=Path, default=ROOT, help="run the station from this source tree (e.g. an older commit's `git archive`)"
    )
    args = ap.parse_args()
    result = measure(
        args.people,
        with_strace=not args.no_strace,
        label=args.label,
        source=args.source.resolve(),
        steady_from=args.steady_from,
        strace_people=args.strace_people,
        mount_options=args.mount_options,
        without_broker=not args.with_broker_only,
        config=args.config.read_text() if args.config else "",
    )
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    if args.json:
        print(text)
    else:
        life = result.get("card_life", {})
        print(
            f"{result.get('write_bytes_per_screening')} B/screening; "
            f"consumer {life.get('consumer_32gb', {}).get('years')} y, industrial {life.get('industrial_32gb', {}).get('years')} y"
        )


if __name__ == "__main__":
    main()
