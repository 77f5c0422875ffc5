"""The station's retained ``state/fleet`` body: versions, config hash, district key id, clock, disk and the last doctor run."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from station.cli.stationctl import main as cli
from station.codes.trace_key import DistrictKeys, key_id_of
from station.config import load_config
from station.link.fleet_state import DOCTOR_FILE, FleetState, config_hash, read_doctor_result, write_doctor_result
from station.store import residents

ROOT = Path(__file__).resolve().parents[1]


def _fleet(tmp_path: Path, synced: bool = True) -> tuple[FleetState, DistrictKeys]:
    keys = DistrictKeys(tmp_path)
    cfg = load_config(ROOT / "config" / "station.toml")
    state = FleetState(
        cfg=cfg,
        data_dir=tmp_path,
        models_dir=None,
        clock_synced=lambda: synced,
        district_key_id=lambda: keys.status()["key_id"],
        version="9.9.9",
    )
    return state, keys


def test_the_fleet_state_names_versions_lists_key_id_clock_disk_and_nothing_secret(tmp_path: Path) -> None:
    state, keys = _fleet(tmp_path)
    body = state.state()
    assert body["version"] == "9.9.9" and body["clock_synced"] is True
    assert body["models"] and all(len(v) == 12 for v in body["models"].values()) and "ultraface-rfb-320" in body["models"]
    assert (body["trust_list_version"], body["resident_list_version"], body["district_key_id"], body["doctor"]) == (0, 0, None, None)
    assert isinstance(body["disk_free_mb"], int) and body["disk_free_mb"] % 64 == 0 and 0 <= body["disk_used_pct"] <= 100
    assert len(body["config_hash"]) == 16
    secret = bytes(range(32))
    keys.install(1, secret.hex())
    residents.save(residents.resident_path(tmp_path), ["浙A12345"], list_version=3)
    body = state.state()
    assert body["district_key_id"] == key_id_of(secret) and body["resident_list_version"] == 3
    assert secret.hex() not in json.dumps(body) and "浙A12345" not in json.dumps(body, ensure_ascii=False)


def test_the_config_hash_changes_with_any_setting_and_not_otherwise(tmp_path: Path) -> None:
    cfg = load_config(ROOT / "config" / "station.toml")
    same = load_config(ROOT / "config" / "station.toml")
    other = cfg.model_copy(update={"screening": cfg.screening.model_copy(update={"fever_threshold_c": 37.9})})
    assert config_hash(cfg) == config_hash(same) != config_hash(other)


def test_doctor_keeps_its_last_result_for_the_fleet_view(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = CliRunner().invoke(cli, ["--data-dir", str(data), "--config", str(ROOT / "config" / "station.toml"), "doctor", "--json"])
    printed = json.loads(result.stdout)
    kept = read_doctor_result(data)
    assert kept is not None and kept["exit_code"] == printed["exit_code"] == result.exit_code
    assert kept["failed"] == sorted(c["name"] for c in printed["checks"] if c["level"] == "fail")
    assert kept["checks"] == len(printed["checks"])
    (data / DOCTOR_FILE).write_text("[1, 2")
    assert read_doctor_result(data) is None
    write_doctor_result(data, 1, [{"name": "clock", "level": "warn"}], now=5.0)
    assert read_doctor_result(data) == {"exit_code": 1, "ts": 5.0, "failed": [], "warned": ["clock"], "checks": 1}
