"""The screening state machine of one lane: pure, deterministic, driven by observations.

A person enters the zone (a face at least ``min_face_px`` tall) → the face is locked → thermal
readings are taken on that face until ``stable_samples`` agree → a health code is read and judged →
one decision. Fever decides at once (no code needed); a missing stage decides ``retry`` when its
timeout passes, so a slow stage can never stall the lane. After a decision the lane waits for the
person to leave (no face for ``leave_after_s``) before screening anyone again: one screening per
person, however long they stand there. Faces are tracked (``station.domain.tracking``), so a
screening belongs to one track id: a *different* person stepping up after a decision is screened at
once, and a person replaced mid-screening ends that screening (``retry``) instead of mixing readings.

No I/O and no clocks here: every input carries its own monotonic timestamp and ``tick(now)`` drives
timeouts, so tests replay recorded observations and get the same decisions every time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from statistics import median
from typing import Any

from station.domain.direction import EXIT, DirectionCounter
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
from station.domain.tracking import FaceTracker, TrackerSettings, capture_score

UNSTABLE = "unstable"  # a reading taken while the face was still moving or growing


class LaneState(StrEnum):
    """Where one lane's screening machine stands (transitions: see ``ScreeningLane``)."""

    IDLE = "idle"  # nobody in the zone
    SCREENING = "screening"  # a person is being screened
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

    def __post_init__(self) -> None:
        if self.uncoloured_code not in (Decision.MANUAL_CHECK, Decision.DENY_CODE):
            raise ValueError(f"uncoloured_code must be manual_check or deny_code, not {self.uncoloured_code}")
        if self.idcard_unknown not in (Decision.MANUAL_CHECK, Decision.DENY_CODE):
            raise ValueError(f"idcard_unknown must be manual_check or deny_code, not {self.idcard_unknown}")

    def as_record(self) -> dict[str, str]:
        """Return the policies as recorded with every decision."""
        return {
            "temperature": self.temperature,
            "yellow_code": self.yellow_code.value,
            "uncoloured_code": self.uncoloured_code.value,
            "idcard_unknown": self.idcard_unknown.value,
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
)
"""Verifier detail copied into the event's ``code`` record (docs/mqtt.md); everything else stays in memory."""


