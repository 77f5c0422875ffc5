"""Logging set-up: one line per record, ``key=value`` pairs in the message, to stderr.

Under systemd stderr goes to the journal, which adds its own timestamps and rotates on its own —
no log files on the SD card.
"""

from __future__ import annotations

import logging
import os
import sys


def configure(level: str = "INFO") -> None:
    under_journal = bool(os.environ.get("JOURNAL_STREAM"))
    fmt = "%(levelname)s %(name)s %(message)s" if under_journal else "%(asctime)s %(levelname)s %(name)s %(message)s"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
