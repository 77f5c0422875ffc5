"""A real PostgreSQL server for tests: ``initdb`` in a temp dir, ``pg_ctl start`` on 127.0.0.1, a fresh database per test.

Usage::

    from tests.support.postgres import pg_server, pg_url   # in the test module: defines the fixtures there

    def test_x(pg_url: str) -> None:                        # postgresql://postgres@127.0.0.1:<port>/t_<n>
        ...

``pg_server`` is session-scoped (one ``initdb`` per test session, about a second); ``pg_url`` creates
an empty database for each test and drops it afterwards. PostgreSQL refuses to run as root, so when
the tests run as root (CI does) the cluster belongs to ``nobody`` and ``initdb``/``pg_ctl`` run
through ``runuser``; the temp dir is made outside pytest's root-only tree and handed to that user.
The server uses ``trust`` authentication on 127.0.0.1 and its unix socket lives in the temp dir, so
it touches nothing of a system cluster. ``fsync=off`` unless asked (a test never pulls the plug on
PostgreSQL itself; the bench keeps it on).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.broker import free_port


def pg_bin_dir() -> Path | None:
    """Return the directory holding ``initdb`` and ``pg_ctl`` (Debian keeps them off PATH), or None."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0
    )
    return Path(candidates[-1]).parent if candidates else None


def postgres_available() -> bool:
    """Return whether a PostgreSQL server can be started here (Debian package ``postgresql``)."""
    return pg_bin_dir() is not None


class PostgresServer:
    """One throw-away PostgreSQL cluster in ``workdir`` listening on 127.0.0.1:``port``."""

    def __init__(self, workdir: Path | None = None, port: int | None = None, *, fsync: bool = False) -> None:
        bindir = pg_bin_dir()
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
        self.bindir = bindir
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="checkpoint-pg-"))
        self.port = port or free_port()
        self.fsync = fsync
        self.data = self.workdir / "data"
        self.sockets = self.workdir / "sock"
        self.log = self.workdir / "postgres.log"
        # Root cannot run postgres: the cluster is nobody's (its uid owns the dir; nothing else is touched).
        self.user = "nobody" if os.geteuid() == 0 else None
        self.sockets.mkdir(parents=True, exist_ok=True)
        if self.user:
            entry = pwd.getpwnam(self.user)
            for path in (self.workdir, self.sockets):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self._initdb()

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        # cwd: a directory the server's user may enter (runuser keeps root's cwd otherwise).
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.workdir, env=dict(os.environ, LC_ALL="C"))

    def _initdb(self) -> None:
        done = self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-instructions")
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}): {done.stderr[-2000:]}")

    @property
    def dsn(self) -> str:
        """Return the URL of the ``postgres`` database (for administration: creating test databases)."""
        return self.url("postgres")

    def url(self, dbname: str) -> str:
        """Return ``postgresql://postgres@127.0.0.1:<port>/<dbname>``."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def start(self, timeout: float = 30) -> None:
        """Start the server and wait until it accepts connections (``pg_ctl -w``)."""
        options = f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 -c max_connections=60"
        if not self.fsync:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        done = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", str(int(timeout)), "start")
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed ({done.returncode}): {done.stderr[-1000:]}\n{self.tail_log()}")

    def stop(self) -> None:
        """Stop the server fast (``pg_ctl stop -m fast``); a server already stopped is fine."""
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        """Stop the server and delete its directory."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def tail_log(self, lines: int = 30) -> str:
        """Return the last lines of the server's log."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def create_database(self, name: str) -> str:
        """Create an empty database and return its URL."""
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, ending its connections (a killed replica's may linger)."""
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def postgres_server(*, fsync: bool = False) -> Iterator[PostgresServer]:
    """Yield a started throw-away server; stop it and delete its files afterwards."""
    server = PostgresServer(fsync=fsync)
    try:
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """Yield one PostgreSQL server for the whole test session (skips when PostgreSQL is not installed)."""
    if not postgres_available():
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    with postgres_server() as server:
        yield server


_counter = iter(range(1, 1 << 30))


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> Iterator[str]:
    """Yield the URL of a fresh, empty database; drop it after the test."""
    name = f"t_{os.getpid()}_{next(_counter)}_{int(time.time() * 1000) % 100000}"
    url = pg_server.create_database(name)
    try:
        yield url
    finally:
        pg_server.drop_database(name)
