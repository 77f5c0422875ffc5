"""Face detection with the Ultra-Light-Fast-Generic-Face-Detector-1MB (RFB variant) on onnxruntime.

Why this model: about 1 MB, a few ms per frame on one core, and it finds masked and partly turned
faces that OpenCV's Haar cascade misses (see ``models/README`` in the shared notes). The ONNX
graph already decodes its priors, so post-processing is only a score threshold, a rescale to the
frame and a greedy NMS, all done here with numpy.

One ``InferenceSession`` is created per detector and reused: creating it costs tens of ms and
allocates arenas, which must not happen per frame on a Pi.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from station.domain.model import Box, FaceDetection

log = logging.getLogger("station.detect")

# The reference normalisation of the model: (pixel - 127) / 128, RGB, NCHW.
_MEAN = np.float32(127.0)
_SCALE = np.float32(1.0 / 128.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Suppress non-maximal boxes greedily; return the indices kept, best score first.

    ``boxes`` is K×4 corner form (x1, y1, x2, y2) in any consistent unit.
    """
    if boxes.size == 0:
        return []
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = np.clip(x2 - x1, 0.0, None) * np.clip(y2 - y1, 0.0, None)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size > 0:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        ix = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0.0, None)
        iy = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0.0, None)
        inter = ix * iy
        union = areas[i] + areas[rest] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[iou <= iou_threshold]
    return keep


class UltraFaceDetector:
    """``FaceDetector`` over an UltraFace RFB ONNX model (320×240 or 640×480 input)."""

    def __init__(
        self,
        model_path: Path,
        input_size: tuple[int, int] = (320, 240),
        score_threshold: float = 0.7,
        nms_iou: float = 0.3,
        threads: int = 1,
    ) -> None:
        model_path = Path(model_path)
        if not model_path.is_file():
            raise FileNotFoundError(f"face model not found: {model_path}")
        self.name = "ultraface-rfb-320" if tuple(input_size) == (320, 240) else f"ultraface-rfb-{input_size[0]}"
        self.model_path = model_path
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.score_threshold = float(score_threshold)
        self.nms_iou = float(nms_iou)

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, int(threads))
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # The exported graph carries unused BatchNorm counters; onnxruntime warns about each one at
        # load time. They are harmless, so only errors reach the log.
        opts.log_severity_level = 3
        self._session = ort.InferenceSession(str(model_path), sess_options=opts, providers=["CPUExecutionProvider"])
        inp = self._session.get_inputs()[0]
        self._input_name = inp.name
        shape = inp.shape  # [1, 3, H, W]
        if len(shape) != 4 or shape[2] != self.input_size[1] or shape[3] != self.input_size[0]:
            raise ValueError(f"{model_path.name} expects input {shape}, not {self.input_size[0]}x{self.input_size[1]}")
        outputs = {o.name for o in self._session.get_outputs()}
        if not {"scores", "boxes"} <= outputs:
            raise ValueError(f"{model_path.name} lacks 'scores'/'boxes' outputs (has {sorted(outputs)})")
        log.info(
            "face detector loaded",
            extra={"model": model_path.name, "input": self.input_size, "threads": opts.intra_op_num_threads},
        )

    def warm_up(self) -> float:
        """Run one inference on a blank frame so the first real frame is not slow; return how long it took, in ms."""
        w, h = self.input_size
        blank = np.zeros((h, w, 3), dtype=np.uint8)
        t0 = time.perf_counter()
        self.detect(blank)
        return (time.perf_counter() - t0) * 1000.0

    def _preprocess(self, image: np.ndarray) -> np.ndarray:
        w, h = self.input_size
        if image.shape[1] != w or image.shape[0] != h:
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        blob = (rgb.astype(np.float32) - _MEAN) * _SCALE
        return np.ascontiguousarray(blob.transpose(2, 0, 1)[np.newaxis])

    def detect(self, image: np.ndarray) -> list[FaceDetection]:
        """Return the faces in a BGR uint8 frame, best score first, boxes in the frame's pixel coordinates."""
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an H×W×3 BGR image, got shape {image.shape}")
        frame_h, frame_w = image.shape[:2]
        scores, boxes = self._session.run(["scores", "boxes"], {self._input_name: self._preprocess(image)})
        face = scores[0, :, 1]
        mask = face > self.score_threshold
        if not np.any(mask):
            return []
        kept_scores = face[mask]
        scale = np.array([frame_w, frame_h, frame_w, frame_h], dtype=np.float32)
        kept_boxes = boxes[0][mask] * scale
        kept_boxes[:, [0, 2]] = np.clip(kept_boxes[:, [0, 2]], 0.0, frame_w)
        kept_boxes[:, [1, 3]] = np.clip(kept_boxes[:, [1, 3]], 0.0, frame_h)
        result: list[FaceDetection] = []
        for i in nms(kept_boxes, kept_scores, self.nms_iou):
            x1, y1, x2, y2 = (float(v) for v in kept_boxes[i])
            if x2 <= x1 or y2 <= y1:
                continue
            result.append(FaceDetection(Box(x1, y1, x2, y2), float(kept_scores[i])))
        return result
