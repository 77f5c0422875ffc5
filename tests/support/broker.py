"""A real mosquitto broker on 127.0.0.1 for tests: start, SIGKILL, restart on the same port.

Usage::

    from tests.support.broker import mosquitto_broker

    with mosquitto_broker(tmp_path) as broker:      # started, accepting connections
        url = broker.url                            # "mqtt://127.0.0.1:<port>"
        broker.pause(); broker.resume()             # SIGSTOP / SIGCONT: a hung broker
        broker.kill()                               # SIGKILL: no Will delivery, no persistence save
        broker.start()                              # same port, same config
        broker.stop()                               # SIGTERM: persists the session database

``persistence=True`` keeps sessions and retained messages in ``<workdir>/mosquitto.db`` across
:meth:`Broker.stop`/:meth:`Broker.start` (mosquitto only writes it on a clean stop or at autosave,
so a SIGKILL loses what changed since). The broker's log is in ``<workdir>/mosquitto.log``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

MOSQUITTO = os.environ.get("MOSQUITTO") or shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


def mosquitto_available() -> bool:
    return Path(MOSQUITTO).is_file() and os.access(MOSQUITTO, os.X_OK)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """One mosquitto process with a generated config in ``workdir``."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        *,
        persistence: bool = False,
        allow_anonymous: bool = True,
        users: dict[str, str] | None = None,
        listener_options: list[str] | None = None,
        acl_file: Path | str | None = None,
        max_queued_messages: int = 100_000,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.persistence = persistence
        self.proc: subprocess.Popen[bytes] | None = None
        self.config = self.workdir / "mosquitto.conf"
        self.log = self.workdir / "mosquitto.log"
        lines = [
            f"listener {self.port} 127.0.0.1",
            f"allow_anonymous {'true' if allow_anonymous else 'false'}",
            # Started as root, mosquitto would switch to user "mosquitto", which cannot write
            # the test's directory; stay whoever we are.
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
            # No per-client in-flight limit: a message is written to subscribers as soon as it
            # arrives, instead of waiting in broker memory where a SIGKILL would lose it after
            # it was already PUBACKed to the publisher.
            "max_inflight_messages 0",
            f"max_queued_messages {int(max_queued_messages)}",
            f"log_dest file {self.log}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {self.workdir}/",
            "persistence_file mosquitto.db",
        ]
        if users:
            # mosquitto_passwd writes mosquitto 2.0's salted PBKDF2 hashes; -b takes the password
            # on the command line (fine for a test broker), -c creates the file.
            password_file = self.workdir / "passwords"
            password_file.unlink(missing_ok=True)
            for i, (user, password) in enumerate(users.items()):
                subprocess.run(
                    [MOSQUITTO_PASSWD, "-b", *(["-c"] if i == 0 else []), str(password_file), user, password],
                    check=True,
                    capture_output=True,
                )
            password_file.chmod(0o600)
            lines.append(f"password_file {password_file}")
        if acl_file is not None:
            lines.append(f"acl_file {acl_file}")  # e.g. the shipped systemd/mosquitto/checkpoint.acl
        # e.g. cafile/certfile/keyfile/require_certificate: they apply to the one listener above.
        lines += listener_options or []
        self.config.write_text("\n".join(lines) + "\n")

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 5.0) -> None:
        """Start (or restart) on the same port and wait until it accepts TCP connections."""
        if self.running:
            raise RuntimeError("mosquitto is already running")
        with open(self.workdir / "mosquitto.stdout", "ab") as out:  # the child keeps its copy
            self.proc = subprocess.Popen(
                [MOSQUITTO, "-c", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}:\n{self.tail_log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout} s:\n{self.tail_log()}")

    def kill(self) -> None:
        """SIGKILL: the broker dies without saving anything or sending Wills."""
        self._signal(signal.SIGKILL)

    def pause(self) -> None:
        """SIGSTOP: the broker freezes with its sockets open (a hung broker, or a dead link)."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """SIGTERM: clean shutdown (persists the database when persistence is on)."""
        self._signal(signal.SIGTERM)

    def _signal(self, sig: int) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self.proc = None

    def tail_log(self, lines: int = 30) -> str:
        text = ""
        for f in (self.log, self.workdir / "mosquitto.stdout"):
            if f.exists():
                text += f.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def mosquitto_broker(workdir: Path, *, persistence: bool = False, start: bool = True) -> Iterator[Broker]:
    """A broker in ``workdir`` (started unless ``start=False``); killed on exit."""
    broker = Broker(workdir, persistence=persistence)
    try:
        if start:
            broker.start()
        yield broker
    finally:
        broker.kill()
