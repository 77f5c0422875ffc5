"""The daemon's local control socket: live state for ``stationctl`` without touching the devices.

A UNIX stream socket ``control.sock`` in the runtime directory (``$RUNTIME_DIRECTORY`` =
``/run/checkpoint`` under systemd, else beside the database; see ``station.ops.runtime``), mode 0660 so
the service's group (technicians are added to ``checkpoint``) may connect and nobody else. The
protocol is JSON lines: the client sends one object ``{"cmd": "<name>", …}`` and reads one line
back, ``{"ok": true, "result": …}`` or ``{"ok": false, "error": "…"}``; it may send more requests
on the same connection. Commands (``StationApp`` registers them, others may add their own with
:meth:`ControlServer.register`):

``ping``      pid, data dir, uptime — "is the daemon up?" (``stationctl test`` asks before it drives
              outputs the daemon owns)
``status``    the live runtime status (the same dict the status file carries), state "running"
``counters``  pipeline, gate, outbox pump and retention counters, outbox depth, today's counts
``devices``   the devices the daemon holds open (doctor: a busy port is the daemon's, not a fault)
``outbox_wake``  wake the outbox pump now (``stationctl outbox retry``)
``retention_run``  run the retention purge now and return what it deleted

Stdlib only (imported by ``stationctl`` on every call that asks the daemon something).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # typing only: stationctl imports this module on every call and must stay light
    from station.lane.pipeline import Pipeline
    from station.link.sync import OutboxPump
    from station.store.events import SqliteEventStore
    from station.store.retention import RetentionThread

log = logging.getLogger("station.ops.control")

SOCKET_NAME = "control.sock"
SYSTEMD_RUNTIME_DIR = Path("/run/checkpoint")  # RuntimeDirectory=checkpoint in the unit
MAX_REQUEST = 64 * 1024
Handler = Callable[[dict[str, Any]], Any]


class ControlUnavailable(Exception):
    """No daemon answers on the control socket (not running, or no permission to connect)."""


class ControlError(Exception):
    """The daemon answered with an error."""


def socket_path(data_dir: Path) -> Path:
    """Return the control socket's path for the daemon that keeps its database in ``data_dir``."""
    from station.ops.runtime import runtime_dir

    return runtime_dir(data_dir) / SOCKET_NAME


def candidate_paths(data_dir: Path) -> list[Path]:
    """Return where to look for a daemon: this data dir's runtime dir, then the unit's ``/run/checkpoint``.

    A technician's shell has no ``$RUNTIME_DIRECTORY``; the unit's runtime dir is still found.
    """
    paths = [socket_path(data_dir)]
    system = SYSTEMD_RUNTIME_DIR / SOCKET_NAME
    if system not in paths:
        paths.append(system)
    return paths


