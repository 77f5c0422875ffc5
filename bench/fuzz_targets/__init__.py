"""Fuzz targets: each module here defines ``TARGETS``, a list of :class:`bench.fuzz_targets.base.Target`.

A target pairs a structure-aware Hypothesis strategy with a call that must return a verdict label
(a reason string) for *any* value the strategy draws, and never raise. ``python -m bench.fuzz``
runs each ≥ 100 000 times; ``tests/test_fuzz_targets.py`` runs each a few hundred times in the suite.
"""

from __future__ import annotations

import importlib
import pkgutil

from bench.fuzz_targets.base import Target


def all_targets() -> list[Target]:
    """Every target of every module in this package, in module then definition order."""
    found: list[Target] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        found.extend(getattr(module, "TARGETS", []))
    names = [t.name for t in found]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise RuntimeError(f"fuzz target names used twice: {sorted(duplicates)}")
    return found
