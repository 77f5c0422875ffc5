"""The screening state machine of one lane: pure, deterministic, driven by observations.

A person enters the zone (a face at least ``min_face_px`` tall whose centre lies between
``zone_x_min`` and ``zone_x_max`` of the frame width) → the nearest such person (largest face) is
locked at the gate → thermal readings are taken on that face until ``stable_samples`` agree → a
health code is read and judged → one decision. Fever decides at once (no code needed); a missing
stage decides ``retry`` when its timeout passes, so a slow stage can never stall the lane.

Every face is tracked (``station.domain.tracking``) and every screening belongs to one track id.
People queue: each undecided person in the zone has a screening of their own, and thermal readings
are taken for every one of them on their own face box, so the next person's readings may start
while the previous one walks through. Readings are never mixed between tracks: a decision uses only
the readings of its own track. Codes and decisions belong to the person at the gate only.

One screening per person: a decided track is never screened again, however long it stands there
(when the track is lost for ``leave_after_s`` and comes back, it is a new track). Two undecided
people side by side at the decision point get ``retry`` / ``one_at_a_time``; a person who turns
back is not counted as an entry and their screening is abandoned without a decision.

No I/O and no clocks here: every input carries its own monotonic timestamp and ``tick(now)`` drives
timeouts, so tests replay recorded observations and get the same decisions every time.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from statistics import median
from typing import Any

from station.domain.direction import EXIT, TURNED_BACK, DirectionCounter
from station.domain.model import (
    Box,
    CodeColour,
    CodeObservation,
    CodeStatus,
    Decision,
    FaceDetection,
    FaceObservation,
    TemperatureMeasurement,
    ThermalFrame,
)
from station.domain.prompts import LaneProgress
from station.domain.thermal import MeasureState, ThermalCalibration, WarmupTracker, measure_face
from station.domain.tracking import FaceTracker, Track, TrackerSettings, capture_score

UNSTABLE = "unstable"  # a reading taken while the face was still moving or growing


class LaneState(StrEnum):
    """Where one lane's screening machine stands (transitions: see ``ScreeningLane``)."""

    IDLE = "idle"  # nobody at the gate
    SCREENING = "screening"  # a person is being screened at the gate
    DECIDED = "decided"  # decision made; waiting for that person to leave


@dataclass(frozen=True, slots=True)
class ScreeningSettings:
    """Thresholds and stage timeouts of one lane's screening."""

    fever_threshold_c: float = 37.3
    min_face_px: int = 120
    stable_samples: int = 2
    max_sample_spread_c: float = 0.7
    temperature_timeout_s: float = 3.0
    code_timeout_s: float = 5.0
    leave_after_s: float = 0.8
    # A face still growing in the picture belongs to someone still walking up: too far for the
    # calibrated distance, and moving. Thermal samples count only once the face size has held
    # within ``face_size_tolerance`` for ``face_stable_s``.
    face_stable_s: float = 0.3
    face_size_tolerance: float = 0.08
    # "both": everyone is temperature-screened; "entry": the seeds' one-way mode, a person tracked
    # as leaving is decided on the health code alone (see ``temperature_required``).
    temperature_on: str = "both"
    # False: a temperature-only lane (the seeds' 单向测温 points with no code check): a normal
    # temperature passes at once with reason ``temperature_only``; a code shown anyway is still judged.
    code_required: bool = True
    # The lane zone across the picture: a face whose centre lies outside these fractions of the
    # frame width (a passer-by at the edge, someone in the next lane) never starts a screening.
    zone_x_min: float = 0.1
    zone_x_max: float = 0.9
    # Two undecided faces in the zone, the other at least this tall relative to the person at the
    # gate, are two people presenting together: ``retry`` / ``one_at_a_time`` at the decision point.
    side_by_side_ratio: float = 0.8


TEMPERATURE_ONLY = "temperature_only"
"""Reason of a ``pass`` on temperature alone, in a lane configured without a code check."""

ONE_AT_A_TIME = "one_at_a_time"
"""Reason of the ``retry`` given when two people stand side by side at the decision point."""

LEFT_BEFORE_DECISION = "left_before_decision"
"""Reason of the ``retry`` given when the person at the gate is gone before a decision."""


@dataclass(frozen=True, slots=True)
class Abandoned:
    """A screening ended without a decision: no event, no gate action (``ScreeningLane`` says when)."""

    track_id: int
    reason: str  # "turned_back"
    t: float
    at_gate: bool  # the person was at the gate (locked), not still queueing
    temperature_c: float | None  # their own stable reading, if one was taken


IDCARD_SOURCE = "idcard"
"""``CodeVerdict.source`` of a resident ID card read: decided by ``policy.idcard_unknown`` when not vouched for."""

NOT_SCREENED_EXIT = "not_screened_exit"
"""Temperature state of a person tracked as exiting under ``temperature_on = "entry"``."""


