"""Int8 plate models with onnxruntime.quantization: ``python -m bench.quantize_plates OUT_DIR [--check]``.

Build-time only (needs the ``onnx`` package, which the station does not): writes

- ``plate-detector-clp_det-int8.onnx``: static QDQ quantisation (int8 weights per channel, uint8
  activations) of the detector, calibrated (min/max) on the **tune split** of the plate evaluation
  set (``tests/data/plates/manifest.csv``; rendered frames, plus the real ones when they are there)
  at the sizes the reader feeds it: the frame at its coarse side and the refine crops. Never the
  held-out split;
- ``plate-recognizer-clp_v2_c_rec-int8.onnx``: dynamic quantisation (int8 weights, activations
  quantised per call) of the recogniser; no calibration data needed.

Each is then measured for speed and accuracy with ``python -m bench.plates`` / ``bench.vehicle``.
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

DETECTOR_INT8 = "plate-detector-clp_det-int8.onnx"
RECOGNIZER_INT8 = "plate-recognizer-clp_v2_c_rec-int8.onnx"


def calibration_frames(max_frames: int = 40, coarse_side: int = 640) -> list[np.ndarray]:
    """Return detector input blobs from the tune split: whole frames at ``coarse_side`` and crops around the labelled plates."""
    import cv2

    from bench.plates import image_path, load_manifest, pad_crop
    from drivers.detect.plates import _DET_MEAN, REFINE_MAX_SIDE, REFINE_PLATE_WIDTH

    rows = [r for r in load_manifest() if r["split"] == "tune"]
    blobs: list[np.ndarray] = []
    seen: set[str] = set()
    for row in rows:
        if row["file"] in seen or len(blobs) >= max_frames:
            continue
        seen.add(row["file"])
        img = cv2.imread(str(image_path(row["file"])), cv2.IMREAD_COLOR)
        if img is None:
            continue
        if row["kind"] == "crop":
            img = pad_crop(img)
        views = [_scaled(img, coarse_side)]
        if row["box"]:
            x1, y1, x2, y2 = (int(v) for v in row["box"])
            bw, bh = x2 - x1, y2 - y1
            crop = img[max(0, y1 - bh) : y2 + bh, max(0, x1 - bw // 2) : x2 + bw // 2]
            if crop.size:
                scale = min(3.0, REFINE_PLATE_WIDTH / max(1, bw))
                crop = cv2.resize(crop, (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale))))
                views.append(_scaled(crop, REFINE_MAX_SIDE))
        for v in views:
            blobs.append(np.ascontiguousarray((v.astype(np.float32) - _DET_MEAN).transpose(2, 0, 1)[np.newaxis]))
    return blobs


def _scaled(img: np.ndarray, side: int) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    s = min(1.0, side / max(h, w))
    return cv2.resize(img, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA) if s < 1 else img


class _Reader:
    """onnxruntime's CalibrationDataReader over a list of blobs (one input)."""

    def __init__(self, name: str, blobs: list[np.ndarray]) -> None:
        self._it: Iterator[np.ndarray] = iter(blobs)
        self._name = name

    def get_next(self) -> dict[str, Any] | None:
        blob = next(self._it, None)
        return None if blob is None else {self._name: blob}


def quantize(out_dir: Path, models_dir: Path | None = None) -> dict[str, str]:
    """Write both int8 models to ``out_dir``; return their sha256."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from station.models import path_for

    out_dir.mkdir(parents=True, exist_ok=True)
    det = path_for("plate-detector", models_dir)
    rec = path_for("plate-recognizer", models_dir)
    # The detector is opset 9; per-channel QDQ needs DequantizeLinear's axis (opset 13).
    import onnx
    from onnx import version_converter

    opset13 = out_dir / "det-opset13.onnx"
    onnx.save(version_converter.convert_version(onnx.load(str(det)), 13), str(opset13))
    pre = out_dir / "det-pre.onnx"
    quant_pre_process(str(opset13), str(pre), skip_symbolic_shape=True)
    opset13.unlink()
    blobs = calibration_frames()
    quantize_static(
        str(pre),
        str(out_dir / DETECTOR_INT8),
        _Reader("image", blobs),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        calibrate_method=CalibrationMethod.MinMax,
    )
    pre.unlink()
    quantize_dynamic(str(rec), str(out_dir / RECOGNIZER_INT8), weight_type=QuantType.QUInt8)
    return {name: hashlib.sha256((out_dir / name).read_bytes()).hexdigest() for name in (DETECTOR_INT8, RECOGNIZER_INT8)}


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.quantize_plates", description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", type=Path)
    args = ap.parse_args()
    for name, digest in quantize(args.out_dir).items():
        print(f"{name} {(args.out_dir / name).stat().st_size} {digest}")


if __name__ == "__main__":
    main()
