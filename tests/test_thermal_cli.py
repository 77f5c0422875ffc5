"""`stationctl thermal decode|read|record` and `stationctl calibrate thermal`, on real bytes and a real pty."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from drivers.thermal.capture import CaptureScene, timed_frames
from drivers.thermal.gy_protocol import FrameParser
from sim.gy_mcu90640_emulator import GyMcu90640Emulator
from station.cli.stationctl import main
from station.config import load_config
from tests.support.thermal_golden import GOLDEN_1, GOLDEN_3

ROOT = Path(__file__).resolve().parents[1]


def ctl(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def test_decode_prints_each_valid_frame_in_scene_orientation_then_the_counters(tmp_path: Path):
    damaged = bytearray(GOLDEN_1)
    damaged[700] ^= 0x10  # one flipped bit: this frame is lost, nothing else
    cap = tmp_path / "cap.bin"
    cap.write_bytes(b"\x01\x02\x03" + GOLDEN_3 + bytes(damaged) + GOLDEN_1)
    r = ctl("thermal", "decode", str(cap), "--json")
    assert r.exit_code == 0, r.output
    out = lines(r.output)
    frames, summary = out[:-1], out[-1]["summary"]
    assert [f["index"] for f in frames] == [0, 1]
    expect = FrameParser().feed(GOLDEN_3)[0].pixels_c
    assert len(frames[0]["pixels_c"]) == 24 and all(len(row) == 32 for row in frames[0]["pixels_c"])
    assert frames[0]["pixels_c"] == [[round(float(v), 2) for v in row] for row in expect]
    assert frames[0]["ta_c"] == 26.0 and frames[1]["ta_c"] == 30.0
    assert frames[1]["pixels_c"][0][0] == 25.0
    assert summary["frames"] == 2 and summary["checksum_errors"] == 1
    assert summary["resync_bytes"] == 3 + len(GOLDEN_1)  # the junk prefix and the damaged frame, byte by byte


class Scene:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self, now: float):
        self.n += 1
        img = np.full((24, 32), 24.0)
        img[2, 30] = 33.0  # upper-right: proves orientation survives the whole path
        img[23, 0] = 20.0 + self.n / 100.0
        return img, 31.0


@pytest.mark.slow
def test_read_and_record_a_live_port_then_replay_the_capture_through_the_emulator(tmp_path: Path):
    emu = GyMcu90640Emulator(Scene(), baud=460800, refresh_hz=8.0, seed=1)
    emu.start()
    try:
        r = ctl("thermal", "read", "--port", emu.port, "--baud", "auto", "--refresh-hz", "8", "--frames", "3", "--json")
        assert r.exit_code == 0, r.output
        out = lines(r.output)
        assert [f["index"] for f in out[:3]] == [0, 1, 2] and out[0]["pixels_c"][2][30] == 33.0
        assert out[3]["summary"]["frames"] == 3 and out[3]["summary"]["baud"] == 460800
        cap = tmp_path / "rec.bin"
        r = ctl("thermal", "record", "--port", emu.port, "--baud", "460800", "--refresh-hz", "8", "--seconds", "1.0", "--out", str(cap))
        assert r.exit_code == 0, r.output
        rec = json.loads(r.output)["summary"]
        assert rec["frames"] >= 4 and rec["checksum_errors"] == 0
    finally:
        emu.stop()
    timed = list(timed_frames(cap))
    ts = [t for t, _ in timed]
    assert len(timed) == rec["frames"] and ts == sorted(ts) and ts[-1] - ts[0] > 0.3  # timing kept (8 Hz)
    # Replay: the emulator speaks the protocol again, and the frames it sends are the recorded ones.
    scene = CaptureScene(cap)
    replay = GyMcu90640Emulator(scene, baud=460800, refresh_hz=8.0, seed=2)
    replay.start()
    try:
        r = ctl("thermal", "read", "--port", replay.port, "--baud", "460800", "--refresh-hz", "8", "--frames", "2", "--json")
    finally:
        replay.stop()
    recorded = {json.dumps([[round(float(v), 2) for v in row] for row in f.pixels_c]) for _, f in timed}
    replayed = lines(r.output)[:2]
    assert len(replayed) == 2
    for f in replayed:
        assert json.dumps(f["pixels_c"]) in recorded  # each pixel as recorded, the frame counter pixel too


@pytest.mark.slow
def test_read_fails_cleanly_when_no_module_answers(tmp_path: Path):
    import os

    master, slave = os.openpty()
    try:
        r = CliRunner().invoke(
            main, ["thermal", "read", "--port", os.ttyname(slave), "--baud", "115200", "--frames", "1", "--timeout", "1"]
        )
    finally:
        os.close(master)
        os.close(slave)
    assert r.exit_code == 1


def _write_csv(path: Path, header: list[str], rows: list[list[float]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def test_calibrate_thermal_fits_writes_a_versioned_override_the_station_loads(tmp_path: Path):
    cfg = tmp_path / "station.toml"
    shutil.copy(ROOT / "config" / "station.toml", cfg)
    rng = np.random.default_rng(5)
    rows = []
    for _ in range(12):
        skin, amb, ratio = rng.uniform(34.8, 36.5), rng.uniform(19.0, 25.0), rng.uniform(0.8, 1.25)
        core = skin + 1.4 + 0.15 * (22.0 - amb) + 0.05 * (skin - amb) * (ratio - 1.0)
        rows.append([round(skin, 3), round(core, 3), round(amb, 2), round(ratio, 3)])
    readings = tmp_path / "readings.csv"
    _write_csv(readings, ["skin_c", "reference_c", "ambient_c", "size_ratio"], rows)
    points = tmp_path / "points.csv"
    h = np.array([[0.05, 0.0, -1.7], [0.0, 0.07, -4.5], [0.0, 0.0, 1.0]])
    vis = [[100, 80], [540, 80], [540, 400], [100, 400], [320, 240]]
    _write_csv(points, ["vx", "vy", "tx", "ty"], [[x, y, *(h @ [x, y, 1.0])[:2]] for x, y in vis])
    r = ctl(
        "--config",
        str(cfg),
        "calibrate",
        "thermal",
        "--readings",
        str(readings),
        "--points",
        str(points),
        "--blackbody",
        "28,19,31,22@40",
        "--json",
    )
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    out = tmp_path / "calibration.toml"
    assert rep["written"] == str(out) and "Machine-written" in out.read_text()
    assert rep["compensation"]["fitted"] == ["offset", "ambient", "distance"]
    assert rep["compensation"]["offset_c"] == pytest.approx(1.4, abs=0.01)
    assert rep["registration"]["rmse_px"] < 1e-3
    eff = load_config(cfg, overrides=[out], env={})
    assert eff.thermal.calibration_version == rep["calibration_version"].strip() and eff.thermal.calibration_version.startswith("thermal-")
    assert eff.thermal.offset_c == pytest.approx(1.4, abs=0.01) and eff.thermal.ambient_gain == pytest.approx(0.15, abs=0.01)
    assert eff.thermal.reference_box == [28, 19, 31, 22] and eff.thermal.reference_c == 40.0
    assert np.allclose(eff.thermal.registration, h, atol=1e-6)
    # ...and every event of a lane built from it records that version
    from station.app import lane_for

    assert lane_for(eff).calibration.version == rep["calibration_version"]


def test_calibrate_needs_enough_readings_and_refuses_what_the_station_would_refuse(tmp_path: Path):
    cfg = tmp_path / "station.toml"
    shutil.copy(ROOT / "config" / "station.toml", cfg)
    few = tmp_path / "few.csv"
    _write_csv(few, ["skin_c", "reference_c"], [[35.0, 36.5], [35.2, 36.6]])
    r = CliRunner().invoke(main, ["--config", str(cfg), "calibrate", "thermal", "--readings", str(few)])
    assert r.exit_code == 2 and "at least 3" in r.output
    wild = tmp_path / "wild.csv"
    _write_csv(wild, ["skin_c", "reference_c"], [[25.0, 36.5], [25.2, 36.6], [25.1, 36.7]])  # offset 11.5: out of range
    r = CliRunner().invoke(main, ["--config", str(cfg), "calibrate", "thermal", "--readings", str(wild)])
    assert r.exit_code == 1 and "thermal.offset_c" in r.output
    assert not (tmp_path / "calibration.toml").exists()