def temperature_required(temperature_on: str, direction: str | None) -> bool:
    """Return whether a person moving in ``direction`` must be temperature-screened.

    ``direction`` is ``"entry"``, ``"exit"`` or None (not known yet). Only a person positively
    tracked as exiting is spared under ``"entry"``: an unknown direction is screened, because
    missing a fever is the worse error.
    """
    if temperature_on == "both":
        return True
    if temperature_on == "entry":
        return direction != EXIT
    raise ValueError(f"temperature_on must be 'entry' or 'both', not {temperature_on!r}")


UNSYNCED_CLOCK_POLICIES = ("manual_check", "trust_wall_clock")
"""``policy.unsynced_clock_validity``: what a code judged against an unsynchronised wall clock leads to."""

JUDGED_UNSYNCED = "wall_clock_unsynced"
"""``CodeVerdict.detail`` key set (True) by the code judge when the verdict compared the code's dates with an
unsynchronised wall clock (station.codes.judge)."""

CLOCK_UNSYNCED = "clock_unsynced"
"""Verdict reason under ``unsynced_clock_validity = manual_check``: decided ``code_unverifiable:clock_unsynced``."""


@dataclass(frozen=True, slots=True)
class ScreeningPolicy:
    """Named safety policies. Each applies to one check and is recorded with every decision."""

    temperature: str = "hard"  # hard: fever → deny_fever; soft: fever → manual_check
    yellow_code: Decision = Decision.MANUAL_CHECK
    # A genuine, in-date code that carries no colour of ours (an EU DCC): it proves who issued it, not
    # that the holder may pass, so it is never a pass; staff look (manual_check) or it is refused.
    uncoloured_code: Decision = Decision.MANUAL_CHECK
    # An ID card the centre could not vouch for (unknown, expired card, no key, no answer): never a pass.
    idcard_unknown: Decision = Decision.MANUAL_CHECK
    # A code whose dates were judged against a wall clock not known to be right (no RTC, NTP not yet):
    # manual_check = its validity is unknown, staff check it; trust_wall_clock = the verdict stands.
    unsynced_clock_validity: str = "manual_check"

    def __post_init__(self) -> None:
        if self.uncoloured_code not in (Decision.MANUAL_CHECK, Decision.DENY_CODE):
            raise ValueError(f"uncoloured_code must be manual_check or deny_code, not {self.uncoloured_code}")
        if self.idcard_unknown not in (Decision.MANUAL_CHECK, Decision.DENY_CODE):
            raise ValueError(f"idcard_unknown must be manual_check or deny_code, not {self.idcard_unknown}")
        if self.unsynced_clock_validity not in UNSYNCED_CLOCK_POLICIES:
            raise ValueError(f"unsynced_clock_validity must be manual_check or trust_wall_clock, not {self.unsynced_clock_validity!r}")

    def as_record(self) -> dict[str, str]:
        """Return the policies as recorded with every decision."""
        return {
            "temperature": self.temperature,
            "yellow_code": self.yellow_code.value,
            "uncoloured_code": self.uncoloured_code.value,
            "idcard_unknown": self.idcard_unknown.value,
            "unsynced_clock_validity": self.unsynced_clock_validity,
        }


@dataclass(frozen=True, slots=True)
class Verdict:
    """A completed screening as the domain sees it; the pipeline adds ids and wall time."""

    decision: Decision
    reason: str
    alarm: bool
    stage_t: dict[str, float]
    temperature_c: float | None
    temperature: dict[str, Any]
    code_colour: CodeColour | None
    code: dict[str, Any]
    face: dict[str, Any]
    compute_ms: dict[str, float]
    policy: dict[str, str]
    source: str = "station"  # who decided (station.domain.model.DECISION_SOURCES)
    event_id: str | None = None  # set in advance when the requester must know it (a staff check's audit row)

    def latency_ms(self) -> dict[str, float]:
        """Return the milliseconds from entering the zone to each stage reached, plus the compute figures."""
        enter = self.stage_t["enter"]
        out = {k: round((t - enter) * 1000.0, 1) for k, t in self.stage_t.items() if k != "enter"}
        out["total"] = out["decision"]
        out.update({k: round(v, 2) for k, v in self.compute_ms.items()})
        return out


STAFF_DECISIONS = (Decision.PASS, Decision.DENY_CODE, Decision.MANUAL_CHECK)
"""What staff may decide for a person without a smartphone: the decisions a code would give."""


@dataclass(frozen=True, slots=True)
class StaffCheck:
    """Staff checked the person at the gate by hand and decide in place of the health code.

    The operator-assisted check (station/web/desk.py): ``reason`` is the short-list reason the
    operator chose, ``event_id`` the id the decision's event will carry (the audit row names it),
    ``t`` the monotonic time of the request.
    """

    decision: Decision
    reason: str
    event_id: str
    t: float


