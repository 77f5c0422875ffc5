"""``stationctl idcard read`` and ``stationctl test idcard`` against the emulator's pty, through CliRunner."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from sim.idcard_emulator import EmulatedCard, IdCardEmulator
from station.cli.stationctl import main

ID_NUMBER = "11010119900307803X"


@pytest.fixture
def emu() -> Iterator[IdCardEmulator]:
    with IdCardEmulator() as e:
        yield e


def _run(tmp_path: Path, *args: str) -> tuple[int, str]:
    key = tmp_path / "centre.key"
    key.write_text("11" * 32)
    config = tmp_path / "station.toml"
    config.write_text(f'[idcard]\nkey_file = "{key}"\nport = "{tmp_path / "no-reader"}"\n')
    result = CliRunner().invoke(main, ["--config", str(config), "--data-dir", str(tmp_path / "data"), *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def test_read_prints_the_masked_number_never_the_number(emu: IdCardEmulator, tmp_path: Path) -> None:
    emu.present_card(EmulatedCard(ID_NUMBER, valid_to="长期"))
    code, out = _run(tmp_path, "idcard", "read", "--port", emu.port, "--json")
    assert code == 0, out
    record = json.loads(out)
    assert record["outcome"] == "read" and record["id_masked"] == "1****************X"
    assert record["hash_key"] == "centre" and record["valid_to"] is None and record["expired"] is False
    code, text = _run(tmp_path, "idcard", "read", "--port", emu.port)
    assert code == 0 and "1****************X" in text and "long term" in text
    assert ID_NUMBER not in out + text
    assert not any(ID_NUMBER.encode() in p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name != "centre.key")


def test_read_without_a_card_exits_1(emu: IdCardEmulator, tmp_path: Path) -> None:
    code, out = _run(tmp_path, "idcard", "read", "--port", emu.port, "--timeout", "0.3", "--json")
    assert code == 1 and json.loads(out)["outcome"] == "no_card"


def test_read_on_a_missing_port_exits_2_in_one_line(tmp_path: Path) -> None:
    code, out = _run(tmp_path, "idcard", "read")
    assert code == 2 and "cannot open" in out and "Traceback" not in out


def test_test_idcard_passes_and_fails(emu: IdCardEmulator, tmp_path: Path) -> None:
    code, out = _run(tmp_path, "test", "idcard", "--port", emu.port)
    assert code == 0 and out.startswith("idcard: PASS")
    emu.selftest_fails = True
    code, out = _run(tmp_path, "test", "idcard", "--port", emu.port, "--json")
    assert code == 1 and json.loads(out)["ok"] is False and "sam_selftest_failed" in json.loads(out)["detail"]
    code, out = _run(tmp_path, "test", "idcard")
    assert code == 1 and "cannot open" in out and "Traceback" not in out
