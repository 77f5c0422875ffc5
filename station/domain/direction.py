"""Entry or exit, from a track's travel: pure, configured by the lane's geometry.

A gate camera looks down the lane. With ``by = "size"`` a person walking *towards* the camera has a
growing face (entry by default) and one walking away a shrinking one; with ``by = "x"`` or ``"y"``
the track's centre moves along that image axis (a camera looking across the lane). A track is
counted once, the first time its travel passes ``min_travel`` (relative size change, or a fraction
of the frame's width / height), so a person dithering at the gate is not counted twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from station.domain.tracking import Track

ENTRY = "entry"
EXIT = "exit"


@dataclass(frozen=True, slots=True)
class LaneGeometry:
    """How travel through the lane shows in the picture, and how far a track must travel to count."""

    by: str = "size"  # size | x | y
    entry: str = "increasing"  # increasing | decreasing
    min_travel: float = 0.25


def travel(track: Track, geometry: LaneGeometry, frame_size: tuple[int, int]) -> float:
    """Return the signed travel since the track was first seen: relative size change, or fraction of the frame."""
    if geometry.by == "size":
        return track.box.height / track.first_height - 1.0 if track.first_height > 0 else 0.0
    dx, dy = track.displacement()
    w, h = frame_size
    return dx / w if geometry.by == "x" else dy / h


def passage(track: Track, geometry: LaneGeometry, frame_size: tuple[int, int]) -> str | None:
    """Return ``"entry"``, ``"exit"`` or None (not far enough yet)."""
    d = travel(track, geometry, frame_size)
    if abs(d) < geometry.min_travel:
        return None
    increasing = d > 0
    return ENTRY if increasing == (geometry.entry == "increasing") else EXIT


@dataclass(slots=True)
class DirectionCounter:
    """Count entries and exits, each track at most once."""

    geometry: LaneGeometry = field(default_factory=LaneGeometry)
    counts: dict[str, int] = field(default_factory=lambda: {ENTRY: 0, EXIT: 0})
    _counted: dict[int, str] = field(default_factory=dict)

    def update(self, tracks: list[Track], frame_size: tuple[int, int]) -> list[tuple[int, str]]:
        """Count the tracks seen in one frame; return the (track id, direction) pairs counted just now."""
        out: list[tuple[int, str]] = []
        for tr in tracks:
            if tr.id in self._counted:
                continue
            p = passage(tr, self.geometry, frame_size)
            if p is not None:
                self._counted[tr.id] = p
                self.counts[p] += 1
                out.append((tr.id, p))
        if len(self._counted) > 4096:  # ids only grow; old ones can never be seen again
            for tid in sorted(self._counted)[:2048]:
                del self._counted[tid]
        return out

    def direction_of(self, track_id: int) -> str | None:
        """Return the direction a track was counted in, or None if it has not been counted."""
        return self._counted.get(track_id)
