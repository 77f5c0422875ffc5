"""Logging set-up: one line per record to stderr, text with ``key=value`` fields or JSON.

Fields given with ``extra=`` are printed after the message (text) or as keys (``logging.format =
"json"``, for journald or Loki).

Under systemd stderr goes to the journal, which adds its own timestamps and rotates on its own —
no log files on the SD card.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

# The attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """Return the ``extra=`` fields of a record, in the order they were given."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")}


def _text_value(value: Any) -> str:
    text = str(value)
    # Quote what would break key=value parsing; a hostile value cannot start a new line or field.
    if not text or any(c.isspace() or c in '"=' for c in text) or not text.isprintable():
        return json.dumps(text, ensure_ascii=False)
    return text


def _flat(fields: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Return nested dicts as dotted keys: ``thermal={"event": "link_up"}`` → ``thermal.event=link_up``."""
    out: list[tuple[str, Any]] = []
    for key, value in fields.items():
        if isinstance(value, dict):
            out.extend(_flat(value, f"{prefix}{key}."))
        else:
            out.append((f"{prefix}{key}", value))
    return out


class KeyValueFormatter(logging.Formatter):
    """The usual one-line text, with the ``extra=`` fields appended as ``key=value``."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as one text line (plus any traceback below it)."""
        line = super().format(record)
        fields = extra_fields(record)
        if not fields:
            return line
        head, sep, tail = line.partition("\n")  # keep a traceback below the fields
        head += "".join(f" {k}={_text_value(v)}" for k, v in _flat(fields))
        return head + sep + tail


class JsonFormatter(logging.Formatter):
    """One JSON object per line (journald, Loki): ts, level, logger, msg, the extra fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as one JSON object (a traceback goes in ``exc``, never on a new line)."""
        doc: dict[str, Any] = {
            "ts": round(record.created, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            doc.setdefault(key, value)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


def configure(level: str = "INFO", file: str = "", fmt: str = "text") -> None:
    """Send every record to stderr (and ``file``) as text or JSON lines."""
    under_journal = bool(os.environ.get("JOURNAL_STREAM"))
    text_fmt = "%(levelname)s %(name)s %(message)s" if under_journal else "%(asctime)s %(levelname)s %(name)s %(message)s"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter(text_fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    if file:
        # For hosts without journald (logging.file); WatchedFileHandler reopens after logrotate moves
        # the file. Always timestamped: a file has no journal to add them.
        # A from-import: `import logging.handlers` here would make `logging` a local name of this
        # function and break every use of it above (UnboundLocalError).
        from logging.handlers import WatchedFileHandler

        fh = WatchedFileHandler(file, encoding="utf-8")
        fh.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        root.handlers.append(fh)
    root.setLevel(level)
