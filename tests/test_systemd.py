"""sd_notify against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from station.ops.systemd import Notifier, WatchdogGate


class FakeSystemd:
    """A bound datagram socket that collects what the service sends."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value

    def recv(self) -> bytes:
        return self.sock.recv(4096)

    def recv_all(self) -> list[bytes]:
        out = []
        self.sock.setblocking(False)
        try:
            while True:
                try:
                    out.append(self.sock.recv(4096))
                except BlockingIOError:
                    return out
        finally:
            self.sock.settimeout(2)


@pytest.fixture()
def path_systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    addr = tmp_path / "notify"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(addr))
    s.settimeout(2)
    yield FakeSystemd(s, str(addr))
    s.close()


@pytest.fixture()
def abstract_systemd() -> Iterator[FakeSystemd]:
    name = f"checkpoint-test-{uuid.uuid4().hex}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    s.settimeout(2)
    yield FakeSystemd(s, "@" + name)
    s.close()


def test_not_under_systemd_everything_is_a_noop() -> None:
    env: dict[str, str] = {}
    n = Notifier(env)
    assert not n.enabled
    assert n.ready("up") is False
    assert n.status("x") is False and n.watchdog_ping() is False
    assert n.watchdog_period() is None
    gate = WatchdogGate(n)
    gate.progress()
    assert gate.maybe_ping() is False


def test_reads_and_pops_the_environment(path_systemd: FakeSystemd, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", path_systemd.env_value)
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    n = Notifier()
    assert "NOTIFY_SOCKET" not in os.environ, "children must not inherit the socket"
    assert "WATCHDOG_USEC" not in os.environ and "WATCHDOG_PID" not in os.environ
    assert n.enabled and n.watchdog_period() == 10.0
    n.ready()
    assert path_systemd.recv() == b"READY=1"


@pytest.mark.parametrize("which", ["path", "abstract"])
def test_exact_datagrams(which: str, request: pytest.FixtureRequest) -> None:
    fake: FakeSystemd = request.getfixturevalue(f"{which}_systemd")
    n = Notifier({"NOTIFY_SOCKET": fake.env_value})
    assert n.ready()
    assert fake.recv() == b"READY=1"
    n.ready(status="Screening on lane-1")
    assert fake.recv() == b"READY=1\nSTATUS=Screening on lane-1"
    n.status("thermal camera lost\nretrying")
    assert fake.recv() == b"STATUS=thermal camera lost retrying"  # one line, never two assignments
    n.stopping()
    assert fake.recv() == b"STOPPING=1"
    n.extend_timeout(30)
    assert fake.recv() == b"EXTEND_TIMEOUT_USEC=30000000"
    n.extend_timeout(1.5)
    assert fake.recv() == b"EXTEND_TIMEOUT_USEC=1500000"
    n.watchdog_ping()
    assert fake.recv() == b"WATCHDOG=1"
    n.reloading()
    lines = fake.recv().split(b"\n")
    assert lines[0] == b"RELOADING=1" and lines[1].startswith(b"MONOTONIC_USEC=")
    assert int(lines[1].split(b"=")[1]) > 0
    assert fake.recv_all() == []


def test_watchdog_pid_of_another_process_disables_the_watchdog(path_systemd: FakeSystemd) -> None:
    n = Notifier({"NOTIFY_SOCKET": path_systemd.env_value, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"})
    assert n.watchdog_period() is None
    n2 = Notifier({"NOTIFY_SOCKET": path_systemd.env_value, "WATCHDOG_USEC": "4000000"})
    assert n2.watchdog_period() == 4.0


def test_bad_socket_values_are_ignored_or_survived(tmp_path: Path) -> None:
    assert not Notifier({"NOTIFY_SOCKET": "relative/path"}).enabled
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert gone.enabled
    assert gone.ready() is False  # logged, not raised: a lost STATUS must not stop the gate
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "soon"}).watchdog_period() is None


def test_watchdog_gate_pings_only_while_progress_is_reported(path_systemd: FakeSystemd) -> None:
    n = Notifier({"NOTIFY_SOCKET": path_systemd.env_value, "WATCHDOG_USEC": "4000000"})
    gate = WatchdogGate(n)
    assert (gate.period, gate.stale_after, gate.interval) == (4.0, 2.0, 1.0)

    assert gate.maybe_ping(now=100.0) is False, "no progress yet: no ping"
    pings = []
    t = 100.0
    for _ in range(20):  # a healthy loop: progress every 0.25 s, the timer ticks every 0.25 s
        t += 0.25
        gate.progress(now=t)
        pings.append(gate.maybe_ping(now=t))
    assert sum(pings) == 5  # rate-limited to one per interval (1 s) over 5 s
    assert path_systemd.recv_all() == [b"WATCHDOG=1"] * 5

    last_progress = t
    for _ in range(40):  # the loop hangs; the timer keeps ticking
        t += 0.25
        gate.maybe_ping(now=t)
    sent = path_systemd.recv_all()
    # Pings continue only until progress is older than stale_after (2 s), then stop for good.
    assert 1 <= len(sent) <= 2
    assert gate.maybe_ping(now=last_progress + 2.01) is False

    gate.progress(now=t)  # the loop recovers
    assert gate.maybe_ping(now=t) is True
    assert path_systemd.recv_all() == [b"WATCHDOG=1"]


def test_watchdog_gate_extra_checks(path_systemd: FakeSystemd) -> None:
    n = Notifier({"NOTIFY_SOCKET": path_systemd.env_value, "WATCHDOG_USEC": "2000000"})
    mqtt_alive = [True]

    def broken() -> bool:
        raise RuntimeError("boom")

    gate = WatchdogGate(n, checks=[("mqtt loop", lambda: mqtt_alive[0])])
    gate.progress(now=1.0)
    assert gate.maybe_ping(now=1.0) is True
    mqtt_alive[0] = False
    gate.progress(now=2.0)
    assert gate.maybe_ping(now=2.0) is False
    assert WatchdogGate(n, checks=[("broken", broken)]).maybe_ping(now=0.0) is False
    assert path_systemd.recv_all() == [b"WATCHDOG=1"]


def test_watchdog_gate_with_real_clock(path_systemd: FakeSystemd) -> None:
    n = Notifier({"NOTIFY_SOCKET": path_systemd.env_value, "WATCHDOG_USEC": "200000"})
    gate = WatchdogGate(n)  # stale after 0.1 s, ping at most every 0.05 s
    gate.progress()
    assert gate.maybe_ping() is True
    time.sleep(0.15)  # no progress for longer than the 0.1 s staleness: the passage of time is the test
    assert gate.maybe_ping() is False
    assert path_systemd.recv_all() == [b"WATCHDOG=1"]
