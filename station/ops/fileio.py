"""Atomic replacement of small files the station and its technician both write (config, lists).

``station.toml`` is ``root:checkpoint 0640`` and the resident plate list belongs to the service
account; a tool run with ``sudo`` or a daemon with a different umask must not leave either with a
new owner or mode (the service could no longer read its config, or everyone could). So the new
content goes to a temp file in the same directory that is given the old file's mode, owner and
group *before* it is renamed over the old one; the ``.bak`` copy gets them too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("station.ops.fileio")

NEW_FILE_MODE = 0o640
"""Mode of a file that did not exist before (not the caller's umask): owner rw, group r."""


def fsync_path(path: Path) -> None:
    """Flush a file or a directory to disk by its path (a directory: so a rename in it is durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_like(path: Path, data: bytes, like: os.stat_result | None, new_mode: int, *, private: bool, durable: bool) -> None:
    """Write ``data`` to ``path`` atomically with the mode/owner/group of ``like`` (or ``new_mode``)."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            if like is not None:
                mine = os.fstat(f.fileno())
                if (mine.st_uid, mine.st_gid) != (like.st_uid, like.st_gid):
                    try:
                        os.fchown(f.fileno(), like.st_uid, like.st_gid)
                    except PermissionError as exc:
                        raise PermissionError(
                            exc.errno,
                            f"cannot keep the owner {like.st_uid}:{like.st_gid} of {path} "
                            "(run as root or as its owner); nothing was written",
                        ) from None
                # After the chown: changing the owner clears set-id bits.
                mode = stat.S_IMODE(like.st_mode)
                os.fchmod(f.fileno(), mode & 0o700 if private else mode)
            else:
                os.fchmod(f.fileno(), new_mode)
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write(
    path: Path | str,
    content: str | bytes,
    *,
    backup: bool = True,
    new_mode: int = NEW_FILE_MODE,
    private: bool = False,
    durable: bool = True,
) -> None:
    """Replace ``path`` with ``content`` (str is written as UTF-8) so readers see the old or the new file.

    An existing file keeps its mode, owner and group; with ``backup`` its old content is kept as
    ``<name>.bak`` with the same mode, owner and group. A new file gets ``new_mode``. ``private``
    (secrets, user lists) makes a new file 0600 and drops any group/other bits an old one had.
    File and directory are fsynced unless ``durable`` is false (tmpfs status files: no SD-card
    wear for what a reboot may lose). A symlink is followed: the file it points to is replaced,
    the link kept.
    """
    if private:
        new_mode = 0o600
    path = Path(path)
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    data = content.encode("utf-8") if isinstance(content, str) else bytes(content)
    try:
        old: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        old = None
    if old is not None and backup:
        _write_like(path.with_name(path.name + ".bak"), path.read_bytes(), old, new_mode, private=private, durable=durable)
    _write_like(path, data, old, new_mode, private=private, durable=durable)
    if durable:
        fsync_path(path.parent)


def private_secret(path: Path, make: Callable[[], str]) -> str:
    """Return the text of a secret file, created 0600 with ``make()`` if absent; made 0600 if it was looser.

    Created with ``O_EXCL``: when two processes (board replicas) start together, the loser reads the
    winner's file instead of overwriting it.
    """
    try:
        text = path.read_bytes().decode("ascii", "replace").strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it just now
            text = path.read_bytes().decode("ascii", "replace").strip()
        else:
            text = make()
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(text + "\n")
            log.info("secret file created path=%s", path)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)
        log.warning("secret file was readable by others: made 0600 path=%s", path)
    return text