@dataclass(slots=True)
class _Screening:
    enter_t: float
    face_t: float
    face: FaceDetection
    frame_size: tuple[int, int]
    detect_ms: float
    face_sizes: deque[tuple[float, float]] = field(default_factory=deque)  # (captured_t, height)
    samples: list[TemperatureMeasurement] = field(default_factory=list)
    last_measure_state: str = ""
    measure_states: dict[str, int] = field(default_factory=dict)
    temperature: TemperatureMeasurement | None = None
    temperature_c: float | None = None
    temperature_t: float | None = None
    code: CodeObservation | None = None
    code_t: float | None = None
    invalid_code: CodeObservation | None = None
    track_id: int | None = None  # the tracked person this screening belongs to (station.domain.tracking)
    capture: dict[str, Any] | None = None  # the best frame of this person so far: frame_seq, box, score
    last_seen_t: float = 0.0  # when this person was last seen in the zone


RECORDED_CODE_DETAIL = (
    "colour",
    "issuer",
    "kid",
    "alg",
    "expires",
    "payload_hash",
    "first_use",
    "id_masked",  # an ID card read (station.codes.idcard): never the number itself
    "id_hash_key",
    "card_valid_to",
    "trace_ref",  # the holder under the district key (station.codes.trace_key): links checkpoints, never the id
    "trace_key",
    "judged_as",  # what a code judged against an unsynchronised clock was judged (unsynced_clock_validity)
)
"""Verifier detail copied into the event's ``code`` record (docs/mqtt.md); everything else stays in memory."""


