"""Logging set-up: one line per record, ``key=value`` pairs in the message, to stderr.

Under systemd stderr goes to the journal, which adds its own timestamps and rotates on its own —
no log files on the SD card.
"""

from __future__ import annotations

import logging
import os
import sys


def configure(level: str = "INFO", file: str = "") -> None:
    under_journal = bool(os.environ.get("JOURNAL_STREAM"))
    fmt = "%(levelname)s %(name)s %(message)s" if under_journal else "%(asctime)s %(levelname)s %(name)s %(message)s"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    if file:
        # For hosts without journald (logging.file); WatchedFileHandler reopens after logrotate moves
        # the file. Always timestamped: a file has no journal to add them.
        # A from-import: `import logging.handlers` here would make `logging` a local name of this
        # function and break every use of it above (UnboundLocalError).
        from logging.handlers import WatchedFileHandler

        fh = WatchedFileHandler(file, encoding="utf-8")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        root.handlers.append(fh)
    root.setLevel(level)
