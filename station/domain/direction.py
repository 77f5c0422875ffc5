"""Entry or exit, from a track's travel: pure, configured by the lane's geometry.

A gate camera looks down the lane. With ``by = "size"`` a person walking *towards* the camera has a
growing face (entry by default) and one walking away a shrinking one; with ``by = "x"`` or ``"y"``
the track's centre moves along that image axis (a camera looking across the lane). A track is
counted once, the first time its travel passes ``min_travel`` (relative size change, or a fraction
of the frame's width / height), so a person dithering at the gate is not counted twice.

A person who comes towards the gate and then goes back the way they came has *turned back*: once a
track that travelled at least half of ``min_travel`` in the entry direction goes back by
``min_travel`` from the farthest point it reached, it is ``turned_back`` — an entry already counted
for it is taken back (``turned_back`` counts it instead). A turned-back track that comes towards the
gate again by ``min_travel`` from the farthest point back is a fresh approach (counted, or turned
back, anew). A track is *committed* (``commit``) once the gate let it through: from then on it is
never taken back, whatever it does in front of the camera. A track the gate did not let through
(``refuse``) walked up and stepped aside: an entry counted for it is taken back (``refused`` counts
it). Only tracks that reached the lane zone are counted (``update``'s ``countable``): someone walking
past the far end of the lane, or turning back before reaching the zone, is in no count.

A loaded box drops frames, and a face that jumps from far to near between two processed frames is a
new track to the tracker: ``continues`` hands the old track's travel and count on to the new one, so
the person's travel is measured from where they were first seen, not from where they stood still.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from station.domain.tracking import Track

ENTRY = "entry"
EXIT = "exit"
TURNED_BACK = "turned_back"
REFUSED = "refused"  # screened and not let through (denied, retry, manual check): not an entry
SAME_PERSON = "same_person"  # a track the lane knows is a person already counted under another track


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


def position(track: Track, geometry: LaneGeometry, frame_size: tuple[int, int]) -> float:
    """Return where the track is along the lane: its face height, or its centre as a fraction of the frame."""
    if geometry.by == "size":
        return track.box.height
    cx, cy = track.box.centre
    w, h = frame_size
    return cx / w if geometry.by == "x" else cy / h


def _moved(geometry: LaneGeometry, start: float, end: float) -> float:
    """Return the travel from position ``start`` to ``end``, signed positive in the entry direction."""
    if geometry.by == "size":
        d = end / start - 1.0 if start > 0 else 0.0
    else:
        d = end - start
    return d if geometry.entry == "increasing" else -d


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
    turned_back: int = 0  # people who came towards the gate and went back (in no count above)
    refused: int = 0  # people screened and not let through (in no count above)
    _counted: dict[int, str] = field(default_factory=dict)
    _start: dict[int, float] = field(default_factory=dict)  # track id → position when first seen
    _farthest: dict[int, float] = field(default_factory=dict)  # track id → farthest position in the entry direction
    _committed: set[int] = field(default_factory=set)
    _origin: dict[int, float] = field(default_factory=dict)  # track id → position its travel counts from (handed on)

    def update(self, tracks: list[Track], frame_size: tuple[int, int], countable: set[int] | None = None) -> list[tuple[int, str]]:
        """Count the tracks seen in one frame; return the (track id, direction) pairs counted or turned back just now.

        With ``countable``, other tracks are followed (their travel counts from their first sighting)
        but not counted until they are in it.
        """
        out: list[tuple[int, str]] = []
        g = self.geometry
        for tr in tracks:
            pos = position(tr, g, frame_size)
            start = self._start.setdefault(tr.id, pos)
            farthest = self._farthest.get(tr.id, pos)
            if _moved(g, farthest, pos) > 0:
                farthest = pos
            self._farthest[tr.id] = farthest
            if countable is not None and tr.id not in countable:
                continue
            done = self._counted.get(tr.id)
            if done in (REFUSED, SAME_PERSON):
                continue
            if done == TURNED_BACK:
                if _moved(g, self._start[tr.id], pos) < 0:
                    self._start[tr.id] = pos  # the farthest back they went
                elif _moved(g, self._start[tr.id], pos) >= g.min_travel:
                    # They came back towards the gate after all: a fresh approach from where they turned.
                    del self._counted[tr.id]
                    self._farthest[tr.id] = farthest = pos
                    done = None
                    out.append((tr.id, "approaching_again"))
            if done in (EXIT, TURNED_BACK) or tr.id in self._committed:
                continue
            if _moved(g, start, farthest) >= g.min_travel / 2.0 and _moved(g, farthest, pos) <= -g.min_travel:
                if done == ENTRY:
                    self.counts[ENTRY] -= 1  # they never went through: take the entry back
                self._counted[tr.id] = TURNED_BACK
                self._start[tr.id] = pos  # a fresh approach is measured from where they went back to
                self.turned_back += 1
                out.append((tr.id, TURNED_BACK))
                continue
            if done is not None:
                continue
            p = self._passage(tr, pos, frame_size)
            if p is not None:
                self._counted[tr.id] = p
                self.counts[p] += 1
                out.append((tr.id, p))
        if len(self._start) > 4096:  # ids only grow; old ones can never be seen again
            for tid in sorted(self._start)[:2048]:
                for table in (self._counted, self._start, self._farthest, self._origin):
                    table.pop(tid, None)
                self._committed.discard(tid)
        return out

    def _passage(self, tr: Track, pos: float, frame_size: tuple[int, int]) -> str | None:
        """Return the track's passage, measured from its handed-on origin when it continues another track."""
        origin = self._origin.get(tr.id)
        if origin is None:
            return passage(tr, self.geometry, frame_size)
        d = _moved(self.geometry, origin, pos)
        if abs(d) < self.geometry.min_travel:
            return None
        return ENTRY if d > 0 else EXIT

    def continues(self, new_id: int, old_id: int) -> None:
        """Hand a lost track's travel and count on to a new track of the same person; the old one counts no more."""
        if old_id not in self._start or new_id in self._counted:
            return
        self._origin[new_id] = self._origin.get(old_id, self._start[old_id])
        self._start[new_id] = self._start[old_id]
        self._farthest[new_id] = self._farthest[old_id]
        done = self._counted.get(old_id)
        if done is not None:
            self._counted[new_id] = done
        if old_id in self._committed:
            self._committed.add(new_id)
        self._counted[old_id] = SAME_PERSON

    def commit(self, track_id: int) -> None:
        """Mark a track as let through the gate: its count (if any) is never taken back."""
        self._committed.add(track_id)

    def refuse(self, track_id: int) -> None:
        """Mark a track as not let through the gate: an entry counted for it is taken back, and it is never counted."""
        done = self._counted.get(track_id)
        if track_id in self._committed or done in (EXIT, TURNED_BACK, REFUSED, SAME_PERSON):
            return
        if done == ENTRY:
            self.counts[ENTRY] -= 1
        self._counted[track_id] = REFUSED
        self.refused += 1

    def same_person(self, track_id: int) -> None:
        """Mark a new track as a person already counted under another one (found again): never counted."""
        if track_id not in self._counted:
            self._counted[track_id] = SAME_PERSON

    def direction_of(self, track_id: int) -> str | None:
        """Return the direction a track was counted in (or ``turned_back``), or None if it has not been counted."""
        return self._counted.get(track_id)
