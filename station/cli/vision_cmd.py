"""``stationctl models …`` and ``stationctl detect …``: provisioned model files and one-shot detection.

cv2 and onnxruntime are imported inside the commands that need them: ``stationctl`` must start fast
on a Pi for every other command.

- ``models list [--json]``: the manifest of the station's models directory, with each file's state;
- ``models verify [--json]``: exit 0 when every file matches its size and sha256 and has its licence,
  1 otherwise (one problem per line);
- ``models install --from DIR``: verifies DIR's set (its own manifest, sizes, hashes, licences) into
  a staging directory beside the models directory, then swaps it in; the old set is kept as
  ``<dir>.previous``. A bad set is refused and nothing is changed. Restart the station afterwards.
- ``detect faces IMAGE… [--json]`` / ``detect plates IMAGE… [--json]``: one line per image.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import click

from station.cli.common import Ctx, echo_json, group


def _models_dir(obj: Ctx) -> Path:
    from station.app import models_dir_for

    return models_dir_for(obj.load())


@group("models")
def models_cmd() -> None:
    """List, verify and install the model files."""


@models_cmd.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per model")
@click.pass_obj
def models_list(obj: Ctx, as_json: bool) -> None:
    """List the models in the manifest and whether each file is present and intact."""
    from station.models import ManifestError, load_manifest, sha256_file

    d = _models_dir(obj)
    try:
        entries = load_manifest(d)
    except ManifestError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    bad = False
    for e in entries:
        path = d / e.file
        if not path.is_file():
            state = "missing"
        elif path.stat().st_size != e.size or sha256_file(path) != e.sha256:
            state = "corrupt"
        else:
            state = "ok"
        bad = bad or state != "ok"
        if as_json:
            echo_json(
                {"name": e.name, "file": e.file, "size": e.size, "sha256": e.sha256, "licence": e.licence, "task": e.task, "state": state},
                indent=None,
            )
        else:
            click.echo(f"{e.name:<24s} {state:<8s} {e.size:>9d}  {e.licence:<11s} {e.task:<26s} {e.file}")
    sys.exit(1 if bad else 0)


@models_cmd.command("verify")
@click.option("--json", "as_json", is_flag=True)
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Check this directory instead of the station's",
)
@click.pass_obj
def models_verify(obj: Ctx, as_json: bool, directory: Path | None) -> None:
    """Exit 0 when every model matches the manifest (size, sha256, licence file), else 1."""
    from station.models import verify

    d = directory if directory is not None else _models_dir(obj)
    problems = verify(d)
    if as_json:
        echo_json({"dir": str(d), "ok": not problems, "problems": problems}, indent=None)
    else:
        for p in problems:
            click.echo(p)
        if not problems:
            click.echo(f"{d}: all models verified")
    sys.exit(1 if problems else 0)


@models_cmd.command("install")
@click.option(
    "--from",
    "source",
    required=True,
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="Directory with manifest.toml, the models and their licences",
)
@click.pass_obj
def models_install(obj: Ctx, source: Path) -> None:
    """Copy a verified model set into the station's models directory (atomic swap, old set kept)."""
    from station.models import MANIFEST_NAME, load_manifest, verify

    dest = _models_dir(obj)
    problems = verify(source)
    if problems:
        click.echo(f"refused: {source} does not verify, nothing was changed:", err=True)
        for p in problems:
            click.echo(f"  {p}", err=True)
        sys.exit(1)
    entries = load_manifest(source)
    staging = dest.with_name(dest.name + ".installing")
    previous = dest.with_name(dest.name + ".previous")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    files = {MANIFEST_NAME} | {e.file for e in entries} | {e.licence_file for e in entries if e.licence_file}
    for rel in sorted(files):
        (staging / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / rel, staging / rel)
    # Check the copies, not only the source: a short write on a full SD card must not be installed.
    problems = verify(staging)
    if problems:
        shutil.rmtree(staging)
        click.echo("refused: the copied files do not verify (disk full?), nothing was changed:", err=True)
        for p in problems:
            click.echo(f"  {p}", err=True)
        sys.exit(1)
    if previous.exists():
        shutil.rmtree(previous)
    if dest.exists():
        dest.rename(previous)
    staging.rename(dest)
    click.echo(f"installed {len(entries)} models into {dest} (previous set kept in {previous.name}); restart the station to load them")


# -- detect -----------------------------------------------------------------------------------------


@group("detect")
def detect() -> None:
    """Run the station's detectors on image files."""


def _read_image(path: Path) -> Any:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        click.echo(f"{path}: not a readable image", err=True)
    return img


