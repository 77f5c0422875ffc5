"""The shipped model set and its manifest: complete, licensed, and matching the published hashes."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

import station
from station import models
from station.models import ManifestError, ModelNotFoundError

PROJECT = Path(__file__).resolve().parents[1]
SHARED_README = PROJECT.parent / "shared" / "models" / "README.md"
SHIPPED = PROJECT / "station" / "models_data"


def test_default_models_dir_is_inside_the_station_package() -> None:
    assert models.default_models_dir() == Path(station.__file__).resolve().parent / "models_data"
    assert models.default_models_dir() == SHIPPED


def test_shipped_models_verify_clean() -> None:
    assert models.verify() == []


def test_manifest_lists_every_model_file_with_licence() -> None:
    entries = models.load_manifest()
    names = {e.name for e in entries}
    assert names == {
        "ultraface-rfb-320",
        "ultraface-rfb-640",
        "plate-detector",
        "plate-recognizer",
        "plate-recognizer-dict",
        "plate-recognizer2",
    }
    listed = {e.file for e in entries}
    on_disk = {
        p.relative_to(SHIPPED).as_posix()
        for p in SHIPPED.rglob("*")
        if p.is_file() and p.name != "manifest.toml" and not p.name.startswith("LICENSE")
    }
    assert on_disk == listed
    for e in entries:
        assert e.licence in ("MIT", "Apache-2.0")
        assert (SHIPPED / e.licence_file).is_file()
        assert e.source and e.task and e.input


@pytest.mark.skipif(not SHARED_README.is_file(), reason="shared model notes not found")
def test_hashes_match_the_published_model_notes() -> None:
    published = dict(re.findall(r"\|\s*`([^`]+)`\s*\|\s*`([0-9a-f]{64})`", SHARED_README.read_text()))
    assert len(published) == 5
    # HyperLPR's second recogniser is not in the shared notes: its hashes are the upstream files' (manifest source).
    not_in_notes = {"plate-recognizer2"}
    for e in models.load_manifest():
        if e.name in not_in_notes:
            assert e.file not in published and "HyperLPR" in e.source
        else:
            assert published[e.file] == e.sha256, e.file


def test_path_for_by_name_and_by_file_name() -> None:
    p = models.path_for("ultraface-rfb-320")
    assert p == SHIPPED / "face" / "ultraface-version-RFB-320.onnx"
    assert models.path_for("ultraface-version-RFB-320.onnx") == p
    assert models.path_for("face/ultraface-version-RFB-320.onnx", SHIPPED) == p
    assert models.path_for("plate-recognizer-dict", check_hash=True).name == "plate-recognizer-dict.txt"
    with pytest.raises(ModelNotFoundError):
        models.path_for("yolo-v99")


@pytest.fixture()
def copy_of_models(tmp_path: Path) -> Path:
    dst = tmp_path / "models"
    shutil.copytree(SHIPPED, dst)
    for p in dst.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dst


def test_tampered_model_is_reported(copy_of_models: Path) -> None:
    target = copy_of_models / "face" / "ultraface-version-RFB-640.onnx"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    problems = models.verify(copy_of_models)
    assert len(problems) == 1 and "ultraface-rfb-640" in problems[0] and "sha256" in problems[0]
    assert models.verify(copy_of_models, check_hashes=False) == []
    assert models.path_for("ultraface-rfb-640", copy_of_models) == target  # size still matches
    with pytest.raises(ManifestError):
        models.path_for("ultraface-rfb-640", copy_of_models, check_hash=True)


def test_truncated_missing_and_unlicensed_files_are_reported(copy_of_models: Path) -> None:
    rec = copy_of_models / "plate" / "plate-recognizer-clp_v2_c_rec.onnx"
    rec.write_bytes(rec.read_bytes()[:1000])
    (copy_of_models / "plate" / "plate-recognizer-dict.txt").unlink()
    (copy_of_models / "face" / "LICENSE.ultraface").unlink()
    problems = models.verify(copy_of_models)
    text = "\n".join(problems)
    assert "plate-recognizer: plate/plate-recognizer-clp_v2_c_rec.onnx is 1000 bytes" in text
    assert "plate-recognizer-dict: file plate/plate-recognizer-dict.txt is missing" in text
    assert text.count("licence file face/LICENSE.ultraface is missing") == 2
    with pytest.raises(ManifestError):
        models.path_for("plate-recognizer", copy_of_models)
    with pytest.raises(FileNotFoundError):
        models.path_for("plate-recognizer-dict", copy_of_models)


def test_manifest_problems(copy_of_models: Path) -> None:
    manifest = copy_of_models / "manifest.toml"
    original = manifest.read_text()

    manifest.write_text(original.replace('file = "face/ultraface-version-RFB-320.onnx"', 'file = "../../etc/passwd"'))
    assert any("outside the models directory" in p for p in models.verify(copy_of_models))

    manifest.write_text(original + "\n[[model]]\nname = 'broken'\n")
    assert "lacks" in models.verify(copy_of_models)[0]

    manifest.write_text("this is = = not toml")
    assert "not valid TOML" in models.verify(copy_of_models)[0]

    manifest.write_text(original.replace("schema = 1", "schema = 2"))
    assert "schema" in models.verify(copy_of_models)[0]

    manifest.unlink()
    assert "no manifest" in models.verify(copy_of_models)[0]
    with pytest.raises(ManifestError):
        models.load_manifest(copy_of_models)


def test_duplicate_names_are_reported(copy_of_models: Path) -> None:
    manifest = copy_of_models / "manifest.toml"
    text = manifest.read_text().replace('name = "ultraface-rfb-640"', 'name = "ultraface-rfb-320"')
    manifest.write_text(text)
    assert any("listed more than once" in p for p in models.verify(copy_of_models))
