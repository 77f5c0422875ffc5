"""The daemon's live status file, for ``stationctl status`` while no control socket exists.

Under systemd it lives in ``$RUNTIME_DIRECTORY`` (tmpfs: no SD-card wear); elsewhere beside the
database. It is replaced atomically every couple of seconds; a stale file or a dead pid means the
daemon is not running, whatever the file says.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from station.ops.fileio import atomic_write

STATUS_NAME = "status.json"
STALE_AFTER_S = 10.0


def runtime_dir(data_dir: Path) -> Path:
    """Return where the status file lives: ``$RUNTIME_DIRECTORY`` under systemd, else ``data_dir``."""
    rd = os.environ.get("RUNTIME_DIRECTORY")
    return Path(rd.split(":")[0]) if rd else data_dir


def write_runtime_status(data_dir: Path, status: dict[str, Any]) -> None:
    """Replace the status file with ``status`` plus this process's pid and the time."""
    path = runtime_dir(data_dir) / STATUS_NAME
    body = json.dumps(dict(status, pid=os.getpid(), updated=time.time()), default=str)
    # Not durable: under systemd this is tmpfs, and a status lost in a crash is rewritten within seconds.
    atomic_write(path, body, backup=False, new_mode=0o644, durable=False)


def clear_runtime_status(data_dir: Path) -> None:
    """Remove the status file if this process wrote it (a newer daemon's file is left alone)."""
    path = runtime_dir(data_dir) / STATUS_NAME
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if status.get("pid") == os.getpid():
        path.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user (the daemon's own)
    return True


def read_runtime_status(data_dir: Path) -> dict[str, Any]:
    """Return the daemon's last published fields with ``state``: running, stopped, stale or unknown.

    ``stopped`` when there is no file or its pid is gone; ``stale`` when the daemon has not
    rewritten it for :data:`STALE_AFTER_S`; ``unknown`` (with ``error``) when it cannot be read.
    """
    path = runtime_dir(data_dir) / STATUS_NAME
    try:
        status = json.loads(path.read_text())
    except FileNotFoundError:
        return {"state": "stopped"}
    except (OSError, ValueError) as exc:
        return {"state": "unknown", "error": str(exc)}
    pid = int(status.get("pid", 0))
    if not pid or not _pid_alive(pid):
        return dict(status, state="stopped")
    if time.time() - float(status.get("updated", 0)) > STALE_AFTER_S:
        return dict(status, state="stale")
    return dict(status, state="running")
