"""What the centre's ``resend`` costs a station: bytes kept, record() time, a re-send's time, a screening's wait.

``python -m bench.resend [--records 5000] [--json] [--out F]`` (Pi-class: ``taskset -c 0 python -m bench.resend``)

Real SQLite store on this machine's disk (WAL, ``synchronous=FULL``), real screenings (tests/support/events.py):

- ``kept_bytes_per_record``: the ``seq_messages`` table and its indexes (``dbstat``) per record written;
- ``record_ms``: ``record()`` median and p99, with the messages kept and, as the baseline, with keeping switched
  off (``outbox._keep`` replaced by a no-op in this process: the release without re-sends);
- ``requeue``: :func:`station.store.resend.requeue_range` over ``--records`` numbers (all delivered first):
  total time, messages re-queued, per-transaction median and max (a write transaction holds the store's lock:
  that is the longest a screening can wait behind it);
- ``record_during_requeue_ms``: ``record()`` every 50 ms in one thread while another re-queues ``--records``
  numbers and acknowledges them 256 a transaction (as the pump settles them), again and again — far beyond
  the station's 10 re-sends a minute — against the same loop with no re-send running (median, p99, max).

Medians and ratios: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def _ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median": round(statistics.median(values) * 1000, 3),
        "p99": round(ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))] * 1000, 3),
        "max": round(max(values) * 1000, 3),
        "n": len(values),
    }


def _store(path: Path) -> Any:
    from station.store.events import SqliteEventStore

    store = SqliteEventStore(path, station_id="st-01", site="gate-a")
    store.begin_session()
    return store


def _write(store: Any, n: int, first: int = 0) -> list[float]:
    from tests.support.events import make_event

    times = []
    for i in range(first, first + n):
        event = make_event(i, alarm=i % 20 == 0)
        t = time.perf_counter()
        store.record(event)
        times.append(time.perf_counter() - t)
    return times


def _deliver(store: Any, chunk: int = 10**9) -> None:
    """Acknowledge every pending row, ``chunk`` rows a transaction (the pump settles at most 256 at once)."""
    with sqlite3.connect(store.path) as conn:  # read beside the store (its lock is what the screenings wait on)
        ids = [r[0] for r in conn.execute("SELECT id FROM outbox")]
    for i in range(0, len(ids), chunk):
        store.outbox_ack_many(ids[i : i + chunk])


def _kept_bytes(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name LIKE 'seq_messages%'").fetchone()[0])


def run(records: int, workdir: Path) -> dict[str, Any]:
    """Run every part and return the figures."""
    from station.store import outbox
    from station.store.resend import requeue_range

    kept = _store(workdir / "kept.sqlite3")
    kept_times = _write(kept, records)
    kept_bytes = _kept_bytes(workdir / "kept.sqlite3")

    real_keep = outbox._keep
    outbox._keep = lambda *a, **k: None  # the baseline: a release that keeps nothing
    try:
        plain = _store(workdir / "plain.sqlite3")
        plain_times = _write(plain, records)
        plain.close()
    finally:
        outbox._keep = real_keep

    # One re-send of every number, transaction by transaction (the store's write lock is what a screening waits on).
    _deliver(kept)
    tx_times: list[float] = []
    real_write = kept.write_transaction

    def timed(fn: Any) -> Any:
        t = time.perf_counter()
        try:
            return real_write(fn)
        finally:
            tx_times.append(time.perf_counter() - t)

    kept.write_transaction = timed
    t0 = time.perf_counter()
    result = requeue_range(kept, 1, records)
    total = time.perf_counter() - t0
    kept.write_transaction = real_write

    # A screening every 50 ms, with and without re-sends running beside it.
    def screenings(seconds: float, first: int) -> list[float]:
        from tests.support.events import make_event

        times, i, end = [], first, time.monotonic() + seconds
        while time.monotonic() < end:
            t = time.perf_counter()
            kept.record(make_event(i))
            times.append(time.perf_counter() - t)
            i += 1
            time.sleep(0.05)
        return times

    _deliver(kept)
    quiet = screenings(5.0, 10**6)
    _deliver(kept)
    stop = threading.Event()
    resends = [0]

    def resend_loop() -> None:
        while not stop.is_set():
            requeue_range(kept, 1, records)
            resends[0] += 1
            _deliver(kept, 256)  # delivered as the pump settles them, so each pass re-queues everything again

    worker = threading.Thread(target=resend_loop, daemon=True)
    worker.start()
    busy = screenings(5.0, 2 * 10**6)
    stop.set()
    worker.join(60)
    kept.close()
    return {
        "records": records,
        "kept_bytes_per_record": round(kept_bytes / records, 1),
        "record_ms": {"kept": _ms(kept_times), "baseline_not_kept": _ms(plain_times)},
        "record_median_ratio_kept_to_baseline": round(statistics.median(kept_times) / statistics.median(plain_times), 3),
        "requeue": {
            "numbers": records,
            "requeued": result.requeued,
            "not_found": result.not_found,
            "total_ms": round(total * 1000, 1),
            "transaction_ms": _ms(tx_times),
        },
        "record_during_requeue_ms": {"quiet": _ms(quiet), "requeue_running": _ms(busy), "requeue_passes": resends[0]},
    }


def main(argv: list[str] | None = None) -> int:
    """Parse the options, run, print (and write) the JSON."""
    ap = argparse.ArgumentParser(prog="python -m bench.resend", description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=5000, help="records written, then re-sent (one resend's most: 5000)")
    ap.add_argument("--json", action="store_true", help="print JSON only")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-resend-", dir="/var/tmp") as tmp:
        figures = run(args.records, Path(tmp))
    text = json.dumps(figures, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text if args.json else f"bench.resend\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
