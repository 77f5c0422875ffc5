"""Face tracking over frames: an IoU / centroid tracker with a short memory. Pure: no I/O, no clocks.

Why: "one screening per person" needs to know that the face in this frame is the same person as in
the last one, and that a smaller face behind the screened person is somebody else. A detector gives
boxes per frame only; this module gives each person a stable id.

How a detection is matched to a track (greedy, best pair first):

0. size: a face never shrinks by more than ``max_size_ratio`` between sightings (people walk
   towards the camera); a smaller face inside the box of the person who just walked on is the next
   person, however much they overlap;
1. overlap: IoU ≥ ``iou_min`` (a person standing or walking slowly at 10–15 fps overlaps heavily);
2. otherwise nearness: centre distance ≤ ``max_jump`` × the track's box height *and* a size ratio
   within ``max_size_ratio`` (a quick step between two frames). The size gate is what keeps a second
   person behind the first apart: they are farther away, so their face is clearly smaller.

A track not seen for ``memory_s`` is forgotten (a short detection drop-out keeps the id; someone
who leaves and comes back much later is a new track). Ids are never reused.

The best frame of a track (the capture crop) is chosen by ``capture_score``: larger, sharper and
more frontal is better. The pipeline computes the sharpness on the crop (Laplacian variance) and
keeps the crop; scoring and bookkeeping live here so they can be tested with plain numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from station.domain.model import Box

# Sharpness (Laplacian variance of the grey crop) at which a crop counts as half-way sharp: typical
# in-focus faces at the gate score a few hundred, motion-blurred ones a few tens.
SHARPNESS_HALF = 60.0


def capture_score(face_px: float, sharpness: float, frontal: float = 1.0) -> float:
    """Return how good a face crop is as the capture of a person: bigger, sharper, more frontal.

    ``face_px`` is the face-box height, ``sharpness`` the Laplacian variance of the grey crop,
    ``frontal`` in [0, 1] (the detector's score is a usable proxy: turned faces score lower).
    Sharpness saturates (a crop twice as sharp is not twice as useful once it is in focus).
    """
    if face_px <= 0 or sharpness < 0:
        return 0.0
    sharp = sharpness / (sharpness + SHARPNESS_HALF)
    return face_px * sharp * max(0.0, min(1.0, frontal))


@dataclass(slots=True)
class Track:
    """One tracked person: the latest box, the first sighting and the best capture so far."""

    id: int
    box: Box
    score: float
    first_t: float
    last_t: float
    first_centre: tuple[float, float]
    first_height: float = 0.0
    hits: int = 1
    best_capture: float = -1.0
    best_capture_t: float | None = None
    best_capture_ref: object | None = None  # whatever the caller uses to find the crop (a frame seq)
    centres: list[tuple[float, float, float]] = field(default_factory=list)  # (t, cx, cy), newest last

    def offer_capture(self, score: float, t: float, ref: object | None = None) -> bool:
        """Keep this frame as the track's capture if it beats the best so far; return True when it does."""
        if score > self.best_capture:
            self.best_capture, self.best_capture_t, self.best_capture_ref = score, t, ref
            return True
        return False

    def displacement(self) -> tuple[float, float]:
        """Return (dx, dy) of the box centre from the first sighting to now, in pixels."""
        cx, cy = self.box.centre
        return cx - self.first_centre[0], cy - self.first_centre[1]


@dataclass(frozen=True, slots=True)
class TrackerSettings:
    """How close a detection must be to a track to continue it, and how long tracks are kept."""

    iou_min: float = 0.3
    max_jump: float = 0.6  # centre distance, in track box heights, still matched without overlap
    max_size_ratio: float = 1.35  # larger / smaller box height still matched without overlap
    memory_s: float = 0.8  # a track unseen this long is forgotten
    history: int = 32  # centres kept per track (direction of travel)


class FaceTracker:
    """Assign stable ids to boxes over time; feed ``update`` every frame's boxes in time order."""

    def __init__(self, settings: TrackerSettings | None = None) -> None:
        self.settings = settings or TrackerSettings()
        self.tracks: dict[int, Track] = {}
        self._next_id = 1

    def _size_fits(self, track: Track, box: Box) -> bool:
        """Return True when ``box`` is a size ``track``'s person can have now.

        People walk towards the camera and pass beside it, so a face may grow fast; but it never
        shrinks by more than ``max_size_ratio`` between sightings. A face well inside a larger one
        that was just there is the next person behind, not the person who walked on.
        """
        h_t, h_b = track.box.height, box.height
        return h_t > 0 and h_b > 0 and h_t / h_b <= self.settings.max_size_ratio

    def _match_cost(self, track: Track, box: Box) -> float | None:
        """Return the cost of matching ``box`` to ``track`` (lower is better), or None when they may not match."""
        st = self.settings
        if not self._size_fits(track, box):
            return None
        iou = track.box.iou(box)
        if iou >= st.iou_min:
            return 1.0 - iou  # in [0, 0.7]
        h_t, h_b = track.box.height, box.height
        if max(h_t, h_b) / min(h_t, h_b) > st.max_size_ratio:
            return None
        (tx, ty), (bx, by) = track.box.centre, box.centre
        dist = math.hypot(tx - bx, ty - by) / h_t
        if dist > st.max_jump:
            return None
        return 1.0 + dist  # always after every overlap match

    def update(self, boxes: list[Box], scores: list[float] | None, t: float) -> list[Track]:
        """Match this frame's boxes to tracks; return the track of each box, in the boxes' order."""
        st = self.settings
        scores = scores if scores is not None else [1.0] * len(boxes)
        for tid in [tid for tid, tr in self.tracks.items() if t - tr.last_t > st.memory_s]:
            del self.tracks[tid]
        pairs: list[tuple[float, int, int]] = []
        for tid, tr in self.tracks.items():
            for j, b in enumerate(boxes):
                cost = self._match_cost(tr, b)
                if cost is not None:
                    pairs.append((cost, tid, j))
        pairs.sort()
        assigned: dict[int, Track] = {}
        used: set[int] = set()
        for _cost, tid, j in pairs:
            if tid in used or j in assigned:
                continue
            tr = self.tracks[tid]
            tr.box, tr.score, tr.last_t, tr.hits = boxes[j], scores[j], t, tr.hits + 1
            assigned[j] = tr
            used.add(tid)
        for j, b in enumerate(boxes):
            if j not in assigned:
                tr = Track(self._next_id, b, scores[j], t, t, b.centre, b.height)
                self._next_id += 1
                self.tracks[tr.id] = tr
                assigned[j] = tr
        out = [assigned[j] for j in range(len(boxes))]
        for tr in out:
            cx, cy = tr.box.centre
            tr.centres.append((t, cx, cy))
            del tr.centres[: -st.history]
        return out
