"""Structure-aware fuzzing of every parser and guard that takes untrusted input.

    python -m bench.fuzz --json [--cases 100000] [--target NAME ...] [--seed 0]

For each target (``bench/fuzz_targets/``) Hypothesis draws ``--cases`` values from the target's
structure-aware strategy (generation only: no shrinking, no example database) and calls it; the
result counts the cases run, the verdict labels seen and the *uncaught exceptions*, which must be 0.
An exception is recorded (type, message, the first few reprs of the inputs) and the run goes on.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, seed, settings

from bench.fuzz_targets import all_targets
from bench.fuzz_targets.base import Target


def run_target(target: Target, cases: int, run_seed: int) -> dict[str, Any]:
    verdicts: Counter[str] = Counter()
    uncaught: Counter[str] = Counter()
    samples: list[dict[str, str]] = []
    ran = 0
    if target.setup is not None:
        target.setup()
    strategy = target.strategy()

    @seed(run_seed)
    @settings(
        max_examples=cases,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )
    @given(strategy)
    def case(value: Any) -> None:
        nonlocal ran
        ran += 1
        try:
            verdicts[str(target.call(value))[:80]] += 1
        except Exception as exc:  # noqa: BLE001 - the finding itself: counted and kept, the run goes on
            kind = f"{type(exc).__name__}: {str(exc)[:120]}"
            uncaught[kind] += 1
            if len(samples) < 5:
                samples.append(
                    {"error": kind, "input": repr(value)[:400], "where": "".join(traceback.format_tb(exc.__traceback__)[-2:])[-600:]}
                )

    t0 = time.perf_counter()
    try:
        case()
    finally:
        if target.teardown is not None:
            target.teardown()
    seconds = time.perf_counter() - t0
    return {
        "description": target.description,
        "cases": ran,
        "uncaught": sum(uncaught.values()),
        "uncaught_kinds": dict(uncaught),
        "samples": samples,
        "seconds": round(seconds, 1),
        "cases_per_s": round(ran / seconds, 1) if seconds > 0 else None,
        "verdicts": dict(verdicts.most_common(25)),
        "distinct_verdicts": len(verdicts),
    }


def merge(paths: list[str], out: str) -> int:
    """One report from several runs' JSON (each target from the last file that has it)."""
    runs = [json.loads(Path(p).read_text(encoding="utf-8")) for p in paths]
    targets: dict[str, Any] = {}
    for path, run in zip(paths, runs, strict=True):
        for name, result in run["targets"].items():
            targets[name] = {**result, "run": {"file": os.path.basename(path), "ts": run["ts"], "seed": run["seed"]}}
    report = {
        "bench": "fuzz",
        "merged_from": len(runs),
        "cases_asked": min(r["cases_asked"] for r in runs),
        "python": runs[-1]["python"],
        "machine": runs[-1]["machine"],
        "ts": max(r["ts"] for r in runs),
        "uncaught_total": sum(t["uncaught"] for t in targets.values()),
        "targets": targets,
    }
    text = json.dumps(report, indent=2, ensure_ascii=False)
    if out:
        with open(out, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    print(text)
    return 0 if report["uncaught_total"] == 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=100_000, help="cases per target (default 100000)")
    parser.add_argument("--target", action="append", default=[], help="run only these targets (repeatable)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the JSON result (default: a table)")
    parser.add_argument("--out", default="", help="also write the JSON result to this file")
    parser.add_argument("--list", action="store_true", help="list the targets and exit")
    parser.add_argument(
        "--log", action="store_true", help="keep the product's log lines (default: silenced; hostile input makes them by the thousand)"
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        metavar="RESULT.json",
        default=[],
        help="combine the results of runs made in parallel (one per core) into one report",
    )
    args = parser.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out)
    if not args.log:
        logging.disable(logging.CRITICAL)
    targets = all_targets()
    if args.list:
        for t in targets:
            print(f"{t.name:28s} {t.description}")
        return 0
    if args.target:
        unknown = set(args.target) - {t.name for t in targets}
        if unknown:
            parser.error(f"unknown target(s) {sorted(unknown)}; known: {', '.join(t.name for t in targets)}")
        targets = [t for t in targets if t.name in args.target]
    results: dict[str, Any] = {}
    for target in targets:
        results[target.name] = run_target(target, args.cases, args.seed)
        r = results[target.name]
        print(f"fuzz: {target.name}: {r['cases']} cases, {r['uncaught']} uncaught, {r['seconds']} s", file=sys.stderr, flush=True)
    report = {
        "bench": "fuzz",
        "cases_asked": args.cases,
        "seed": args.seed,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "uncaught_total": sum(r["uncaught"] for r in results.values()),
        "targets": results,
    }
    text = json.dumps(report, indent=2, ensure_ascii=False)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    if args.json:
        print(text)
    else:
        for name, r in results.items():
            print(f"{name:28s} cases={r['cases']:>7} uncaught={r['uncaught']:>3} {r['cases_per_s']}/s verdicts={r['distinct_verdicts']}")
    return 0 if report["uncaught_total"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