class ScreeningLane:
    """One lane's screening state machine: feed it observations; it returns a verdict when a screening ends.

    States (of the gate) and the only transitions between them:

    - ``IDLE`` → ``SCREENING``: an undecided person is in the zone and nobody decided is nearer; the
      nearest such person (largest face) is locked at the gate by their track id.
    - ``SCREENING`` → ``DECIDED``: a verdict — fever (at once, no code needed), a judged code once
      the temperature is normal or exempt, a sensor fault (``manual_check``), or a stage timeout
      (``retry``, or ``manual_check`` when only an invalid code was shown). When another undecided
      face at least ``side_by_side_ratio`` as tall is in the zone at that moment, the verdict is
      ``retry`` / ``one_at_a_time`` instead (never a fever: a measured fever is never discarded),
      and the pair is not screened again until one of them steps back or leaves.
    - ``SCREENING`` → ``IDLE``: the person at the gate is gone before a decision — out of the zone
      for ``leave_after_s``, or replaced at the gate by an undecided face as large as theirs; the
      verdict is ``retry`` (``left_before_decision``).
    - ``SCREENING`` → ``IDLE`` without a verdict: the person turned back (the direction counter
      says ``turned_back``: they came towards the gate, then went back the way they came). The
      screening is *abandoned*: no event, no gate action, not counted as an entry; ``abandoned``
      counts it and ``on_abandoned`` hears it. A queueing person who turns back is dropped the same
      way; one who is merely lost from view before reaching the gate is dropped silently.
    - ``DECIDED`` → ``IDLE``: the decided person is not seen in the zone for ``leave_after_s``.
    - ``DECIDED`` → ``SCREENING``: an undecided person nearer than every decided one in the zone
      (the decided person walked on or stepped aside), without waiting for ``leave_after_s``.

    Behind the gate, each undecided person in the zone has a screening of their own that gathers
    thermal readings on their own face (so they are ready when that person reaches the gate);
    codes and decisions go to the person at the gate only.
    """

    def __init__(
        self,
        settings: ScreeningSettings,
        policy: ScreeningPolicy,
        calibration: ThermalCalibration,
        on_verdict: Callable[[Verdict], None] | None = None,
        on_abandoned: Callable[[Abandoned], None] | None = None,
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.calibration = calibration
        self.state = LaneState.IDLE
        self._screenings: dict[int, _Screening] = {}  # every undecided person in the zone, by track id
        self._front: int | None = None  # the track at the gate: its screening gets codes and decides
        self._decided: _Screening | None = None  # the last decided screening, while its person is at the gate
        self._decided_seen_t: float | None = None  # when a decided person was last seen in the zone
        self._done: set[int] = set()  # decided or abandoned tracks: never screened again
        self._in_lane: set[int] = set()  # tracks seen in the lane zone at least once: the ones counted
        self._one_at_a_time: set[int] = set()  # tracks told "one at a time", until they stand alone
        self._turned_back: set[int] = set()  # abandoned tracks: screened again only if they come back
        # The newest camera frame: (box, track id, in the zone) of every face, and its size.
        self._visible: list[tuple[Box, int, bool]] = []
        self._on_verdict = on_verdict
        self.on_abandoned = on_abandoned
        self.abandoned: Counter[str] = Counter()  # abandoned screenings by reason
        self._warmup = WarmupTracker(calibration.warmup_s, calibration.warmup_max_die_rate)
        # A track outlives a detection drop-out as long as a person is allowed to be out of sight.
        self.tracker = FaceTracker(TrackerSettings(memory_s=settings.leave_after_s))
        self.directions = DirectionCounter()  # entries / exits of every tracked face (geometry set by the app)

    @property
    def _current(self) -> _Screening | None:
        """Return the screening of the person at the gate: being screened, or decided and still there."""
        if self._front is not None:
            return self._screenings.get(self._front)
        return self._decided if self.state is LaneState.DECIDED else None

    def in_zone(self, box: Box, frame_size: tuple[int, int]) -> bool:
        """Return True when a face is in the lane zone: tall enough (near enough) and across the lane, not at its edge."""
        st = self.settings
        cx = box.centre[0] / frame_size[0] if frame_size[0] > 0 else 0.5
        return box.height >= st.min_face_px and st.zone_x_min <= cx <= st.zone_x_max

    @property
    def one_at_a_time(self) -> bool:
        """Return True while two undecided people stand side by side in the zone (the display says so at once)."""
        zone = [(b, tid) for b, tid, z in self._visible if z and tid not in self._done]
        for b, tid in zone:
            if any(self._similar_size(o.height, b.height) for o, oid in zone if oid != tid):
                return True
        return False

    # -- inputs ---------------------------------------------------------------------------------
    def on_faces(self, obs: FaceObservation) -> Verdict | None:
        """Track the faces of one visible frame; open, follow or end screenings; lock the next person at the gate."""
        # Every face is tracked, near or far: a person keeps one id from walking up to leaving.
        tracks = self.tracker.update([f.box for f in obs.faces], [f.score for f in obs.faces], obs.captured_t)
        self._in_lane &= set(self.tracker.tracks)
        self._in_lane.update(tr.id for f, tr in zip(obs.faces, tracks, strict=True) if self.in_zone(f.box, obs.frame_size))
        for tr in tracks:
            if tr.hits == 1 and self._reacquired(tr):
                self._done.add(tr.id)  # a decided person walking on, found again: decided (and counted) already
                self.directions.same_person(tr.id)
            elif tr.hits == 1 and (before := self._lost_approach(tr, obs.captured_t)) is not None:
                self.directions.continues(tr.id, before)  # frames dropped while they walked up: one person's travel
        self.directions.update(tracks, obs.frame_size, self._in_lane)
        self._done &= set(self.tracker.tracks)  # ids are never reused: a forgotten track cannot come back
        self._one_at_a_time &= set(self.tracker.tracks)
        self._turned_back &= set(self.tracker.tracks)
        seen = list(zip(obs.faces, tracks, strict=True))
        self._visible = [(f.box, tr.id, self.in_zone(f.box, obs.frame_size)) for f, tr in seen]
        for tid in [tid for tid in self._screenings if self.directions.direction_of(tid) == TURNED_BACK]:
            self._abandon(tid, TURNED_BACK, obs.captured_t)
        for tid in [tid for tid in self._turned_back if self.directions.direction_of(tid) != TURNED_BACK]:
            self._turned_back.discard(tid)  # they came back towards the gate: screened like anyone else
            self._done.discard(tid)
        largest_decided = 0.0
        for index, (face, tr) in enumerate(seen):
            if not self._visible[index][2]:
                continue
            if tr.id in self._done:
                largest_decided = max(largest_decided, face.box.height)
                if self._decided is not None and tr.id == self._decided.track_id:
                    self._decided_seen_t = obs.captured_t
                continue
            self._follow(tr.id, face, index, obs)
        verdict = None
        front = self._screenings.get(self._front) if self._front is not None else None
        if front is not None and front.last_seen_t < obs.captured_t and self._replaced(front):
            # Someone as near as the person at the gate stands there and the locked person does not:
            # that person stepped away; the newcomer is screened on their own readings.
            verdict = self._decide(Decision.RETRY, LEFT_BEFORE_DECISION, obs.done_t, alarm=False, person_left=True)
        if self._front is None:
            self._lock_front(largest_decided, obs.done_t)
        if verdict is not None:
            return verdict  # one verdict per call; the new person at the gate is evaluated with the next input
        return self.tick(obs.done_t)

    def _reacquired(self, new: Track) -> bool:
        """Return True when a new track is born on a decided person's last box, at least about as large.

        Walking through the gate (or aside) the decided person's face grows fast and moves sideways,
        and the tracker may lose it; found again, it is a new track, which must not open a second
        screening (a spurious ``retry`` for someone already decided). The person behind is smaller.
        """
        for tid in self._done:
            old = self.tracker.tracks.get(tid)
            if old is not None and old is not new and new.box.height >= 0.9 * old.box.height and _touch(old.box, new.box):
                return True
        return False

    def _lost_approach(self, new: Track, t: float) -> int | None:
        """Return the track a new face continues: not seen in this frame, undecided, smaller and in line with it.

        On a loaded box whole frames are skipped; a person walking up is a small face in one processed
        frame and a large one in the next, too far apart for the tracker to match. Their walk is one
        travel through the lane, counted once.
        """
        best: Track | None = None
        for old in self.tracker.tracks.values():
            if old is new or old.last_t >= t or old.id in self._done:
                continue
            if old.box.height > new.box.height or abs(old.box.centre[0] - new.box.centre[0]) > new.box.width:
                continue
            if best is None or old.last_t > best.last_t:
                best = old
        return best.id if best is not None else None

    def _follow(self, track_id: int, face: FaceDetection, index: int, obs: FaceObservation) -> None:
        """Open or update the screening of one undecided person seen in the zone."""
        s = self._screenings.get(track_id)
        if s is None:
            s = _Screening(
                enter_t=obs.captured_t,
                face_t=obs.done_t,
                face=face,
                frame_size=obs.frame_size,
                detect_ms=obs.detect_ms,
                track_id=track_id,
                last_seen_t=obs.captured_t,
            )
            self._screenings[track_id] = s
        else:
            s.face, s.frame_size, s.last_seen_t = face, obs.frame_size, obs.captured_t
        sizes = s.face_sizes
        sizes.append((obs.captured_t, face.box.height))
        # Keep just enough history to judge the last face_stable_s.
        while len(sizes) > 2 and sizes[1][0] <= obs.captured_t - self.settings.face_stable_s:
            sizes.popleft()
        if index < len(obs.sharpness):
            # The pipeline keeps the crops; the lane only says which frame was this person's best.
            score = capture_score(face.box.height, obs.sharpness[index], face.score)
            if s.capture is None or score > s.capture["score"]:
                s.capture = {"frame_seq": obs.frame_seq, "box": face.box.as_list(), "score": round(score, 2)}

    def _partners(self, s: _Screening) -> list[int]:
        """Return the other undecided people in the zone whose face is about as tall as ``s``'s (``_similar_size``)."""
        h = s.face.box.height
        return [tid for b, tid, z in self._visible if z and tid != s.track_id and tid not in self._done and self._similar_size(b.height, h)]

    def _similar_size(self, other: float, this: float) -> bool:
        """Return True when two faces are about as tall (as near): within ``side_by_side_ratio`` either way.

        A face much larger than the person at the gate is nearer than the gate: someone already
        through it (a decided person the tracker lost and found again as they walked off), never a
        second person presenting beside them.
        """
        ratio = self.settings.side_by_side_ratio
        return ratio * this <= other <= this / ratio

    def _replaced(self, front: _Screening) -> bool:
        """Return True when someone as near as the person at the gate stands in the zone (they are not seen this frame)."""
        return bool(self._partners(front))

    def _side_by_side(self, s: _Screening) -> bool:
        """Return True when another undecided person as near as ``s`` stands in the zone beside them."""
        return bool(self._partners(s))

    def _lock_front(self, largest_decided: float, now: float) -> None:
        """Lock the nearest undecided person in the zone at the gate, unless a decided person is nearer still."""
        zone = [(b, tid) for b, tid, z in self._visible if z and tid in self._screenings]
        candidates = []
        for b, tid in zone:
            if b.height <= largest_decided:
                continue  # a decided person stands nearer: the gate is still theirs (a denied person must not slip through)
            if tid in self._one_at_a_time and any(self._similar_size(o.height, b.height) for o, oid in zone if oid != tid):
                continue  # told "one at a time" and still side by side: wait until they stand apart
            candidates.append((b, tid))
        if not candidates:
            return
        _, tid = max(candidates, key=lambda x: x[0].area)
        s = self._screenings[tid]
        s.face_t = max(now, s.face_t)  # locked at the gate now: stage timeouts count from here
        self._front = tid
        self._decided = None
        self.state = LaneState.SCREENING

    def face_stable(self, s: _Screening | None = None) -> bool:
        """Return True once a face (default: the one at the gate) has held its size for ``face_stable_s``."""
        s = s if s is not None else self._current
        if s is None or len(s.face_sizes) < 2:
            return False
        span = s.face_sizes[-1][0] - s.face_sizes[0][0]
        heights = [h for _, h in s.face_sizes]
        # (1 ms slack: frame timestamps are floats)
        return span >= self.settings.face_stable_s - 1e-3 and max(heights) <= min(heights) * (1.0 + self.settings.face_size_tolerance)

    def progress(self, now: float) -> LaneProgress:
        """Return what the screened person still has to do (the display's and the voice's next step).

        Read from another thread: one snapshot of the current screening, never a lock on the lane.
        """
        s = self._current
        state = self.state
        if state is not LaneState.SCREENING or s is None:
            return LaneProgress(state.value)
        return LaneProgress(
            state=state.value,
            temperature_done=s.temperature_c is not None or not self._temperature_required(),
            measure_state=s.last_measure_state,
            code_shown=s.code is not None,
            invalid_code_shown=s.invalid_code is not None,
            waited_s=max(0.0, now - s.face_t),
            code_timeout_s=self.settings.code_timeout_s,
            code_required=self.settings.code_required,
        )

    def on_thermal(self, frame: ThermalFrame) -> Verdict | None:
        """Measure every undecided person's face in ``frame``; each reading goes to that person's own screening."""
        # Every frame feeds the warm-up tracker, screening or not: the die's history is the evidence.
        warming = self._warmup.update(frame.t, frame.die_c)
        for tid, s in self._screenings.items():
            if tid != self._front:
                m = measure_face(frame, s.face.box, self.calibration, others=self._other_faces(s), warming_up=warming)
                self._take_reading(s, m)
        front = self._screenings.get(self._front) if self._front is not None else None
        if front is None or self.state is not LaneState.SCREENING:
            return None
        m = measure_face(frame, front.face.box, self.calibration, others=self._other_faces(front), warming_up=warming)
        return self.on_temperature(m)

    def _other_faces(self, s: _Screening | None = None) -> list[Box]:
        """Return the faces in the newest camera frame that could mix into a reading of ``s``'s face.

        One as near as the measured face makes the reading ambiguous (``several_people``, judged by
        ``measure_face``). A decided person whose face does not touch the measured one is left out:
        they are walking through, and their heat is elsewhere in the picture.
        """
        s = s if s is not None else self._current
        if s is None:
            return []
        return [b for b, tid, _ in self._visible if tid != s.track_id and (tid not in self._done or _touch(b, s.face.box))]

    def on_temperature(self, m: TemperatureMeasurement) -> Verdict | None:
        """Take one reading of the face at the gate; a run of ``stable_samples`` agreeing readings is the temperature."""
        s = self._current
        if self.state is not LaneState.SCREENING or s is None:
            return None
        state = self._take_reading(s, m)
        if state == MeasureState.SENSOR_FAULT and (s.temperature_c is not None or self._temperature_required()):
            # (an exiting person in one-way mode needs no reading, so a sensor fault does not stop them)
            return self._decide(Decision.MANUAL_CHECK, "sensor_fault", m.t, alarm=False)
        return self._evaluate(m.t)

    def _take_reading(self, s: _Screening, m: TemperatureMeasurement) -> str:
        """Add one reading to ``s`` (only ever its own face's); return the state it counted as."""
        state = m.state
        if state == MeasureState.MEASURED and not self.face_stable(s):
            state = UNSTABLE
        s.last_measure_state = state
        s.measure_states[state] = s.measure_states.get(state, 0) + 1
        if s.temperature_c is None:
            if state == MeasureState.MEASURED and m.core_c is not None:
                s.samples.append(m)
                del s.samples[: -self.settings.stable_samples]
                window = s.samples
                values = [x.core_c for x in window if x.core_c is not None]
                if len(values) >= self.settings.stable_samples and max(values) - min(values) <= self.settings.max_sample_spread_c:
                    s.temperature = window[-1]
                    s.temperature_c = round(median(values), 2)
                    s.temperature_t = m.t
            else:
                # A frame that cannot be measured breaks the run: agreement must be consecutive.
                s.samples.clear()
        return state

    def on_code(self, obs: CodeObservation) -> Verdict | None:
        """Take one judged health code for the person being screened."""
        s = self._current
        if self.state is not LaneState.SCREENING or s is None:
            return None
        v = obs.verdict
        if v.detail.get(JUDGED_UNSYNCED) and self.policy.unsynced_clock_validity == "manual_check":
            # Valid, expired or not yet valid by a wall clock not known to be right: nobody knows which. Staff check it.
            judged = dict(v.detail, judged_as=f"{v.status.value}:{v.reason}")
            obs = replace(obs, verdict=replace(v, status=CodeStatus.UNVERIFIABLE, colour=None, reason=CLOCK_UNSYNCED, detail=judged))
        if obs.verdict.status is CodeStatus.INVALID:
            # Someone showed the wrong QR (a payment code, a screenshot fragment): keep waiting for a
            # good one, but remember why the first one was refused (and when: that is the code stage).
            if s.invalid_code is None:
                s.invalid_code = obs
        elif s.code is None:
            s.code = obs
            s.code_t = obs.done_t
        return self._evaluate(obs.done_t)

    def tick(self, now: float) -> Verdict | None:
        """Advance timeouts to ``now``."""
        leave = self.settings.leave_after_s
        for tid in [tid for tid, s in self._screenings.items() if tid != self._front and now - s.last_seen_t >= leave]:
            del self._screenings[tid]  # lost from view while queueing: they never reached the gate
        if self.state is LaneState.DECIDED:
            if self._decided_seen_t is None or now - self._decided_seen_t >= leave:
                self.state = LaneState.IDLE
                self._decided = None
            return None
        s = self._current
        if self.state is not LaneState.SCREENING or s is None:
            return None
        if now - s.last_seen_t >= leave:
            return self._decide(Decision.RETRY, LEFT_BEFORE_DECISION, now, alarm=False, person_left=True)
        return self._evaluate(now)

    def _abandon(self, track_id: int, reason: str, t: float) -> None:
        """End a screening without a decision (no event, no gate action) and never screen that track again."""
        s = self._screenings.pop(track_id)
        self._done.add(track_id)
        self._turned_back.add(track_id)
        at_gate = track_id == self._front
        if at_gate:
            self._front = None
            self.state = LaneState.IDLE
        self.abandoned[reason] += 1
        if self.on_abandoned is not None:
            self.on_abandoned(Abandoned(track_id, reason, t, at_gate, s.temperature_c))

    def on_staff_check(self, check: StaffCheck) -> tuple[Verdict | None, str]:
        """Decide the person at the gate as staff say; return the verdict, or None and why it was refused.

        Staff stand in for the health code only: the temperature policy still applies. So the
        person must be at the gate (screening, or decided and still standing there — the usual
        case: their ``retry``/``no_code`` came while they looked for a paper certificate), their
        temperature taken (or not required for them), and not a fever (a clinical thermometer
        re-check is the operator's path for that). Refusals: ``nobody_at_gate``, ``fever``,
        ``no_temperature``, ``bad_decision``.
        """
        s = self._current
        if check.decision not in STAFF_DECISIONS:
            return None, "bad_decision"
        if self.state is LaneState.IDLE or s is None:
            return None, "nobody_at_gate"
        if s.temperature_c is not None and s.temperature_c >= self.settings.fever_threshold_c:
            return None, "fever"
        if s.temperature_c is None and self._temperature_required():
            return None, "no_temperature"
        verdict = self._decide(
            check.decision, f"staff:{check.reason}", check.t, alarm=False, source="staff", event_id=check.event_id, staff_t=check.t
        )
        return verdict, "ok"

    # -- decisions ------------------------------------------------------------------------------
    def _evaluate(self, now: float) -> Verdict | None:
        s = self._current
        if s is None:
            return None
        st = self.settings
        if s.temperature_c is not None and s.temperature_c >= st.fever_threshold_c:
            if self.policy.temperature == "hard":
                return self._decide(Decision.DENY_FEVER, "fever", now, alarm=True)
            return self._decide(Decision.MANUAL_CHECK, "fever_soft_policy", now, alarm=True)
        # A measured fever is acted on even for an exiting person (evidence is never discarded);
        # otherwise an exit in one-way mode does not wait for a temperature at all.
        exempt = s.temperature_c is None and not self._temperature_required()
        if s.temperature_c is None and not exempt:
            if now - s.face_t >= st.temperature_timeout_s:
                why = s.last_measure_state or "no_thermal_frame"
                return self._decide(Decision.RETRY, f"no_valid_temperature:{why}", now, alarm=False)
            return None
        # Temperature is normal from here on.
        if s.code is not None:
            v = s.code.verdict
            if v.status is CodeStatus.VALID:
                if v.colour is CodeColour.GREEN:
                    return self._decide(Decision.PASS, "ok", now, alarm=False)
                if v.colour is CodeColour.RED:
                    return self._decide(Decision.DENY_CODE, "code_red", now, alarm=False)
                if v.colour is CodeColour.YELLOW:
                    return self._decide(self.policy.yellow_code, "code_yellow", now, alarm=False)
                return self._decide(self.policy.uncoloured_code, "code_uncoloured", now, alarm=False)
            if v.status is CodeStatus.EXPIRED:
                return self._decide(Decision.DENY_CODE, f"code_expired:{v.reason}", now, alarm=False)
            if v.source == IDCARD_SOURCE:  # an ID card read (station.codes.idcard) the centre did not vouch for
                return self._decide(self.policy.idcard_unknown, f"idcard_unverifiable:{v.reason}", now, alarm=False)
            return self._decide(Decision.MANUAL_CHECK, f"code_unverifiable:{v.reason}", now, alarm=False)
        if not st.code_required:
            return self._decide(Decision.PASS, TEMPERATURE_ONLY, now, alarm=False)
        if now - s.face_t >= st.code_timeout_s:
            if s.invalid_code is not None:
                return self._decide(Decision.MANUAL_CHECK, f"code_invalid:{s.invalid_code.verdict.reason}", now, alarm=False)
            return self._decide(Decision.RETRY, "no_code", now, alarm=False)
        return None

    def _temperature_required(self) -> bool:
        s = self._current
        direction = self.directions.direction_of(s.track_id) if s is not None and s.track_id is not None else None
        return temperature_required(self.settings.temperature_on, direction)

    def _decide(
        self,
        decision: Decision,
        reason: str,
        now: float,
        alarm: bool,
        person_left: bool = False,
        *,
        source: str = "station",
        event_id: str | None = None,
        staff_t: float | None = None,
    ) -> Verdict:
        s = self._current
        assert s is not None
        if source == "station" and not person_left and not alarm and reason != "sensor_fault" and self._side_by_side(s):
            # Two undecided people at the gate: whose code, whose face? Neither is decided on the
            # other's evidence; they are asked to come one at a time (a fever is never discarded).
            decision, reason = Decision.RETRY, ONE_AT_A_TIME
        exempt = s.temperature_c is None and not self._temperature_required()
        if exempt:
            reason = f"{reason};temperature:{NOT_SCREENED_EXIT}"  # the record says why there is no reading
        stage_t: dict[str, float] = {"enter": s.enter_t, "face": s.face_t}
        if s.temperature_t is not None:
            stage_t["temperature"] = s.temperature_t
        code_obs = s.code or s.invalid_code
        if code_obs is not None:
            stage_t["code"] = code_obs.done_t
        if staff_t is not None:
            stage_t["staff"] = staff_t
        stage_t["decision"] = max(now, *stage_t.values())
        compute = {"detect_ms": s.detect_ms}
        if code_obs is not None:
            compute["decode_ms"] = code_obs.decode_ms
        t = s.temperature
        temperature: dict[str, Any] = {
            "state": MeasureState.MEASURED
            if s.temperature_c is not None
            else (NOT_SCREENED_EXIT if exempt else (s.last_measure_state or "none")),
            "samples": [x.core_c for x in s.samples[-self.settings.stable_samples :]] if s.temperature_c is not None else [],
            "frames_by_state": dict(s.measure_states),
            "calibration": self.calibration.version,
        }
        if t is not None:
            temperature.update({"skin_c": t.skin_c, "terms": t.terms, "n_pixels": t.n_pixels, "thermal_seq": t.thermal_seq})
        code: dict[str, Any] = {"status": None}
        if code_obs is not None:
            v = code_obs.verdict
            code = {
                "status": v.status.value,
                "reason": v.reason,
                "source": v.source,
                "decoder": code_obs.decoder,
                "subject_ref": v.subject_ref,
                # What an audit needs and nothing more: never the payload itself (only its salted hash).
                **{k: v.detail[k] for k in RECORDED_CODE_DETAIL if k in v.detail},
            }
        verdict = Verdict(
            decision=decision,
            reason=reason,
            alarm=alarm,
            stage_t=stage_t,
            temperature_c=s.temperature_c,
            temperature=temperature,
            code_colour=(code_obs.verdict.colour if code_obs is not None and code_obs.verdict.status is CodeStatus.VALID else None),
            code=code,
            face={
                "box": s.face.box.as_list(),
                "score": round(s.face.score, 3),
                "frame_size": list(s.frame_size),
                "track_id": s.track_id,
                "capture": s.capture,
                "direction": self.directions.direction_of(s.track_id) if s.track_id is not None else None,
            },
            compute_ms=compute,
            policy=self.policy.as_record(),
            source=source,
            event_id=event_id,
        )
        self._close(s, verdict, person_left)
        if self._on_verdict is not None:
            self._on_verdict(verdict)
        return verdict

    def _close(self, s: _Screening, verdict: Verdict, person_left: bool) -> None:
        """Move the lane on after ``verdict`` ended ``s``'s screening (see the class docstring)."""
        tid = s.track_id
        if tid is not None:
            self._screenings.pop(tid, None)
            if verdict.reason == ONE_AT_A_TIME:
                # Both (all) of them are screened afresh once they stand apart, the nearest first.
                self._one_at_a_time.update([tid, *self._partners(s)])
            else:
                self._done.add(tid)
            if verdict.decision is Decision.PASS:
                self.directions.commit(tid)  # through the gate: no longer "turned back" if they look round
            elif verdict.reason != ONE_AT_A_TIME and not person_left:
                # Not let through while standing there: they walked up but did not enter. (Someone
                # who left undecided is counted by where they went: on through, or back.)
                self.directions.refuse(tid)
        self._front = None
        if person_left or verdict.reason == ONE_AT_A_TIME:
            self.state = LaneState.IDLE
            self._decided = None
        else:
            self.state = LaneState.DECIDED
            self._decided = s
            self._decided_seen_t = s.last_seen_t


def _touch(a: Box, b: Box) -> bool:
    """Return True when two boxes overlap or nearly touch (within a tenth of the smaller face's height)."""
    m = 0.1 * min(a.height, b.height)
    return a.x1 - m < b.x2 and b.x1 - m < a.x2 and a.y1 - m < b.y2 and b.y1 - m < a.y2
