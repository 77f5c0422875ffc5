"""The retained ``state/fleet`` body: what the centre's fleet view needs to know about this station's software and upkeep.

Fields (docs/centre-tracing.md, *Fleet view*): ``version``; ``models`` (each manifest model's name →
the first 12 hex of its sha256) and ``models_manifest`` (the manifest file's); ``trust_list_version``
and ``resident_list_version`` (the pushed lists in force, 0 for none); ``config_hash`` (16 hex of
SHA-256 over the effective config as JSON: file, overrides and environment together, so two
stations with the same hash run the same settings; secrets in it are only ever hashed);
``district_key_id`` (never the key); ``clock_synced``; ``disk_free_mb`` and ``disk_used_pct`` of the
data directory (rounded, so the retained message is not re-published for every byte); ``doctor``:
the last ``stationctl doctor`` result (``exit_code``, ``ts``, names of failed and warned checks),
read from ``<data_dir>/doctor-last.json`` which doctor writes.

Every part is read defensively: a file that cannot be read gives ``null`` for its field, never an
exception in the link's state loop.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from station.ops.fileio import atomic_write

log = logging.getLogger("station.link.fleet_state")

DOCTOR_FILE = "doctor-last.json"
MODELS_CHECK_S = 300.0


def config_hash(cfg: Any) -> str | None:
    """Return 16 hex of SHA-256 over the effective config as canonical JSON (None when it cannot be dumped)."""
    try:
        text = json.dumps(cfg.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    except Exception:  # noqa: BLE001 - a config the link cannot dump is shown as unknown, never a dead state loop
        return None
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_doctor_result(data_dir: Path, exit_code: int, checks: list[Any], now: float | None = None) -> None:
    """Keep the summary of one doctor run where the daemon publishes it from (names and levels only, no details)."""
    rows = [asdict(c) if is_dataclass(c) and not isinstance(c, type) else dict(c) for c in checks]
    body = {
        "exit_code": int(exit_code),
        "ts": round(time.time() if now is None else now, 3),
        "failed": sorted(str(r.get("name")) for r in rows if r.get("level") == "fail")[:50],
        "warned": sorted(str(r.get("name")) for r in rows if r.get("level") == "warn")[:50],
        "checks": len(rows),
    }
    data_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(data_dir / DOCTOR_FILE, json.dumps(body), backup=False)


def read_doctor_result(data_dir: Path) -> dict[str, Any] | None:
    """Return the last doctor summary, or None when doctor never ran here (or its file is unusable)."""
    try:
        body = json.loads((data_dir / DOCTOR_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(body, dict) or not isinstance(body.get("exit_code"), int):
        return None
    return {k: body.get(k) for k in ("exit_code", "ts", "failed", "warned", "checks")}


class FleetState:
    """Compute the ``state/fleet`` body; the model hashes are re-read at most every ``MODELS_CHECK_S``."""

    def __init__(
        self,
        *,
        cfg: Any,
        data_dir: Path,
        models_dir: Path | None,
        clock_synced: Callable[[], bool],
        district_key_id: Callable[[], str | None],
        version: str,
    ) -> None:
        self.cfg = cfg
        self.data_dir = Path(data_dir)
        self.models_dir = models_dir
        self.clock_synced = clock_synced
        self.district_key_id = district_key_id
        self.version = version
        self.config_hash = config_hash(cfg)  # the config is fixed for the life of the process (no live reload)
        self._models: tuple[float, dict[str, Any]] = (-1e18, {})

    def _model_versions(self) -> dict[str, Any]:
        at, cached = self._models
        now = time.monotonic()
        if now - at < MODELS_CHECK_S:
            return cached
        out: dict[str, Any] = {"models": None, "models_manifest": None}
        try:
            from station.models import MANIFEST_NAME, default_models_dir, load_manifest, sha256_file

            folder = self.models_dir or default_models_dir()
            out["models"] = {m.name: m.sha256[:12] for m in load_manifest(folder)}
            out["models_manifest"] = sha256_file(folder / MANIFEST_NAME)[:12]
        except Exception as exc:  # noqa: BLE001 - unknown models are shown as null, with the reason logged once per check
            log.warning("fleet state: models unreadable error=%s", type(exc).__name__)
        self._models = (now, out)
        return out

    def _disk(self) -> dict[str, Any]:
        try:
            usage = shutil.disk_usage(self.data_dir)
        except OSError:
            return {"disk_free_mb": None, "disk_used_pct": None}
        return {
            "disk_free_mb": usage.free // (1 << 20) // 64 * 64,
            "disk_used_pct": round(100.0 * usage.used / usage.total) if usage.total else None,
        }

    def state(self) -> dict[str, Any]:
        """Return the body (see the module docstring)."""
        from station.codes.trust_list import stored_version
        from station.store import residents

        try:
            resident_version: int | None = residents.version(residents.resident_path(self.data_dir))
        except Exception:  # noqa: BLE001 - shown as unknown
            resident_version = None
        try:
            trust_version: int | None = stored_version(self.data_dir)
        except Exception:  # noqa: BLE001 - shown as unknown
            trust_version = None
        return {
            "state": "ok",
            "version": self.version,
            **self._model_versions(),
            "trust_list_version": trust_version,
            "resident_list_version": resident_version,
            "config_hash": self.config_hash,
            "district_key_id": self.district_key_id(),
            "clock_synced": bool(self.clock_synced()),
            **self._disk(),
            "doctor": read_doctor_result(self.data_dir),
        }
