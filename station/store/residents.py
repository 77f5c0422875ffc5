"""The resident plate list: ``<data_dir>/resident_plates.txt``, one plate a line (``#`` comments).

Edited with ``stationctl plates add|remove|list`` (atomic rewrite, so the daemon never reads half a
file); the daemon re-reads it when its modification time changes, so an edit applies to the next
vehicle without a restart. Plates are stored normalised (upper case, no separators).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from station.domain.vehicles import normalise_plate

log = logging.getLogger("station.store.residents")

FILE_NAME = "resident_plates.txt"
# Province / special character (CJK) or letter first, then letters, digits and the few CJK suffixes
# (学, 警, 挂, 港, 澳, 领, 使): 5 to 9 characters in all.
_PLATE = re.compile(r"^[\u4e00-\u9fffA-Z0-9]{5,9}$")


class PlateTextError(ValueError):
    """Not something a plate can say."""


def resident_path(data_dir: Path) -> Path:
    """Return the path of the resident plate list in ``data_dir``."""
    return Path(data_dir) / FILE_NAME


def check_plate(text: str) -> str:
    """Return ``text`` as a normalised plate, or raise :class:`PlateTextError` if it cannot be one."""
    plate = normalise_plate(text)
    if not _PLATE.match(plate):
        raise PlateTextError(f"{text!r} is not a plate: expected 5–9 letters, digits or Chinese characters, e.g. 浙A12345")
    return plate


def load(path: Path) -> list[str]:
    """Return the plates in the file, in file order; a missing file is an empty list.

    Lines that are not plates are skipped with a warning: one typo must not empty the list.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    plates: list[str] = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            plates.append(check_plate(line))
        except PlateTextError as exc:
            log.warning("resident list line skipped path=%s line=%d error=%s", path, n, exc)
    return plates


_VERSION = re.compile(r"^# version (\d+)\s*$")


def version(path: Path) -> int:
    """Return the version of the list as pushed by the centre (``cmd/resident-plates``).

    It is kept in a ``# version N`` header line; 0 when the file has none (missing, or edited with
    stationctl).
    """
    try:
        with Path(path).open(encoding="utf-8") as f:
            for line in f:
                m = _VERSION.match(line)
                if m:
                    return int(m.group(1))
                if line.strip() and not line.startswith("#"):
                    break  # the header is over
    except FileNotFoundError:
        return 0
    return 0


def check_list(texts: object, max_plates: int = 100_000) -> list[str]:
    """Return a whole pushed list, validated: every entry a plate, duplicates dropped (first kept).

    Raises :class:`PlateTextError` on any bad entry (naming up to five of them), so a bad list
    changes nothing.
    """
    if not isinstance(texts, list):
        raise PlateTextError("the plate list must be a JSON array of strings")
    if len(texts) > max_plates:
        raise PlateTextError(f"{len(texts)} plates: at most {max_plates} are accepted")
    plates: list[str] = []
    bad: list[str] = []
    for i, text in enumerate(texts):
        try:
            if not isinstance(text, str):
                raise PlateTextError(f"entry {i} is {type(text).__name__}, not a string")
            plates.append(check_plate(text))
        except PlateTextError as exc:
            bad.append(f"[{i}] {exc}")
    if bad:
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise PlateTextError(f"{len(bad)} bad entr{'y' if len(bad) == 1 else 'ies'}: " + "; ".join(bad[:5]) + more)
    return list(dict.fromkeys(plates))


def save(path: Path, plates: list[str], list_version: int | None = None) -> None:
    """Replace the file atomically (temp file, fsync, rename).

    The daemon reads the old list or the new one, never a mix. ``list_version`` is written as the
    ``# version N`` header (centre pushes).
    """
    from station.ops.fileio import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "# resident plates, one a line (stationctl plates add|remove|list)\n"
    if list_version is not None:
        text += f"# version {int(list_version)}\n"
    text += "".join(p + "\n" for p in plates)
    # The daemon (service account) and `sudo stationctl plates` both write it: keep its owner.
    atomic_write(path, text, backup=False)


def add(path: Path, text: str) -> bool:
    """Add a plate; False if it was already listed."""
    plate = check_plate(text)
    plates = load(path)
    if plate in plates:
        return False
    save(path, plates + [plate])
    return True


def remove(path: Path, text: str) -> bool:
    """Remove a plate; False if it was not listed."""
    plate = normalise_plate(text)
    plates = load(path)
    if plate not in plates:
        return False
    save(path, [p for p in plates if p != plate])
    return True


class ResidentFile:
    """The list as the daemon sees it: re-read when the file changes (call it per vehicle)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._mtime: tuple[int, int, int] | int | None = None
        self._plates: frozenset[str] = frozenset()

    def __call__(self) -> frozenset[str]:
        """Return the plates, re-reading the file if it changed since the last call."""
        try:
            st = self.path.stat()
            # The inode too: an atomic replace within the same mtime tick must still be seen.
            mtime: tuple[int, int, int] | int = (st.st_mtime_ns, st.st_ino, st.st_size)
        except FileNotFoundError:
            mtime = -1
        if mtime != self._mtime:
            self._plates = frozenset(load(self.path))
            self._mtime = mtime
            log.info("resident list loaded path=%s plates=%d", self.path, len(self._plates))
        return self._plates