class ControlServer:
    """Serve control commands on the socket at ``path``.

    Connections are accepted on one thread; each is served on its own short-lived thread.
    """

    def __init__(self, path: Path, handlers: dict[str, Handler] | None = None, timeout_s: float = 5.0) -> None:
        self.path = Path(path)
        self.handlers: dict[str, Handler] = dict(handlers or {})
        self.timeout_s = timeout_s
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.requests = 0
        self.errors = 0

    def register(self, name: str, fn: Handler) -> None:
        """Add (or replace) the handler for command ``name``."""
        self.handlers[name] = fn

    def start(self) -> None:
        """Bind the socket (0660) and start serving; raise ``OSError`` if another daemon answers there."""
        self._remove_stale()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # Created 0600 by the umask below, then opened to the group: never world-connectable,
            # not even for the instant between bind and chmod.
            old = os.umask(0o177)
            try:
                sock.bind(str(self.path))
            finally:
                os.umask(old)
            os.chmod(self.path, 0o660)
            sock.listen(16)
            sock.settimeout(0.5)  # accept() wakes up to see stop()
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="station-control", daemon=True)
        self._thread.start()
        log.info("control socket listening path=%s", self.path)

    def _remove_stale(self) -> None:
        """Remove a socket file left by a killed daemon; raise ``OSError`` if a live daemon answers on it."""
        try:
            mode = self.path.lstat().st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise OSError(f"{self.path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(str(self.path))
        except (ConnectionRefusedError, FileNotFoundError):
            self.path.unlink(missing_ok=True)
            return
        except OSError as exc:
            raise OSError(f"cannot check {self.path}: {exc}") from exc
        finally:
            probe.close()
        raise OSError(f"another daemon answers on {self.path}")

    def stop(self) -> None:
        """Stop serving and remove the socket file."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            # Only our own socket file: a successor daemon may already have bound a new one.
            self.path.unlink(missing_ok=True)

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if not self._stop.is_set():
                    log.error("control socket accept failed error=%s", exc)
                    time.sleep(0.5)
                continue
            threading.Thread(target=self._handle, args=(conn,), name="station-control-conn", daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(self.timeout_s)
        with conn, conn.makefile("rwb") as f:
            try:
                while True:
                    line = f.readline(MAX_REQUEST + 1)
                    if not line:
                        return
                    reply = self.dispatch(line)
                    f.write(json.dumps(reply, default=str, ensure_ascii=False).encode("utf-8") + b"\n")
                    f.flush()
            except (OSError, TimeoutError) as exc:  # client went away or stalled; nothing to answer
                log.debug("control connection ended error=%s", exc)

    def dispatch(self, line: bytes) -> dict[str, Any]:
        """Return the reply to one request line: ``{"ok": true, "result": …}`` or ``{"ok": false, "error": …}``.

        Total: oversized, non-JSON or unknown requests and failing handlers all give an error reply.
        """
        self.requests += 1
        if len(line) > MAX_REQUEST:
            self.errors += 1
            return {"ok": False, "error": f"request longer than {MAX_REQUEST} bytes"}
        try:
            req = json.loads(line)
        except ValueError as exc:
            self.errors += 1
            return {"ok": False, "error": f"not JSON: {exc}"}
        if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
            self.errors += 1
            return {"ok": False, "error": 'expected {"cmd": "<name>", …}'}
        fn = self.handlers.get(req["cmd"])
        if fn is None:
            self.errors += 1
            return {"ok": False, "error": f"unknown cmd {req['cmd']!r}; known: {', '.join(sorted(self.handlers))}"}
        try:
            return {"ok": True, "result": fn(req)}
        except Exception as exc:  # reported to the client; the daemon carries on
            self.errors += 1
            log.exception("control command failed cmd=%s", req["cmd"])
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def request(path: Path, cmd: str, timeout_s: float = 3.0, **args: Any) -> Any:
    """Send one command to the socket at ``path`` and return its ``result``.

    Raise ``ControlUnavailable`` when no daemon answers and ``ControlError`` when it answers with an error.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise ControlUnavailable(f"no daemon on {path}") from exc
        except PermissionError as exc:
            raise ControlUnavailable(f"no permission to connect to {path} (join the daemon's group)") from exc
        except OSError as exc:
            raise ControlUnavailable(f"{path}: {exc}") from exc
        try:
            sock.sendall(json.dumps(dict(args, cmd=cmd)).encode("utf-8") + b"\n")
            with sock.makefile("rb") as f:
                line = f.readline()
        except (OSError, TimeoutError) as exc:
            raise ControlUnavailable(f"{path}: no answer ({exc})") from exc
    finally:
        sock.close()
    if not line:
        raise ControlUnavailable(f"{path}: connection closed without an answer")
    reply = json.loads(line)
    if not reply.get("ok"):
        raise ControlError(reply.get("error", "unknown error"))
    return reply.get("result")


def ask(data_dir: Path, cmd: str, timeout_s: float = 3.0, **args: Any) -> tuple[Any, Path]:
    """Send one command to the first candidate socket that answers; return (result, socket path)."""
    last: ControlUnavailable | None = None
    for path in candidate_paths(data_dir):
        try:
            return request(path, cmd, timeout_s, **args), path
        except ControlUnavailable as exc:
            last = exc
    raise last or ControlUnavailable("no control socket")


def system_daemon_data_dir() -> Path | None:
    """Return the data dir of the daemon on ``/run/checkpoint/control.sock``, or None if none answers."""
    path = SYSTEMD_RUNTIME_DIR / SOCKET_NAME
    if not path.exists():
        return None
    try:
        ping = request(path, "ping", timeout_s=2.0)
    except (ControlUnavailable, ControlError, ValueError):
        return None
    return Path(ping["data_dir"]) if ping.get("data_dir") else None


# -- the daemon's handlers ----------------------------------------------------------------------------


def _midnight() -> float:
    return time.mktime(time.localtime()[:3] + (0, 0, 0, 0, 0, -1))


def station_handlers(
    server: ControlServer,
    *,
    data_dir: Path,
    site: str,
    station: str,
    ready: Callable[[], bool],
    runtime_status: Callable[[], dict[str, Any]],
    pipeline: Pipeline,
    store: SqliteEventStore,
    retention: RetentionThread,
    devices: Mapping[str, Mapping[str, Any]],
    pump: OutboxPump | None = None,
    mqtt_connected: Callable[[], bool] | None = None,
) -> dict[str, Handler]:
    """Return the daemon's control commands over its running parts (``pump`` None: no broker configured).

    ``devices`` names what each device is configured as (thermal port, camera device, gate pin
    factory); the live stats of the thermal source and the camera are added to it.
    """

    def ping(_req: dict[str, Any]) -> dict[str, Any]:
        return {"pid": os.getpid(), "data_dir": str(data_dir), "site": site, "station": station, "ready": ready()}

    def status(_req: dict[str, Any]) -> dict[str, Any]:
        return dict(runtime_status(), state="running", pid=os.getpid(), updated=time.time())

    def counters(_req: dict[str, Any]) -> dict[str, Any]:
        gate_stats = getattr(pipeline.gate, "stats", None)  # the GPIO gate counts; a test double may not
        return {
            "pipeline": pipeline.stats(),
            "gate": gate_stats() if gate_stats is not None else None,
            "outbox_pump": pump.stats() if pump is not None else None,
            "outbox": store.outbox_stats(),
            "today": store.counts(since_ts=_midnight()),
            "retention": retention.stats(),
            "control": {"requests": server.requests, "errors": server.errors},
        }

    def device_state(_req: dict[str, Any]) -> dict[str, Any]:
        live = {"thermal": dict(pipeline.thermal.stats()), "camera": dict(pipeline.camera.stats())}
        return {name: {**named, **live.get(name, {})} for name, named in devices.items()}

    def outbox_wake(_req: dict[str, Any]) -> dict[str, Any]:
        if pump is None:
            return {"woken": False, "reason": "no broker configured (mqtt.url is empty)"}
        pump.wake()
        return {"woken": True, "mqtt_connected": mqtt_connected() if mqtt_connected is not None else None}

    def retention_run(_req: dict[str, Any]) -> dict[str, Any]:
        return dict(retention.run_once().as_dict())

    return {
        "ping": ping,
        "status": status,
        "counters": counters,
        "devices": device_state,
        "outbox_wake": outbox_wake,
        "retention_run": retention_run,
    }
