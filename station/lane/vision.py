"""Building the vision adapters from config, and what the station does when a model is unusable.

A missing, truncated or swapped model file must never crash-loop the daemon (systemd would restart
it forever and nobody at the gate would know why). Instead the station starts *degraded*: the face
detector is replaced by ``UnavailableFaceDetector``, which finds no faces, so the lane never opens a
screening and the gate stays in its safe (closed) state; the reason is logged as an error, put in
systemd's READY status and in ``stationctl status`` as ``detector: "degraded: <reason>"``. Staff
screen by hand until ``stationctl models install --from DIR`` puts a verified set back.

Every model file is checked against its sha256 in ``station/models_data/manifest.toml`` before it is loaded.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from station.domain.model import FaceDetection
from station.ports import FaceDetector, PlateReader

log = logging.getLogger("station.lane.vision")

OK = "ok"


class UnavailableFaceDetector:
    """Stands in for a face detector whose model could not be loaded: finds nothing, says why."""

    def __init__(self, wanted: str, reason: str) -> None:
        self.name = f"unavailable:{wanted}"
        self.reason = reason
        self.state = f"degraded: {reason}"

    def warm_up(self) -> float:
        """Return 0 ms: there is nothing to warm up."""
        return 0.0

    def detect(self, image: np.ndarray) -> list[FaceDetection]:
        """Return no faces, so the lane never opens a screening."""
        return []


def detector_state(detector: object) -> str:
    """Return ``"ok"`` or ``"degraded: <reason>"`` for any face detector."""
    return str(getattr(detector, "state", OK))


def build_face_detector(face: str, models_dir: Path, *, score_threshold: float = 0.7, threads: int = 1) -> FaceDetector:
    """Build the configured face detector, or an ``UnavailableFaceDetector`` saying what is wrong."""
    if face == "haar":
        from drivers.detect.haar import HaarFaceDetector, HaarUnavailableError

        try:
            return HaarFaceDetector()
        except HaarUnavailableError as exc:
            log.error("face detector unavailable, lane will not open detector=haar reason=%s", exc)
            return UnavailableFaceDetector(face, str(exc))

    from station.models import ManifestError, ModelNotFoundError, path_for

    size = (320, 240) if face == "ultraface-rfb-320" else (640, 480)
    try:
        path = path_for(face, models_dir, check_hash=True)
    except (ManifestError, ModelNotFoundError, FileNotFoundError, OSError) as exc:
        reason = f"model {face}: {exc.args[0] if exc.args else exc}"
        log.error("face model unusable, lane will not open detector=%s models_dir=%s reason=%s", face, models_dir, reason)
        return UnavailableFaceDetector(face, reason)
    from drivers.detect.ultraface import UltraFaceDetector

    try:
        return UltraFaceDetector(path, input_size=size, score_threshold=score_threshold, threads=threads)
    except Exception as exc:  # onnxruntime raises its own types for a bad graph; logged, station degrades
        reason = f"model {face}: {path} could not be loaded: {exc}"
        log.error("face model failed to load, lane will not open detector=%s reason=%s", face, reason)
        return UnavailableFaceDetector(face, reason)


def build_plate_reader(
    models_dir: Path,
    *,
    threads: int = 1,
    max_side: int = 640,
    score_threshold: float = 0.7,
    low_memory: bool = True,
    track_s: float = 0.0,
    second_opinion: bool = True,
) -> tuple[PlateReader | None, str]:
    """Build the plate reader and say its state: (reader or None, ``"ok"`` or ``"degraded: <reason>"``), checked like the face detector."""
    from station.models import ManifestError, ModelNotFoundError, path_for

    try:
        for name in ("plate-detector", "plate-recognizer", "plate-recognizer-dict", "plate-recognizer2"):
            path_for(name, models_dir, check_hash=True)
    except (ManifestError, ModelNotFoundError, FileNotFoundError, OSError) as exc:
        reason = f"plate models: {exc.args[0] if exc.args else exc}"
        log.error("plate models unusable reason=%s", reason)
        return None, f"degraded: {reason}"
    from drivers.detect.plates import OnnxPlateReader

    try:
        reader = OnnxPlateReader.from_models_dir(
            models_dir,
            threads=threads,
            max_side=max_side,
            score_threshold=score_threshold,
            low_memory=low_memory,
            track_s=track_s,
            second_opinion=second_opinion,
        )
    except Exception as exc:  # onnxruntime raises its own types for a bad graph; logged, station degrades
        log.error("plate models failed to load reason=%s", exc)
        return None, f"degraded: plate models could not be loaded: {exc}"
    return reader, OK
