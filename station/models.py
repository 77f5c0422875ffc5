"""The station's model files and their manifest (``station/models_data/manifest.toml``).

Every model file the station loads is listed with its size, sha256, source and licence, so a box in
the field can prove which weights it runs and refuse a corrupted or swapped file: ``verify`` checks
a whole directory (at start-up and before ``stationctl models install`` replaces a set), and
``path_for`` turns a model name into a path without ever looking outside that directory.
"""

from __future__ import annotations

import hashlib
import logging
import tomllib
from dataclasses import dataclass
from pathlib import Path

import station

log = logging.getLogger("station.models")

MANIFEST_NAME = "manifest.toml"
SCHEMA_VERSION = 1
_REQUIRED = ("name", "file", "sha256", "size", "source", "licence", "task")


class ManifestError(ValueError):
    """The manifest is missing, unreadable or malformed."""


class ModelNotFoundError(KeyError):
    """No model of that name is listed in the manifest."""


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One file listed in the manifest."""

    name: str
    file: str  # relative to the models directory
    sha256: str
    size: int
    source: str
    licence: str
    task: str
    licence_file: str = ""
    input: str = ""
    output: str = ""


def default_models_dir() -> Path:
    """Return ``models_data/`` inside the ``station`` package: shipped in the wheel, found from any install and cwd."""
    return Path(station.__file__).resolve().parent / "models_data"


def sha256_file(path: Path) -> str:
    """Return a file's sha256 as hex, reading it in 1 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_manifest(models_dir: Path | None = None) -> list[ModelEntry]:
    """Load the entries of ``models_dir/manifest.toml``; raise ``ManifestError`` if it cannot be used."""
    models_dir = Path(models_dir) if models_dir is not None else default_models_dir()
    path = models_dir / MANIFEST_NAME
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError as exc:
        raise ManifestError(f"no manifest at {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"{path}: not valid TOML: {exc}") from exc
    schema = data.get("schema", SCHEMA_VERSION)
    if schema != SCHEMA_VERSION:
        raise ManifestError(f"{path}: schema {schema!r} is not supported (expected {SCHEMA_VERSION})")
    tables = data.get("model")
    if not isinstance(tables, list) or not tables:
        raise ManifestError(f"{path}: no [[model]] tables")
    entries: list[ModelEntry] = []
    for i, table in enumerate(tables):
        missing = [k for k in _REQUIRED if k not in table]
        if missing:
            raise ManifestError(f"{path}: model #{i + 1} lacks {', '.join(missing)}")
        try:
            entry = ModelEntry(
                name=str(table["name"]),
                file=str(table["file"]),
                sha256=str(table["sha256"]).lower(),
                size=int(table["size"]),
                source=str(table["source"]),
                licence=str(table["licence"]),
                task=str(table["task"]),
                licence_file=str(table.get("licence_file", "")),
                input=str(table.get("input", "")),
                output=str(table.get("output", "")),
            )
        except (TypeError, ValueError) as exc:
            raise ManifestError(f"{path}: model #{i + 1}: {exc}") from exc
        entries.append(entry)
    return entries


def _inside(models_dir: Path, relative: str) -> Path | None:
    """Return ``models_dir / relative`` if it stays inside ``models_dir`` (a manifest must not point elsewhere)."""
    root = models_dir.resolve()
    candidate = (root / relative).resolve()
    if candidate != root and root in candidate.parents:
        return candidate
    return None


def verify(models_dir: Path | None = None, *, check_hashes: bool = True) -> list[str]:
    """Return everything wrong with ``models_dir``, one sentence each; an empty list means it is sound.

    Checks the manifest, and for every entry: a safe relative path, the file's presence, size and
    sha256 (skipped with ``check_hashes=False``), and the presence of its licence file.
    """
    models_dir = Path(models_dir) if models_dir is not None else default_models_dir()
    try:
        entries = load_manifest(models_dir)
    except ManifestError as exc:
        return [str(exc)]
    problems: list[str] = []
    seen: set[str] = set()
    for e in entries:
        if e.name in seen:
            problems.append(f"{e.name}: listed more than once")
        seen.add(e.name)
        if len(e.sha256) != 64 or any(c not in "0123456789abcdef" for c in e.sha256):
            problems.append(f"{e.name}: sha256 in the manifest is not 64 hex digits")
        path = _inside(models_dir, e.file)
        if path is None:
            problems.append(f"{e.name}: file {e.file!r} points outside the models directory")
            continue
        if not path.is_file():
            problems.append(f"{e.name}: file {e.file} is missing")
        else:
            size = path.stat().st_size
            if size != e.size:
                problems.append(f"{e.name}: {e.file} is {size} bytes, manifest says {e.size}")
            elif check_hashes:
                actual = sha256_file(path)
                if actual != e.sha256:
                    problems.append(f"{e.name}: {e.file} sha256 {actual} does not match the manifest")
        if not e.licence_file:
            problems.append(f"{e.name}: no licence_file listed")
        else:
            licence_path = _inside(models_dir, e.licence_file)
            if licence_path is None or not licence_path.is_file():
                problems.append(f"{e.name}: licence file {e.licence_file} is missing")
    if problems:
        log.warning("model directory has problems", extra={"dir": str(models_dir), "problems": len(problems)})
    return problems


def entry_for(name: str, models_dir: Path | None = None) -> ModelEntry:
    """Return the manifest entry for ``name`` (its manifest name, or its file's path or file name)."""
    entries = load_manifest(models_dir)
    for e in entries:
        if e.name == name:
            return e
    for e in entries:
        if e.file == name or Path(e.file).name == name:
            return e
    raise ModelNotFoundError(f"no model {name!r} in the manifest (have: {', '.join(e.name for e in entries)})")


def path_for(name: str, models_dir: Path | None = None, *, check_hash: bool = False) -> Path:
    """Return the path of model ``name``, checked to exist with the listed size (and sha256 if asked).

    Raises ``ModelNotFoundError`` for an unknown name, ``FileNotFoundError`` for a missing file and
    ``ManifestError`` when the file does not match its entry.
    """
    models_dir = Path(models_dir) if models_dir is not None else default_models_dir()
    entry = entry_for(name, models_dir)
    path = _inside(models_dir, entry.file)
    if path is None:
        raise ManifestError(f"{entry.name}: file {entry.file!r} points outside {models_dir}")
    if not path.is_file():
        raise FileNotFoundError(f"model {entry.name} missing: {path}")
    size = path.stat().st_size
    if size != entry.size:
        raise ManifestError(f"{entry.name}: {path} is {size} bytes, manifest says {entry.size}")
    if check_hash and sha256_file(path) != entry.sha256:
        raise ManifestError(f"{entry.name}: {path} does not match its sha256 in the manifest")
    return path