class ScreeningLane:
    """One lane's screening state machine: feed it observations; it returns a verdict when a screening ends.

    States and the only transitions between them:

    - ``IDLE`` → ``SCREENING``: a face at least ``min_face_px`` tall enters the zone; the largest
      such face is locked by its track id.
    - ``SCREENING`` → ``DECIDED``: a verdict — fever (at once, no code needed), a judged code once
      the temperature is normal or exempt, a sensor fault (``manual_check``), or a stage timeout
      (``retry``, or ``manual_check`` when only an invalid code was shown).
    - ``SCREENING`` → ``IDLE``: the person is gone before a decision — not seen for
      ``leave_after_s``, or replaced at the gate by another track; the verdict is ``retry``
      (``left_before_decision``).
    - ``DECIDED`` → ``IDLE``: the decided person is not seen for ``leave_after_s``.
    - ``DECIDED`` → ``SCREENING``: a different track steps up (passing through ``IDLE`` in the
      same frame, without waiting for ``leave_after_s``).

    The decided person standing on keeps the lane ``DECIDED``: one screening per person.
    """

    def __init__(
        self,
        settings: ScreeningSettings,
        policy: ScreeningPolicy,
        calibration: ThermalCalibration,
        on_verdict: Callable[[Verdict], None] | None = None,
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.calibration = calibration
        self.state = LaneState.IDLE
        self._current: _Screening | None = None
        self._last_face_t: float | None = None
        self._on_verdict = on_verdict
        self._warmup = WarmupTracker(calibration.warmup_s, calibration.warmup_max_die_rate)
        # A track outlives a detection drop-out as long as a person is allowed to be out of sight.
        self.tracker = FaceTracker(TrackerSettings(memory_s=settings.leave_after_s))
        self.directions = DirectionCounter()  # entries / exits of every tracked face (geometry set by the app)

    # -- inputs ---------------------------------------------------------------------------------
    def on_faces(self, obs: FaceObservation) -> Verdict | None:
        """Track the faces of one visible frame; start, follow or end a screening."""
        # Every face is tracked, near or far: a person keeps one id from walking up to leaving.
        tracks = self.tracker.update([f.box for f in obs.faces], [f.score for f in obs.faces], obs.captured_t)
        self.directions.update(tracks, obs.frame_size)
        in_zone = [
            (f, tr.id, i) for i, (f, tr) in enumerate(zip(obs.faces, tracks, strict=True)) if f.box.height >= self.settings.min_face_px
        ]
        if not in_zone:
            return self.tick(obs.done_t)
        current_id = self._current.track_id if self._current is not None else None
        mine = [x for x in in_zone if x[1] == current_id]
        if self.state is not LaneState.IDLE and not mine:
            # Somebody else is at the gate and the tracked person is not.
            if self.state is LaneState.SCREENING:
                # Never mix one person's readings with the next one's: this screening ends here and
                # the newcomer's starts with the next frame.
                return self._decide(Decision.RETRY, "left_before_decision", obs.done_t, alarm=False, person_left=True)
            # Decided, and a different person stepped up: screen them now, without waiting for
            # leave_after_s (the previous face may have left only a frame ago).
            self.state = LaneState.IDLE
            self._current = None
        # The tracked person is followed by id; a new screening takes the nearest (largest) face.
        face, track_id, index = mine[0] if mine else max(in_zone, key=lambda x: x[0].box.area)
        self._last_face_t = obs.captured_t
        if self.state is LaneState.IDLE:
            self.state = LaneState.SCREENING
            self._current = _Screening(
                enter_t=obs.captured_t,
                face_t=obs.done_t,
                face=face,
                frame_size=obs.frame_size,
                detect_ms=obs.detect_ms,
                track_id=track_id,
            )
            self._current.face_sizes.append((obs.captured_t, face.box.height))
        elif self.state is LaneState.SCREENING and self._current is not None:
            self._current.face = face
            sizes = self._current.face_sizes
            sizes.append((obs.captured_t, face.box.height))
            # Keep just enough history to judge the last face_stable_s.
            while len(sizes) > 2 and sizes[1][0] <= obs.captured_t - self.settings.face_stable_s:
                sizes.popleft()
        s = self._current
        if self.state is LaneState.SCREENING and s is not None and index < len(obs.sharpness):
            # The pipeline keeps the crops; the lane only says which frame was this person's best.
            score = capture_score(face.box.height, obs.sharpness[index], face.score)
            if s.capture is None or score > s.capture["score"]:
                s.capture = {"frame_seq": obs.frame_seq, "box": face.box.as_list(), "score": round(score, 2)}
        return self.tick(obs.done_t)

    def face_stable(self) -> bool:
        """Return True once the locked face has held its size for ``face_stable_s`` (the person stands still)."""
        s = self._current
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
        )

    def on_thermal(self, frame: ThermalFrame) -> Verdict | None:
        """Measure the locked face in ``frame`` (if someone is being screened)."""
        # Every frame feeds the warm-up tracker, screening or not: the die's history is the evidence.
        warming = self._warmup.update(frame.t, frame.die_c)
        if self.state is not LaneState.SCREENING or self._current is None:
            return None
        m = measure_face(frame, self._current.face.box, self.calibration, others=self._other_faces(), warming_up=warming)
        return self.on_temperature(m)

    def _other_faces(self) -> list[Box]:
        """Return the faces in the newest camera frame other than the screened person's.

        One as near as the screened face makes the reading ambiguous (``several_people``).
        """
        s = self._current
        tracks = self.tracker.tracks
        if s is None or not tracks:
            return []
        newest = max(tr.last_t for tr in tracks.values())
        return [tr.box for tid, tr in tracks.items() if tid != s.track_id and tr.last_t >= newest]

    def on_temperature(self, m: TemperatureMeasurement) -> Verdict | None:
        """Take one reading of the screened face; a run of ``stable_samples`` agreeing readings is the temperature."""
        s = self._current
        if self.state is not LaneState.SCREENING or s is None:
            return None
        state = m.state
        if state == MeasureState.MEASURED and not self.face_stable():
            state = UNSTABLE
        s.last_measure_state = state
        s.measure_states[state] = s.measure_states.get(state, 0) + 1
        if state == MeasureState.SENSOR_FAULT and (s.temperature_c is not None or self._temperature_required()):
            # (an exiting person in one-way mode needs no reading, so a sensor fault does not stop them)
            return self._decide(Decision.MANUAL_CHECK, "sensor_fault", m.t, alarm=False)
        if s.temperature_c is None:
            if state == MeasureState.MEASURED and m.core_c is not None:
                s.samples.append(m)
                window = s.samples[-self.settings.stable_samples :]
                values = [x.core_c for x in window if x.core_c is not None]
                if len(values) >= self.settings.stable_samples and max(values) - min(values) <= self.settings.max_sample_spread_c:
                    s.temperature = window[-1]
                    s.temperature_c = round(median(values), 2)
                    s.temperature_t = m.t
            else:
                # A frame that cannot be measured breaks the run: agreement must be consecutive.
                s.samples.clear()
        return self._evaluate(m.t)

    def on_code(self, obs: CodeObservation) -> Verdict | None:
        """Take one judged health code for the person being screened."""
        s = self._current
        if self.state is not LaneState.SCREENING or s is None:
            return None
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
        st = self.settings
        if self.state is LaneState.DECIDED:
            if self._last_face_t is None or now - self._last_face_t >= st.leave_after_s:
                self.state = LaneState.IDLE
                self._current = None
            return None
        if self.state is not LaneState.SCREENING or self._current is None:
            return None
        if self._last_face_t is not None and now - self._last_face_t >= st.leave_after_s:
            return self._decide(Decision.RETRY, "left_before_decision", now, alarm=False, person_left=True)
        return self._evaluate(now)

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
        if person_left:
            self.state = LaneState.IDLE
            self._current = None
        else:
            self.state = LaneState.DECIDED
        if self._on_verdict is not None:
            self._on_verdict(verdict)
        return verdict
