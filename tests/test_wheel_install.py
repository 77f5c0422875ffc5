"""A non-editable install from the wheel carries its models: demo, model check and detector work from an empty directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "station" / "models_data"


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A fresh venv (no system site-packages) with the station installed from its wheel; its bin dir and a clean env."""
    base = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["HOME"] = str(base / "home")  # per-user data/config dirs of the new install, not the developer's
    env["PATH"] = str(base / "venv" / "bin") + os.pathsep + env.get("PATH", "")
    # Build from a copy of what the wheel is made of: pip builds in-tree, and a stale build/ in the
    # checkout could put files into the wheel that the sources no longer have.
    src = base / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for package in ("station", "drivers", "sim"):  # [tool.setuptools.packages.find] include
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(base / "dist"), str(src)], base, env, 300)
    assert built.returncode == 0, built.stderr[-3000:]
    assert "BuildBackendWarning" not in built.stderr and "deprecated" not in built.stderr, built.stderr[-3000:]
    (wheel,) = (base / "dist").glob("checkpoint_station-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {"station/models_data/" + p.relative_to(SHIPPED).as_posix() for p in SHIPPED.rglob("*") if p.is_file()}
    assert "station/models_data/manifest.toml" in shipped and shipped <= names
    assert {"station/assets/astronaut.jpg", "sim/demo.py", "station/board/static/board.js"} <= names
    assert not any(n.startswith("tests/") for n in names), "the test photos and rigs never ship"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(base / "venv")
    bin_dir = base / "venv" / "bin"
    # Dependencies come from the index pip is configured with, as on a fresh machine.
    inst = run([str(bin_dir / "python"), "-m", "pip", "install", "-q", str(wheel)], base, env, 600)
    assert inst.returncode == 0, inst.stderr[-3000:]
    return bin_dir, env


@pytest.fixture()
def empty_dir(tmp_path: Path) -> Path:
    d = tmp_path / "empty"
    d.mkdir()
    return d


def test_the_station_package_is_the_installed_one_not_the_source_tree(installed: tuple[Path, dict[str, str]], empty_dir: Path) -> None:
    bin_dir, env = installed
    r = run(
        [str(bin_dir / "python"), "-c", "import station, station.models as m; print(station.__file__); print(m.default_models_dir())"],
        empty_dir,
        env,
        60,
    )
    assert r.returncode == 0, r.stderr
    package_file, models_dir = (Path(line) for line in r.stdout.splitlines())
    assert package_file.is_relative_to(bin_dir.parent) and "site-packages" in package_file.parts
    assert not package_file.is_relative_to(ROOT)
    assert models_dir == package_file.parent / "models_data" and (models_dir / "manifest.toml").is_file()


def test_models_verify_from_an_empty_directory(installed: tuple[Path, dict[str, str]], empty_dir: Path) -> None:
    bin_dir, env = installed
    r = run([str(bin_dir / "stationctl"), "models", "verify", "--json"], empty_dir, env, 120)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert report["ok"] is True and report["problems"] == []
    assert Path(report["dir"]).is_relative_to(bin_dir.parent)


def test_face_detector_loads_the_shipped_model(installed: tuple[Path, dict[str, str]], empty_dir: Path) -> None:
    bin_dir, env = installed
    site = run(
        [str(bin_dir / "python"), "-c", "import station, pathlib; print(pathlib.Path(station.__file__).parent)"],
        empty_dir,
        env,
        60,
    )
    image = Path(site.stdout.strip()) / "assets" / "astronaut.jpg"  # the self-test photo ships in the wheel
    r = run([str(bin_dir / "stationctl"), "detect", "faces", "--json", str(image)], empty_dir, env, 120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(json.loads(r.stdout)["faces"]) == 1
    r = run([str(bin_dir / "stationctl"), "test", "detector", "--json"], empty_dir, env, 120)
    assert r.returncode == 0 and json.loads(r.stdout)["ok"] is True, r.stdout + r.stderr


def test_demo_from_an_empty_directory_decides_as_the_scene_calls_for(
    installed: tuple[Path, dict[str, str]], empty_dir: Path, tmp_path: Path
) -> None:
    bin_dir, env = installed
    r = run(
        [str(bin_dir / "station"), "demo", "--fast", "--people", "3", "--json", "--data-dir", str(tmp_path / "data")], empty_dir, env, 240
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "face model unusable" not in r.stderr and "no manifest" not in r.stderr, r.stderr[-3000:]
    decisions = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    assert [d["person"] for d in decisions] == [0, 1, 2]
    assert [d["decision"] for d in decisions] == [d["expected"] for d in decisions]
    assert all("face" in d["latency_ms"] for d in decisions)
    assert list(empty_dir.iterdir()) == []  # nothing read or written relative to the working directory
