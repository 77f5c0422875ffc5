"""systemd readiness/status notifications and a watchdog that only pets on real progress.

Stdlib only (modelled on ``waveform80/nobodd: nobodd/systemd.py``; PyPI ``sdnotify`` is unmaintained
and ``systemd-python`` needs libsystemd headers). The protocol is one ``AF_UNIX``/``SOCK_DGRAM``
datagram of newline-separated ``KEY=value`` assignments to ``$NOTIFY_SOCKET`` (a path, or an
abstract socket written ``@name``); see ``sd_notify(3)``.

Everything is a no-op when the process is not run by systemd, so the daemon, the CLI and the
tests share one code path.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, MutableMapping, Sequence

log = logging.getLogger("station.ops.systemd")


class Notifier:
    """Talk to systemd's notification socket (``Type=notify`` services).

    The constructor *pops* ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` from the
    environment: a child process (a helper tool, a subprocess a driver spawns) must not inherit
    them, or it could report READY/WATCHDOG on our behalf and hide a hang — systemd itself
    recommends unsetting them (``sd_notify(3)``, ``unset_environment``). Create exactly one
    Notifier, early, in the main process.
    """

    __slots__ = ("_address", "_failed", "_sock", "_watchdog_usec")

    def __init__(self, environ: MutableMapping[str, str] | None = None) -> None:
        env: MutableMapping[str, str] = os.environ if environ is None else environ
        address = env.pop("NOTIFY_SOCKET", None)
        usec = env.pop("WATCHDOG_USEC", None)
        pid = env.pop("WATCHDOG_PID", None)
        self._address: str | None = None
        self._sock: socket.socket | None = None
        self._watchdog_usec: int | None = None
        self._failed = False

        if address:
            if address[0] == "@":
                self._address = "\0" + address[1:]  # abstract namespace
            elif address[0] == "/":
                self._address = address
            else:
                log.warning("ignoring NOTIFY_SOCKET=%r: neither a path nor an @abstract name", address)
        if self._address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

        if usec is not None:
            # WATCHDOG_PID is set when the variable may have been inherited from a parent: then it
            # is only meant for the process with that PID.
            if pid is not None and pid.strip() != str(os.getpid()):
                log.debug("WATCHDOG_USEC is for pid %s, not us", pid)
            else:
                try:
                    value = int(usec)
                except ValueError:
                    log.warning("ignoring malformed WATCHDOG_USEC=%r", usec)
                else:
                    self._watchdog_usec = value if value > 0 else None

    @property
    def enabled(self) -> bool:
        """Return whether this process runs under systemd with a notification socket."""
        return self._sock is not None

    def notify(self, *assignments: str) -> bool:
        """Send one datagram with the given ``KEY=value`` lines; return False if it was not sent.

        A failure is logged, never raised: losing a STATUS line must not take the gate down (a
        missed WATCHDOG=1 will be noticed by systemd anyway, which is the point of a watchdog).
        """
        if self._sock is None or self._address is None or not assignments:
            return False
        data = "\n".join(assignments).encode("utf-8")
        try:
            self._sock.sendto(data, self._address)
        except OSError as exc:
            # Log the first failure loudly and then quietly: the watchdog ping runs every few s.
            (log.debug if self._failed else log.warning)("sd_notify %r failed: %s", assignments, exc)
            self._failed = True
            return False
        self._failed = False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Tell systemd that startup is complete (config, DB, devices and model warm-up are done)."""
        if status is None:
            return self.notify("READY=1")
        return self.notify("READY=1", _status_line(status))

    def status(self, text: str) -> bool:
        """Set the one-line state shown by ``systemctl status``."""
        return self.notify(_status_line(text))

    def stopping(self) -> bool:
        """Tell systemd that the service is shutting down."""
        return self.notify("STOPPING=1")

    def reloading(self) -> bool:
        """Tell systemd that a configuration reload begins; call :meth:`ready` when it is done.

        ``MONOTONIC_USEC`` lets systemd ≥ 253 order the reload against the READY that ends it
        (required for ``Type=notify-reload``, ignored by older versions).
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for ``seconds`` more to finish starting or stopping (e.g. a slow model load)."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1_000_000))}")

    def watchdog_ping(self) -> bool:
        """Pet the watchdog unconditionally (use :class:`WatchdogGate`, which pets only on progress)."""
        return self.notify("WATCHDOG=1")

    def watchdog_period(self) -> float | None:
        """Return ``WatchdogSec=`` in seconds, or None when the watchdog is off (or meant for another pid)."""
        if self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 1_000_000

    def close(self) -> None:
        """Close the notification socket; later notifications are no-ops."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _status_line(text: str) -> str:
    # A newline would start a new assignment in the datagram; keep STATUS on one line.
    return "STATUS=" + " ".join(text.splitlines())


class WatchdogGate:
    """Pet the systemd watchdog only while the screening loop is making progress.

    A timer thread that pings unconditionally hides exactly the hangs the watchdog exists for
    (a stuck serial read, a detector that never returns). Instead the pipeline calls
    :meth:`progress` every time its loop completes a cycle (including idle cycles with no
    person), and some timer calls :meth:`maybe_ping` often (every second or so). A ping is sent
    only if progress was reported within ``stale_after`` seconds and every extra liveness
    ``check`` passes, so a hung loop stops the pings and systemd restarts the service after at
    most ``stale_after + WatchdogSec``.

    Defaults: ``stale_after`` = half the watchdog period, pings at most every quarter period
    (systemd recommends pinging at half the period; a quarter leaves room for a late timer).
    """

    def __init__(
        self,
        notifier: Notifier,
        *,
        clock: Callable[[], float] = time.monotonic,
        stale_after: float | None = None,
        interval: float | None = None,
        checks: Sequence[tuple[str, Callable[[], bool]]] = (),
    ) -> None:
        self._notifier = notifier
        self._clock = clock
        self.period = notifier.watchdog_period()
        self.stale_after = stale_after if stale_after is not None else (self.period / 2 if self.period else 0.0)
        self.interval = interval if interval is not None else (self.period / 4 if self.period else 0.0)
        self._checks = list(checks)
        self._lock = threading.Lock()
        self._last_progress: float | None = None
        self._last_ping: float | None = None
        self._withholding: str | None = None  # why pings stopped, logged once per episode
        self.pings = 0

    @property
    def enabled(self) -> bool:
        """Return whether systemd has armed a watchdog for this process."""
        return self.period is not None and self._notifier.enabled

    def progress(self, now: float | None = None) -> None:
        """Record that the screening loop completed a cycle; cheap, call it every iteration."""
        t = self._clock() if now is None else now
        with self._lock:
            self._last_progress = t

    def maybe_ping(self, now: float | None = None) -> bool:
        """Send WATCHDOG=1 if the loop is alive and a ping is due; return True if sent."""
        if not self.enabled:
            return False
        t = self._clock() if now is None else now
        with self._lock:
            last_progress, last_ping = self._last_progress, self._last_ping
        if last_progress is None:
            # Normal during start-up (systemd arms the watchdog at READY=1); not worth an error.
            log.debug("no screening-loop progress reported yet; not pinging")
            return False
        age = t - last_progress
        if age > self.stale_after:
            return self._withhold(f"no progress for {age:.1f} s (limit {self.stale_after:.1f} s)")
        for name, check in self._checks:
            try:
                ok = check()
            except Exception:  # a check that raises counts as failed (no ping)
                log.exception("watchdog check %s raised", name)
                ok = False
            if not ok:
                return self._withhold(f"liveness check {name!r} failed")
        if last_ping is not None and t - last_ping < self.interval:
            return False
        if self._withholding is not None:
            log.warning("watchdog pings resume (were withheld: %s)", self._withholding)
            self._withholding = None
        if self._notifier.watchdog_ping():
            with self._lock:
                self._last_ping = t
            self.pings += 1
            return True
        return False

    def _withhold(self, why: str) -> bool:
        if self._withholding is None:
            log.error("withholding watchdog ping: %s; systemd will restart us if this persists", why)
        self._withholding = why
        return False
