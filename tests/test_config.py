"""The configuration schema, its defaults file and the errors a technician sees."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from station.config import ConfigError, StationConfig, load_config, validate_text

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = ROOT / "config" / "station.toml"


def test_defaults_file_is_exactly_the_embedded_defaults():
    # The commented file in config/ documents the built-in defaults; they must never drift apart.
    data = tomllib.loads(DEFAULTS.read_text())
    assert StationConfig.model_validate(data).model_dump() == StationConfig().model_dump()
    assert validate_text(DEFAULTS.read_text()) == []


def test_defaults_file_sets_every_key():
    data = tomllib.loads(DEFAULTS.read_text())
    for section, model in StationConfig.model_fields.items():
        assert set(data[section]) == set(model.annotation.model_fields), section


def write(tmp_path: Path, text: str, name: str = "station.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def problems(tmp_path: Path, text: str, env: dict[str, str] | None = None):
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, text), env=env or {})
    return exc.value.problems


def test_wrong_value_names_key_line_value_and_what_is_allowed(tmp_path):
    (p,) = problems(tmp_path, '[station]\nid = "x"\n\n[screening]\nfever_threshold_c = "high"\n')
    assert p.key == "screening.fever_threshold_c"
    assert p.where == "station.toml:5"
    assert p.value == "high"
    assert "valid number" in p.message and ">= 35.0" in p.message and "<= 40.0" in p.message
    assert str(p).startswith("station.toml:5: screening.fever_threshold_c = 'high': ")


def test_out_of_range_value(tmp_path):
    (p,) = problems(tmp_path, "[screening]\nfever_threshold_c = 41.5\n")
    assert (p.key, p.value, p.where) == ("screening.fever_threshold_c", 41.5, "station.toml:2")
    assert "less than or equal to 40" in p.message


def test_choice_lists_the_choices(tmp_path):
    (p,) = problems(tmp_path, "[thermal]\nbaud = 57600\n")
    assert p.key == "thermal.baud" and p.value == 57600
    assert "0, 9600, 115200 or 460800" in p.message


def test_typo_is_an_error_with_a_suggestion(tmp_path):
    (p,) = problems(tmp_path, "[screening]\nfever_treshold_c = 37.5\n")
    assert p.key == "screening.fever_treshold_c"
    assert "unknown key" in p.message and "did you mean 'fever_threshold_c'" in p.message


def test_unknown_section(tmp_path):
    (p,) = problems(tmp_path, '[thermall]\nport = "/dev/ttyUSB1"\n')
    assert p.key == "thermall" and "did you mean 'thermal'" in p.message


def test_cross_field_rules(tmp_path):
    (p,) = problems(tmp_path, "[thermal]\nbaud = 115200\nrefresh_hz = 8\n")
    assert p.key == "thermal" and "needs more than 115200 baud" in p.message
    (p,) = problems(tmp_path, "[gate]\nred_pin = 17\n")
    assert "distinct" in p.message
    (p,) = problems(tmp_path, "[screening]\nvalid_max_c = 38.0\nfever_threshold_c = 38.5\n")
    assert "valid_min_c < fever_threshold_c < valid_max_c" in p.message


def test_every_problem_is_reported_at_once(tmp_path):
    ps = problems(tmp_path, '[screening]\nstable_samples = 0\n[policy]\ntemperature = "lenient"\n[mqtt]\nurl = "http://x"\n')
    assert {p.key for p in ps} == {"screening.stable_samples", "policy.temperature", "mqtt.url"}


def test_syntax_error_names_the_file(tmp_path):
    (p,) = problems(tmp_path, "[screening\nfever_threshold_c = 37\n")
    assert p.key == "(syntax)" and "TOML syntax error" in p.message


def test_layers_file_override_environment(tmp_path):
    main = write(tmp_path, "[screening]\nfever_threshold_c = 37.5\ncode_timeout_s = 7.0\n")
    cal = write(tmp_path, "[thermal]\noffset_c = 0.6\n[screening]\ncode_timeout_s = 6.0\n", "calibration.toml")
    cfg = load_config(main, [cal], env={"CHECKPOINT_SCREENING__CODE_TIMEOUT_S": "4.5", "CHECKPOINT_STATION__ID": "42", "UNRELATED": "x"})
    assert cfg.screening.fever_threshold_c == 37.5
    assert cfg.thermal.offset_c == 0.6
    assert cfg.screening.code_timeout_s == 4.5
    assert cfg.station.id == "42"


def test_bad_environment_value_names_the_variable(tmp_path):
    (p,) = problems(tmp_path, "", env={"CHECKPOINT_POLICY__YELLOW_CODE": "pass"})
    assert p.where == "env CHECKPOINT_POLICY__YELLOW_CODE" and p.value == "pass"
    assert "'deny_code' or 'manual_check'" in p.message


def test_no_file_means_defaults():
    assert load_config(None, env={}) == StationConfig()
