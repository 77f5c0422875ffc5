"""What a fuzz target is."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hypothesis.strategies import SearchStrategy


@dataclass(frozen=True)
class Target:
    """A parser or guard under fuzz: ``call(value)`` returns a verdict label and must never raise."""

    name: str
    description: str
    strategy: Callable[[], SearchStrategy[Any]]  # built lazily: some need keys or files made once
    call: Callable[[Any], str]
    setup: Callable[[], None] | None = None  # once before the run (keys, temp dirs)
    teardown: Callable[[], None] | None = None
    tags: tuple[str, ...] = field(default=())
