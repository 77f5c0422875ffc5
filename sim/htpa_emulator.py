"""A Heimann HTPA32×32 module on a pseudo-terminal, for tests and the demo.

The device under test opens ``emulator.port`` like any serial port; the emulator answers each query
(``htpa_protocol.QUERY``) with one frame from ``render(now) -> (image °C, die °C)``, paced like the
115200-baud wire. ``silence(seconds)`` makes it ignore queries (a hung module); ``unplug()`` closes the
pty (the DUT's reads fail as with a pulled USB adapter) and ``replug()`` makes a NEW pty, so
``.port`` changes: hand the source a ``port_resolver`` that returns ``emulator.port``.
"""

from __future__ import annotations

import os
import select
import threading
import time
import tty
from collections.abc import Callable

import numpy as np

from drivers.thermal.htpa_protocol import BAUD, BITS_PER_BYTE, QUERY, encode_frame

CHUNK = 256  # bytes written at a time; each chunk is released when it would have left the wire


class HtpaEmulator:
    """The HTPA32×32 module behind a pty: one frame per query, at the link's pace."""

    def __init__(self, render: Callable[[float], tuple[np.ndarray, float]]) -> None:
        self._render = render
        self._lock = threading.Lock()
        self._master: int | None = None
        self._slave: int | None = None
        self.port = ""
        self._open_pty()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="htpa-emulator", daemon=True)
        self._silent_until = 0.0
        self.queries = 0  # queries seen, answered or not
        self.frames_sent = 0

    def start(self) -> None:
        """Start answering queries."""
        self._thread.start()

    def stop(self) -> None:
        """Stop answering and close the pty."""
        self._stop.set()
        self._thread.join(timeout=2.0)
        with self._lock:
            self._close_pty()

    def silence(self, seconds: float) -> None:
        """Ignore queries for ``seconds`` (a hung module; the pty stays open)."""
        with self._lock:
            self._silent_until = time.monotonic() + seconds

    def unplug(self) -> None:
        """Close the pty: the DUT's next read fails as after a USB unplug."""
        with self._lock:
            self._close_pty()

    def replug(self) -> str:
        """Open a new pty (NEW path, see ``.port``) and return its path."""
        with self._lock:
            self._close_pty()
            self._open_pty()
            self._silent_until = 0.0
            return self.port

    def _open_pty(self) -> None:
        master, slave = os.openpty()
        tty.setraw(master)  # the master shares the slave's termios: no echo, no CR/LF mangling
        os.set_blocking(master, False)
        self._master, self._slave = master, slave  # the open slave keeps the pty alive between DUT opens
        self.port = os.ttyname(slave)

    def _close_pty(self) -> None:
        for fd in (self._master, self._slave):
            if fd is not None:
                os.close(fd)
        self._master = self._slave = None

    def _run(self) -> None:
        buf = b""
        while not self._stop.is_set():
            with self._lock:  # the fd cannot be closed (and its number reused) while in use
                master = self._master
                data = b""
                if master is not None:
                    ready, _, _ = select.select([master], [], [], 0.02)
                    try:
                        data = os.read(master, 256) if ready else b""
                    except OSError:  # EIO: no slave open at this instant
                        data = b""
            if master is None:
                buf = b""
                self._stop.wait(0.05)
                continue
            buf += data
            while QUERY in buf:
                buf = buf[buf.index(QUERY) + len(QUERY) :]
                self.queries += 1
                if time.monotonic() < self._silent_until:
                    continue
                img, die = self._render(time.monotonic())
                self._send(master, encode_frame(img, die))
            buf = buf[-(len(QUERY) - 1) :]  # only a query's start can matter

    def _send(self, master: int, frame: bytes) -> None:
        for i in range(0, len(frame), CHUNK):
            with self._lock:
                if self._master != master:  # unplugged mid-frame
                    return
                try:
                    os.write(master, frame[i : i + CHUNK])
                except BlockingIOError:  # nobody reads: the bytes are lost, as on a UART
                    pass
            time.sleep(CHUNK * BITS_PER_BYTE / BAUD)  # the wire's pace, not a wait for a condition
        self.frames_sent += 1
