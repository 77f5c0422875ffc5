"""`stationctl`: config edits keep comments and refuse bad values; state comes from the real database."""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from station.cli.stationctl import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cfg_file(tmp_path: Path) -> Path:
    p = tmp_path / "station.toml"
    shutil.copy(ROOT / "config" / "station.toml", p)
    return p


def ctl(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_set_changes_one_value_and_keeps_every_comment(cfg_file: Path):
    before = cfg_file.read_text()
    r = ctl("--config", str(cfg_file), "config", "set", "screening.fever_threshold_c", "37.5")
    assert r.exit_code == 0, r.output
    assert "screening.fever_threshold_c: 37.3 -> 37.5" in r.output
    after = cfg_file.read_text()
    assert "fever_threshold_c = 37.5    # China's threshold; at or above it a person has a fever" in after
    # Only that line changed; the old file is kept beside it.
    diff = [(a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=False) if a != b]
    assert len(diff) == 1 and len(before.splitlines()) == len(after.splitlines())
    assert (cfg_file.parent / "station.toml.bak").read_text() == before
    assert ctl("--config", str(cfg_file), "config", "get", "screening.fever_threshold_c").output.strip() == "37.5"


def test_set_refuses_an_invalid_value_and_leaves_the_file_alone(cfg_file: Path):
    before = cfg_file.read_text()
    r = ctl("--config", str(cfg_file), "config", "set", "thermal.baud", "57600")
    assert r.exit_code == 1
    assert "thermal.baud = 57600" in r.output and "0, 9600, 115200 or 460800" in r.output
    assert cfg_file.read_text() == before
    r = ctl("--config", str(cfg_file), "config", "set", "screening.fever_treshold_c", "37.5")
    assert r.exit_code == 1 and "did you mean 'fever_threshold_c'" in r.output
    assert cfg_file.read_text() == before


def test_set_strings_and_new_keys(cfg_file: Path):
    assert ctl("--config", str(cfg_file), "config", "set", "thermal.port", "/dev/serial/by-id/usb-GY-if00").exit_code == 0
    assert ctl("--config", str(cfg_file), "config", "get", "thermal.port").output.strip() == "/dev/serial/by-id/usb-GY-if00"
    small = cfg_file.parent / "small.toml"
    small.write_text('# site file\n[station]\nid = "gate-7"  # north gate\n')
    assert ctl("--config", str(small), "config", "set", "policy.yellow_code", "deny_code").exit_code == 0
    text = small.read_text()
    assert "# site file" in text and "# north gate" in text and 'yellow_code = "deny_code"' in text


def test_validate_exit_codes_and_messages(cfg_file: Path, tmp_path: Path):
    assert ctl("--config", str(cfg_file), "config", "validate").exit_code == 0
    bad = tmp_path / "bad.toml"
    bad.write_text('[screening]\nfever_threshold_c = 45\n[policy]\ntemperature = "open-anyway"\n')
    r = ctl("config", "validate", str(bad))
    assert r.exit_code == 1
    assert "bad.toml:2: screening.fever_threshold_c = 45" in r.output
    assert "bad.toml:4: policy.temperature = 'open-anyway'" in r.output
    r = ctl("config", "validate", str(bad), "--json")
    data = json.loads(r.output)
    assert data["valid"] is False and {p["key"] for p in data["problems"]} == {"screening.fever_threshold_c", "policy.temperature"}


def test_show_is_the_effective_config(cfg_file: Path):
    r = ctl("--config", str(cfg_file), "config", "show", "--json", env={"CHECKPOINT_SCREENING__CODE_TIMEOUT_S": "4"})
    assert json.loads(r.output)["screening"]["code_timeout_s"] == 4.0
    r = ctl("--config", str(cfg_file), "config", "show")
    assert "[screening]" in r.output and "fever_threshold_c = 37.3" in r.output


def test_get_unknown_key(cfg_file: Path):
    r = ctl("--config", str(cfg_file), "config", "get", "screening.nope")
    assert r.exit_code == 2 and "no setting 'screening.nope'" in r.output


@pytest.mark.slow
def test_events_tail_and_status_read_the_demo_database(demo_run, cfg_file: Path):
    base = ("--config", str(cfg_file), "--data-dir", str(demo_run.data_dir))
    r = ctl(*base, "events", "tail", "-n", "3", "--json")
    assert r.exit_code == 0, r.output
    tail = [json.loads(line) for line in r.output.splitlines()]
    assert [e["event_id"] for e in tail] == [d["event_id"] for d in demo_run.decisions[-3:]]
    r = ctl(*base, "events", "tail", "-n", "50")
    assert len(r.output.splitlines()) == len(demo_run.decisions)
    r = ctl(*base, "status", "--json")
    data = json.loads(r.output)
    assert r.exit_code == 1  # the demo has finished: no daemon is running
    assert data["daemon"]["state"] == "stopped"
    # "today" starts at local midnight: count the demo's events recorded since then (the session's
    # demo may have run before midnight and this test after it).
    midnight = time.mktime(time.localtime()[:3] + (0, 0, 0, 0, 0, -1))
    with sqlite3.connect(demo_run.data_dir / "events.sqlite3") as conn:
        since_midnight = conn.execute("SELECT count(*) FROM events WHERE ts >= ?", (midnight,)).fetchone()[0]
    assert sum(data["today"].values()) == since_midnight
    assert data["last_event"]["event_id"] == demo_run.decisions[-1]["event_id"]
    assert data["outbox"]["pending"] == len(demo_run.decisions) + sum(d["alarm"] for d in demo_run.decisions)


def test_status_without_a_database_says_so(cfg_file: Path, tmp_path: Path):
    r = ctl("--config", str(cfg_file), "--data-dir", str(tmp_path / "none"), "status")
    assert r.exit_code == 1 and "no event database" in r.output


# -- common options before or after the verb -----------------------------------------------------------------


def _walk(group, prefix=()):
    import click

    for name, cmd in group.commands.items():
        yield (*prefix, name), cmd
        if isinstance(cmd, click.Group):
            yield from _walk(cmd, (*prefix, name))


def test_every_command_and_group_takes_the_common_options_after_the_verb():
    seen = 0
    for path, cmd in _walk(main):
        opts = {o for p in cmd.params for o in getattr(p, "opts", ())}
        assert {"--config", "--data-dir", "--json"} <= opts, path
        seen += 1
    assert seen >= 50


def test_data_dir_before_or_after_the_verb_and_after_wins(tmp_path: Path):
    before, after = tmp_path / "before", tmp_path / "after"
    for argv, used in (
        (["--data-dir", str(before), "outbox", "status"], before),
        (["outbox", "status", "--data-dir", str(after)], after),
        (["outbox", "--data-dir", str(after), "status"], after),
        (["--data-dir", str(before), "outbox", "status", "--data-dir", str(after)], after),
        (["--data-dir", str(before), "outbox", "--data-dir", str(after), "status"], after),
    ):
        r = CliRunner().invoke(main, argv, catch_exceptions=False)
        assert r.exit_code == 1
        assert f"no event database at {used / 'events.sqlite3'}" in r.stderr, (argv, r.stderr)


def test_common_options_after_a_nested_verb(tmp_path: Path, cfg_file: Path):
    data = tmp_path / "data"
    r = ctl("plates", "add", "浙A12345", "--data-dir", str(data))
    assert r.exit_code == 0, r.output
    assert "浙A12345" in (data / "resident_plates.txt").read_text(encoding="utf-8")
    r = ctl("plates", "list", "--data-dir", str(data), "--json")
    assert json.loads(r.output)["plates"] == ["浙A12345"]
    r = ctl("--json", "--data-dir", str(data), "plates", "list")
    assert json.loads(r.output)["plates"] == ["浙A12345"]
    # --config after a nested verb, and the later one wins over the earlier.
    other = tmp_path / "other.toml"
    other.write_text('[station]\nid = "gate-9"\n')
    assert ctl("config", "get", "station.id", "--config", str(other)).output.strip() == "gate-9"
    assert ctl("--config", str(cfg_file), "config", "get", "station.id", "--config", str(other)).output.strip() == "gate-9"
    assert ctl("--config", str(other), "config", "get", "station.id").output.strip() == "gate-9"
    r = ctl("--json", "config", "get", "station.id", "--config", str(other))
    assert json.loads(r.output) == {"key": "station.id", "value": "gate-9"}
    # A command without JSON output refuses --json wherever it was given, instead of ignoring it.
    for argv in (["--json", "logs"], ["logs", "--json"]):
        r = CliRunner().invoke(main, argv)
        assert r.exit_code == 2
        assert "has no JSON output" in r.stderr
    assert "after the verb wins" in " ".join(ctl("--help").output.split())
