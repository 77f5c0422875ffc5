"""Whether the event store's medium takes writes: the current storage fault, and when it cleared.

An SD card that wears out goes read-only (the kernel remounts ext4 ``errors=remount-ro``), a full
card refuses with ``ENOSPC``. SQLite reports both as a failed write (``SQLITE_IOERR_*`` for a
read-only file system, ``SQLITE_FULL`` for a full one) without the errno, so the first failure of a
fault asks the kernel itself: one probe file in the data directory, written and removed (only while
the medium refuses writes, so it adds no wear in normal running). The answer is the fault's kind:

``read_only`` (EROFS), ``full`` (ENOSPC, EDQUOT), ``file_too_large`` (EFBIG), ``io_error`` (anything
else: EIO from a dying card). ``station.app`` names a fault as a degradation of module ``store``,
``state/storage`` carries it on MQTT and the operator display shows it.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("station.store.health")

OK = "ok"

KIND_BY_ERRNO = {
    errno.EROFS: "read_only",
    errno.ENOSPC: "full",
    errno.EDQUOT: "full",
    errno.EFBIG: "file_too_large",
}
"""Kernel errors the probe names; any other failure is ``io_error``."""

# SQLite's primary result codes (sqlite3.h) that mean the medium refused, not that the SQL was wrong.
_SQLITE_READONLY = 8
_SQLITE_IOERR = 10
_SQLITE_FULL = 13
_SQLITE_CANTOPEN = 14
STORAGE_SQLITE_CODES = frozenset({_SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_FULL, _SQLITE_CANTOPEN})

PROBE_NAME = ".storage-probe"
PROBE_BYTES = 4096  # one page: a full medium refuses it (an empty file may still fit in a free inode)
PROBE_EVERY_S = 10.0  # while a fault lasts, the kernel is asked again at most this often


def is_storage_error(exc: BaseException) -> bool:
    """Return True when ``exc`` says the medium refused a write (not a constraint, not a bug)."""
    if isinstance(exc, OSError):
        return True
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is None:  # a connection closed under us after a fault, or an old SQLite without codes
            return isinstance(exc, sqlite3.OperationalError)
        return (int(code) & 0xFF) in STORAGE_SQLITE_CODES
    return False


def probe(directory: Path) -> int | None:
    """Write one page to a probe file in ``directory`` and remove it; return the errno that refused it, or None."""
    path = Path(directory) / PROBE_NAME
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"\0" * PROBE_BYTES)
        finally:
            os.close(fd)
    except OSError as exc:
        return exc.errno
    finally:
        try:
            path.unlink()
        except OSError:  # nothing was created (read-only), or it cannot be removed now: the next probe truncates it
            pass
    return None


def kind_of(exc: BaseException, probed: int | None) -> str:
    """Return the fault's kind from the probe's errno, else from the SQLite result code."""
    if probed is not None:
        return KIND_BY_ERRNO.get(probed, "io_error")
    if isinstance(exc, OSError) and exc.errno in KIND_BY_ERRNO:
        return KIND_BY_ERRNO[exc.errno]
    code = int(getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF
    if code == _SQLITE_FULL:
        return "full"
    if code == _SQLITE_READONLY:
        return "read_only"
    return "io_error"


class StorageHealth:
    """The store's medium as its writes found it: ``ok`` or the kind of the current fault, since when, how often."""

    def __init__(
        self,
        directory: Path,
        *,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        prober: Callable[[Path], int | None] = probe,
    ) -> None:
        """Watch writes to the medium holding ``directory``."""
        self.directory = Path(directory)
        self._wall = wall
        self._monotonic = monotonic
        self._probe = prober
        self._lock = threading.Lock()
        self.state = OK
        self.error: str | None = None
        self.since_ts: float | None = None  # wall time the current fault began
        self._since_mono: float | None = None
        self._probed_t: float | None = None
        self.failed_writes = 0  # over the whole run
        self.faults = 0  # fault episodes begun
        self.recovered = 0  # fault episodes that ended with a write going through

    def failed(self, exc: BaseException) -> str:
        """Note one refused write; return the fault's kind (probing the kernel at most every :data:`PROBE_EVERY_S`)."""
        now = self._monotonic()
        with self._lock:
            self.failed_writes += 1
            first = self.state == OK
            due = first or self._probed_t is None or now - self._probed_t >= PROBE_EVERY_S
        probed = self._probe(self.directory) if due else None
        with self._lock:
            if due:
                self._probed_t = now
                kind = kind_of(exc, probed)
            else:
                kind = self.state if self.state != OK else kind_of(exc, None)
            changed = kind != self.state
            self.state = kind
            self.error = f"{type(exc).__name__}: {exc}"[:300]
            if first:
                self.faults += 1
                self.since_ts = self._wall()
                self._since_mono = now
        if changed:
            code = errno.errorcode.get(probed or 0)
            log.error("storage refuses writes kind=%s errno=%s directory=%s error=%s", kind, code, self.directory, self.error)
        return kind

    def succeeded(self) -> None:
        """Note a write that went through: a fault in progress is over."""
        if self.state == OK:  # the common case, without the lock: a plain attribute read
            return
        with self._lock:
            if self.state == OK:
                return
            kind, lasted = self.state, self._monotonic() - (self._since_mono or self._monotonic())
            self.state, self.error, self.since_ts, self._since_mono, self._probed_t = OK, None, None, None, None
            self.recovered += 1
        log.warning("storage takes writes again after %s lasting_s=%.1f directory=%s", kind, lasted, self.directory)

    def snapshot(self) -> dict[str, Any]:
        """Return the state, the last error, since when (unix time), refused writes and fault episodes."""
        with self._lock:
            return {
                "state": self.state,
                "error": self.error,
                "since_ts": self.since_ts,
                "failed_writes": self.failed_writes,
                "faults": self.faults,
                "recovered": self.recovered,
            }
