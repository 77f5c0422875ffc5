"""``stationctl registrations list|export|erase`` on a real store, and the ``vehicle.registration_valid_h`` key's errors."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from station.cli.stationctl import main
from station.config import ConfigError, load_config
from station.store import visits
from station.store.events import DB_NAME, SqliteEventStore


def base(tmp_path: Path) -> list[str]:
    return ["--config", "/nonexistent.toml", "--data-dir", str(tmp_path)]


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    store = SqliteEventStore(tmp_path / DB_NAME, station_id="lane-1", site="demo-site")
    store.begin_session()
    now = time.time()
    for rid, plate, ago in (("r-old", "鲁L88888", 3 * 86400), ("r-new", "鲁L88888", 60), ("r-other", "苏E12345", 30)):
        visits.record_registration(
            store,
            {
                "registration_id": rid,
                "ts": now - ago,
                "plate": plate,
                "reason": "visit",
                "destination": "3号楼",
                "phone_hash": "ab" * 32,
                "phone_last4": "8000",
                "operator": "Wang Li",
            },
        )
    store.outbox_ack_many([r.id for r in store.outbox_pending(10)])  # delivered: erasable without --include-pending
    store.close()
    return tmp_path


def test_list_and_export_select_by_plate_and_time(data_dir: Path) -> None:
    r = CliRunner().invoke(main, base(data_dir) + ["registrations", "list", "--plate", "鲁l·88888", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)["registrations"]
    assert [x["registration_id"] for x in rows] == ["r-old", "r-new"] and "phone_hash" not in rows[0]
    r = CliRunner().invoke(main, base(data_dir) + ["registrations", "export", "--since", "1d"])
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["registration_id"] for x in lines] == ["r-new", "r-other"] and lines[0]["phone_hash"] == "ab" * 32
    r = CliRunner().invoke(main, base(data_dir) + ["registrations", "list", "--plate", "<script>"])
    assert r.exit_code == 2 and "plate must be" in r.output


def test_erase_by_plate_is_audited_and_refuses_without_criteria(data_dir: Path) -> None:
    r = CliRunner().invoke(main, base(data_dir) + ["registrations", "erase", "--yes"])
    assert r.exit_code == 2 and "refusing to erase everything" in r.output
    r = CliRunner().invoke(main, base(data_dir) + ["registrations", "erase", "--plate", "鲁L88888", "--yes", "--note", "req-9", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output) == {"registrations": 2, "outbox": 0, "held": []}  # delivered messages left the outbox at PUBACK
    conn = sqlite3.connect(data_dir / DB_NAME)
    try:
        assert [x for (x,) in conn.execute("SELECT registration_id FROM registrations")] == ["r-other"]
        [(actor, criteria, note)] = conn.execute("SELECT actor, criteria, note FROM data_audit").fetchall()
    finally:
        conn.close()
    assert actor.startswith("stationctl registrations erase") and note == "req-9" and "鲁L88888" not in criteria
    r = CliRunner().invoke(main, base(data_dir) + ["registrations", "erase", "--plate", "鲁L88888", "--yes"])
    assert r.exit_code == 1 and "no registrations match" in r.output


def test_registration_window_errors_name_the_key_the_value_and_what_is_allowed(tmp_path: Path) -> None:
    path = tmp_path / "station.toml"
    path.write_text("[vehicle]\nregistration_valid_h = 0\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path, env={})
    (p,) = exc.value.problems
    assert (p.key, p.value, p.where) == ("vehicle.registration_valid_h", 0, "station.toml:2") and "greater than 0" in p.message
    path.write_text('[vehicle]\nregistration_valid_h = "a day"\n')
    with pytest.raises(ConfigError) as exc:
        load_config(path, env={})
    (p,) = exc.value.problems
    assert p.key == "vehicle.registration_valid_h" and p.value == "a day" and "<= 720" in p.message
    assert load_config(None, env={}).vehicle.registration_valid_h == 24.0