@detect.command("faces")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--json", "as_json", is_flag=True, help='One line per image: {"image", "faces": [{"box", "score"}]}')
@click.option(
    "--detector",
    type=click.Choice(["ultraface-rfb-320", "ultraface-rfb-640", "haar"]),
    default=None,
    help="Default: detector.face from the config",
)
@click.pass_obj
def detect_faces(obj: Ctx, images: tuple[Path, ...], as_json: bool, detector: str | None) -> None:
    """Faces in each image (exit 1 if an image cannot be read or the model is unusable)."""
    from station.lane.vision import build_face_detector, detector_state

    cfg = obj.load()
    det = build_face_detector(
        detector or cfg.detector.face, _models_dir(obj), score_threshold=cfg.detector.score_threshold, threads=cfg.detector.threads
    )
    state = detector_state(det)
    if state != "ok":
        click.echo(f"face detector {state}", err=True)
        sys.exit(1)
    failed = False
    for path in images:
        img = _read_image(path)
        if img is None:
            failed = True
            continue
        faces = [{"box": f.box.as_list(), "score": round(f.score, 4)} for f in det.detect(img)]
        if as_json:
            echo_json({"image": str(path), "faces": faces}, indent=None)
        else:
            click.echo(f"{path}: {len(faces)} face(s) " + " ".join(f"{f['box']}@{f['score']:.2f}" for f in faces))
    sys.exit(1 if failed else 0)


@detect.command("plates")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--json", "as_json", is_flag=True, help='One line per image: {"image", "plates": [{"box", "text", "score"}]}')
@click.option("--max-side", type=click.IntRange(160, 4096), default=640, show_default=True, help="Longest side the detector sees")
@click.pass_obj
def detect_plates(obj: Ctx, images: tuple[Path, ...], as_json: bool, max_side: int) -> None:
    """Plates in each image, read to text (exit 1 if an image cannot be read or the models are unusable)."""
    from station.lane.vision import build_plate_reader

    cfg = obj.load()
    reader, state = build_plate_reader(
        _models_dir(obj), threads=cfg.detector.threads, max_side=max_side, second_opinion=cfg.vehicle.plate_second_opinion
    )
    if reader is None:
        click.echo(f"plate reader {state}", err=True)
        sys.exit(1)
    failed = False
    for path in images:
        img = _read_image(path)
        if img is None:
            failed = True
            continue
        plates = [
            {
                "box": p["box"],
                "text": p["text"],
                "score": p["score"],
                "confidence": p["confidence"],
                "corners": p["corners"],
                "rows": p["rows"],
                # Added with the plausibility check (issue 17); older readers leave them out.
                **{k: p[k] for k in ("raw_text", "plate_type", "plausible") if k in p},
            }
            for p in reader.read(img)
        ]
        if as_json:
            echo_json({"image": str(path), "plates": plates}, indent=None)
        else:
            click.echo(f"{path}: " + (", ".join(f"{p['text']} ({p['confidence']:.2f})" for p in plates) or "no plate"))
    sys.exit(1 if failed else 0)


# -- resident plates --------------------------------------------------------------------------------


@group("plates")
def plates_cmd() -> None:
    """Edit the resident plate list (<data_dir>/resident_plates.txt): vehicles not on it raise outsider_vehicle."""


def _resident_file(obj: Ctx) -> Path:
    from station.store.residents import resident_path

    return resident_path(obj.data_dir())


@plates_cmd.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def plates_list(obj: Ctx, as_json: bool) -> None:
    """List the resident plates."""
    from station.store.residents import load

    plates = load(_resident_file(obj))
    if as_json:
        echo_json({"file": str(_resident_file(obj)), "plates": plates}, indent=None)
    else:
        for p in plates:
            click.echo(p)


@plates_cmd.command("add")
@click.argument("plates", nargs=-1, required=True)
@click.pass_obj
def plates_add(obj: Ctx, plates: tuple[str, ...]) -> None:
    """Add plates (exit 2 if one is not a plate; nothing is written then)."""
    from station.store.residents import PlateTextError, add, check_plate

    try:
        checked = [check_plate(p) for p in plates]
    except PlateTextError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    for p in checked:
        click.echo(f"{p}: {'added' if add(_resident_file(obj), p) else 'already listed'}")


@plates_cmd.command("remove")
@click.argument("plates", nargs=-1, required=True)
@click.pass_obj
def plates_remove(obj: Ctx, plates: tuple[str, ...]) -> None:
    """Remove plates (exit 1 if one was not listed)."""
    from station.store.residents import remove

    missing = False
    for p in plates:
        gone = remove(_resident_file(obj), p)
        missing = missing or not gone
        click.echo(f"{p}: {'removed' if gone else 'not listed'}")
    sys.exit(1 if missing else 0)
