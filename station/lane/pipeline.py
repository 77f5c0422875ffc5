"""The 1-second path: sensors → observations → the lane's state machine → record → gate.

Threads, each with one job, connected by bounded hand-offs:

- camera: reads frames into two one-item "latest" slots (face, code). A frame nobody took before the
  next one arrived is dropped and counted — detection always works on the newest picture, so a slow
  stage costs frames, never latency.
- face: detects faces on the newest frame → ``FaceObservation``.
- code: while someone is being screened, decodes and verifies codes on the newest frame. A decoder
  can take seconds on a bad image; the lane does not wait for it — its code timeout turns a slow
  decode into ``retry``.
- thermal: reads whole frames from the thermal source.
- lane: the only thread that touches the state machine; consumes observations from a bounded inbox
  and drives timeouts.
- executor: writes each decision (event + outbox, one transaction) and only then commands the gate,
  with a deadline: a command that waited too long (slow disk) is refused by the gate.

Nothing on the lane thread touches disk or network.

Hostile or faulty input never kills a stage. Each loop contains a failure around the one item it
was handling (a frame, a decoded code, a thermal frame, an inbox item, a decision): the item is
dropped, the failure counted per stage and exception type (``StageHealth``) and logged once per
kind per ``error_log_interval_s`` (``station.ops.ratelimit.FailureLog``), and the loop goes on. A
verifier that raises becomes an ``invalid``/``verifier_error`` verdict, so the lane treats the
code like any unreadable one (``manual_check`` after the code timeout, never ``pass``).

A loop that raises anyway (a real bug outside the per-item guard, or ``escalate_after`` items in a
row all failing in a stage fed by devices — never in the code stage, whose items are what a passer-by
shows) is restarted on its own thread by ``StageSupervisor``, with a growing back-off and
at most ``restart_limit`` restarts per ``restart_window_s``. Past that the stage is given up:
``alive()`` turns False, the systemd watchdog stops being pinged and systemd restarts the station —
the in-process restarts keep one hostile QR from using up systemd's ``StartLimitBurst``.
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from station.domain.gate import gate_command_for
from station.domain.model import (
    CodeObservation,
    CodeStatus,
    CodeVerdict,
    Decision,
    DecodedCode,
    FaceObservation,
    GateCommand,
    GateResult,
    ScreeningEvent,
    TemperatureMeasurement,
    ThermalFrame,
    VisibleFrame,
)
from station.domain.screening import Abandoned, LaneState, ScreeningLane, StaffCheck, Verdict
from station.domain.thermal import MeasureState
from station.lane.capture import CaptureKeeper
from station.lane.frame_gate import FrameGate
from station.ops.backoff import Backoff
from station.ops.ratelimit import FailureLog, RateLimiter
from station.ports import (
    Clock,
    CodeReader,
    CodeVerifier,
    EventStore,
    FaceDetector,
    FrameSource,
    GateOutput,
    ThermalSource,
)

log = logging.getLogger("station.lane.pipeline")

T = TypeVar("T")


class LatestSlot(Generic[T]):
    """A one-item mailbox that keeps only the newest item and counts what it overwrote."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._closed = False
        self.dropped = 0

    def put(self, item: T) -> None:
        """Replace whatever the slot holds with ``item`` (counting the overwritten one as dropped)."""
        with self._cond:
            if self._item is not None:
                self.dropped += 1
            self._item = item
            self._cond.notify()

    def take(self, timeout: float) -> T | None:
        """Return the newest item and empty the slot, or None after ``timeout`` s (at once when closed)."""
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        """Wake every waiting taker; later takes return at once."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


@dataclass(frozen=True, slots=True)
class StationIdentity:
    """Which lane of which station at which site the events come from."""

    site: str
    station_id: str
    lane: str


@dataclass(frozen=True, slots=True)
class Decided:
    """What listeners (the demo printer, the UI, the scene) hear after the gate acted."""

    event: ScreeningEvent
    gate: GateResult
    stored_ms: float  # decision → event durably written
    gate_ms: float  # decision → gate command carried out (or refused)
    capture: Any = None  # the person's best face crop (BGR ndarray, in memory only), when still kept


class _StaffRequest:
    """A staff check waiting for the lane thread's answer; abandoned (never carried out) once its asker gave up."""

    def __init__(self, check: StaffCheck) -> None:
        self.check = check
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.abandoned = False
        self.verdict: Verdict | None = None
        self.reason = "lane_not_answering"


@dataclass(slots=True)
class PipelineSettings:
    """Timings and limits of the pipeline's threads and their supervision."""

    thermal_stale_s: float = 2.0
    command_ttl_s: float = 0.5
    inbox_size: int = 256
    code_repeat_s: float = 1.0  # the same payload is judged again at most this often
    detect_max_rate_hz: float = 0.0  # face detection budget (station.lane.frame_gate); 0 = every frame
    detect_skip_diff: float = 0.0  # re-use detections while the frame is unchanged; 0 = off
    # A decision whose event could not be written (disk full) is kept in memory and written when
    # space returns; past this many the executor stops taking decisions (the lane then stalls and
    # the watchdog restarts the station) instead of silently dropping records.
    unrecorded_max: int = 1000
    record_retry_s: float = 1.0
    # Stage containment and supervision (see the module docstring).
    error_log_interval_s: float = 60.0  # one log line per stage and failure kind per interval
    escalate_after: int = 200  # this many dropped items in a row: the loop is broken, restart it
    read_error_pause_s: float = 0.05  # after a device read raised: do not spin on a dead adapter
    restart_limit: int = 5  # in-process restarts of one stage per restart_window_s, then give up
    restart_window_s: float = 600.0
    restart_backoff_s: float = 0.2  # doubles with each restart inside the window
    restart_backoff_max_s: float = 2.0  # well under the watchdog's stale_after (WatchdogSec / 2)


@dataclass(slots=True)
class _Counters:
    values: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.values[key] += n


class StageFailing(RuntimeError):
    """Every recent item of a stage failed: the loop itself is broken and goes to its supervisor."""


class StageHealth:
    """One stage's failures per kind, in-process restarts, and whether its supervisor gave up."""

    def __init__(self, name: str, settings: PipelineSettings, monotonic: Callable[[], float], *, escalate: bool = True) -> None:
        self.name = name
        # A stage whose items are what people show (codes, plates) never escalates: a hostile code
        # held up for minutes fails every frame, and that must cost frames, never the stage.
        self.escalate_after = settings.escalate_after if escalate else 0
        self.errors = FailureLog(log, "pipeline stage item", interval_s=settings.error_log_interval_s, monotonic=monotonic)
        self.state = "not started"  # running | restarting | given_up | stopped
        self.restarts = 0
        self.last_crash: str | None = None
        self._in_a_row = 0

    def failed(self, kind: str, exc: BaseException, *, dropped: bool = True, **fields: Any) -> None:
        """Count (and maybe log) one failure; raises ``StageFailing`` when too many items in a row were dropped."""
        self.errors.report(kind, exc, stage=self.name, **fields)
        if not dropped:
            return
        self._in_a_row += 1
        if self.escalate_after > 0 and self._in_a_row >= self.escalate_after:
            self._in_a_row = 0
            raise StageFailing(f"stage {self.name}: {self.escalate_after} items in a row failed, last {kind}") from exc

    def ok(self) -> None:
        """Note that one item went through: the failures so far were about items, not the loop."""
        self._in_a_row = 0

    def snapshot(self) -> dict[str, Any]:
        """Return the stage's state, restarts, failures per kind and last crash, for status and MQTT."""
        return {"state": self.state, "restarts": self.restarts, "errors": self.errors.snapshot(), "last_crash": self.last_crash}


def health_summary(stages: dict[str, dict[str, Any]], *, alive: bool) -> dict[str, Any]:
    """Return the stage snapshots with their totals; ``state`` is ok, degraded (restarted or failing items) or failed."""
    given_up = [name for name, h in stages.items() if h["state"] == "given_up"]
    restarts = sum(int(h["restarts"]) for h in stages.values())
    errors = sum(sum(h["errors"].values()) for h in stages.values())
    state = "failed" if given_up or not alive else "degraded" if restarts or errors else "ok"
    return {"state": state, "alive": alive, "restarts": restarts, "errors": errors, "given_up": given_up, "stages": stages}


class StageSupervisor:
    """Runs one stage loop on its own thread; restarts it in-process when it raises, within a rate limit."""

    def __init__(
        self,
        name: str,
        loop: Callable[[], None],
        health: StageHealth,
        settings: PipelineSettings,
        stop: threading.Event,
        monotonic: Callable[[], float],
        thread_name: str | None = None,
    ) -> None:
        self.name = name
        self.loop = loop
        self.health = health
        self.settings = settings
        self._stop = stop
        self._restarts = RateLimiter(max(1, settings.restart_limit), settings.restart_window_s, monotonic=monotonic)
        self._monotonic = monotonic
        self.thread = threading.Thread(target=self._run, name=thread_name or f"station-{name}", daemon=True)

    def start(self) -> None:
        """Start the stage's thread."""
        self.thread.start()

    def alive(self) -> bool:
        """Return True while the thread runs and the supervisor has not given the stage up."""
        return self.thread.is_alive() and self.health.state != "given_up"

    def _run(self) -> None:
        backoff = Backoff(self.settings.restart_backoff_s, self.settings.restart_backoff_max_s)
        last_crash_t: float | None = None
        while True:
            self.health.state = "running"
            try:
                self.loop()
            except Exception as exc:  # the loop itself broke: restart it here, not the whole station
                now = self._monotonic()
                self.health.last_crash = type(exc).__name__  # never the message: it may quote a hostile payload
                if self.settings.restart_limit <= 0 or not self._restarts.allow(self.name):
                    # Given up: alive() turns False, the watchdog stops and systemd restarts the station.
                    self.health.state = "given_up"
                    log.critical(
                        "pipeline stage given up stage=%s restarts=%d limit=%d window_s=%.0f",
                        self.name,
                        self.health.restarts,
                        self.settings.restart_limit,
                        self.settings.restart_window_s,
                        exc_info=exc,
                    )
                    return
                if last_crash_t is None or now - last_crash_t >= self.settings.restart_window_s:
                    backoff.reset()  # a quiet window: the next restart waits the shortest time again
                last_crash_t = now
                delay = backoff.next()
                self.health.restarts += 1
                self.health.state = "restarting"
                log.error(
                    "pipeline stage crashed, restarting stage=%s restart=%d backoff_s=%.2f",
                    self.name,
                    self.health.restarts,
                    delay,
                    exc_info=exc,
                )
                # On stop the wait ends at once and the loop runs again only to finish (the executor
                # drains what the lane decided; the other loops return at their first stop check).
                self._stop.wait(delay)
                continue
            self.health.state = "stopped"
            return


class Pipeline:
    """Runs one lane. Start after the adapters are started; stop before they are stopped."""

    def __init__(
        self,
        *,
        identity: StationIdentity,
        lane: ScreeningLane,
        thermal: ThermalSource,
        camera: FrameSource,
        detector: FaceDetector,
        reader: CodeReader,
        verifiers: list[CodeVerifier],
        store: EventStore,
        gate: GateOutput,
        clock: Clock,
        settings: PipelineSettings | None = None,
        on_progress: Callable[[], None] | None = None,
    ) -> None:
        self.identity = identity
        self.lane = lane
        self.thermal = thermal
        self.camera = camera
        self.detector = detector
        self.reader = reader
        self.verifiers = verifiers
        self.store = store
        self.gate = gate
        self.clock = clock
        self.settings = settings or PipelineSettings()
        self._on_progress = on_progress
        self._listeners: list[Callable[[Decided], None]] = []
        # Extra consumers of every camera frame (the vehicle lane's plate thread); each must only
        # hand the frame over (a latest-slot put), never work on the camera thread.
        self.frame_taps: list[Callable[[VisibleFrame], None]] = []
        # Same rule for the operator display's live picture (station/web/live.py): face boxes and
        # thermal frames for its overlay.
        self.face_taps: list[Callable[[FaceObservation], None]] = []
        self.thermal_taps: list[Callable[[ThermalFrame], None]] = []
        self._stop = threading.Event()
        self._face_slot: LatestSlot[VisibleFrame] = LatestSlot()
        self._code_slot: LatestSlot[VisibleFrame] = LatestSlot()
        self._inbox: queue.Queue[Any] = queue.Queue(maxsize=self.settings.inbox_size)
        self._decisions: queue.Queue[Verdict | None] = queue.Queue(maxsize=64)
        # (event, the gate's refusal) for decisions not yet durable; only the executor touches it.
        self._unrecorded: deque[tuple[ScreeningEvent, GateResult]] = deque()
        self._supervisors: list[StageSupervisor] = []
        self.stage_health: dict[str, StageHealth] = {
            name: StageHealth(name, self.settings, clock.monotonic, escalate=name != "code") for name in self.STAGES
        }
        self.counters = _Counters()
        self._last_thermal_t = clock.monotonic()
        self._last_code: tuple[bytes, float] | None = None
        self.captures = CaptureKeeper()
        self.frame_gate = FrameGate(self.settings.detect_max_rate_hz, self.settings.detect_skip_diff)
        self.last_decided: Decided | None = None
        lane.on_abandoned = self._abandoned

    def _abandoned(self, a: Abandoned) -> None:
        """Count and log a screening the lane ended without a decision (no event; the gate does nothing)."""
        self.counters.add(f"abandoned_{a.reason}")
        log.info("screening abandoned", extra={"track_id": a.track_id, "reason": a.reason, "at_gate": a.at_gate})

    def add_listener(self, fn: Callable[[Decided], None]) -> None:
        """Call ``fn`` (on the executor thread) after each decision was recorded and the gate acted."""
        self._listeners.append(fn)

    def staff_check(self, decision: Decision, reason: str, timeout_s: float = 2.0) -> tuple[Verdict | None, str]:
        """Have the lane decide the person at the gate as staff say (``ScreeningLane.on_staff_check``).

        Return the verdict (its ``event_id`` is the event the executor is about to record) and
        ``"ok"``, or None and why not: the lane's refusals, ``lane_busy`` (inbox full) or
        ``lane_not_answering`` (no answer within ``timeout_s``; the request is then void, never
        carried out later).
        """
        request = _StaffRequest(StaffCheck(decision, reason, uuid.uuid4().hex, self.clock.monotonic()))
        try:
            self._inbox.put(request, timeout=timeout_s / 2)
        except queue.Full:
            return None, "lane_busy"
        if not request.done.wait(timeout_s):
            with request.lock:
                if not request.done.is_set():
                    request.abandoned = True
                    return None, "lane_not_answering"
        return request.verdict, request.reason

    def _staff_item(self, request: _StaffRequest) -> Verdict | None:
        """Answer one staff check on the lane thread (the asker waits for ``done``)."""
        with request.lock:
            if request.abandoned:
                return None
            # The lane's own time: the request may have waited in the inbox, and a gate command's deadline counts from here.
            check = StaffCheck(request.check.decision, request.check.reason, request.check.event_id, self.clock.monotonic())
            try:
                request.verdict, request.reason = self.lane.on_staff_check(check)
            finally:
                request.done.set()
            return request.verdict

    # -- lifecycle --------------------------------------------------------------------------------
    STAGES = ("executor", "lane", "thermal", "face", "code", "camera")  # started in this order

    def start(self) -> None:
        """Start every stage under its supervisor, consumers first."""
        self._last_thermal_t = self.clock.monotonic()
        loops: dict[str, Callable[[], None]] = {
            "executor": self._executor_loop,
            "lane": self._lane_loop,
            "thermal": self._thermal_loop,
            "face": self._face_loop,
            "code": self._code_loop,
            "camera": self._camera_loop,
        }
        for name in self.STAGES:
            sup = StageSupervisor(name, loops[name], self.stage_health[name], self.settings, self._stop, self.clock.monotonic)
            sup.start()
            self._supervisors.append(sup)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop producers first, then let the lane and executor finish what they hold."""
        self._stop.set()
        self._face_slot.close()
        self._code_slot.close()
        for sup in reversed(self._supervisors):
            if sup.name == "executor":
                self._decisions.put(None)
            sup.thread.join(timeout)
            if sup.thread.is_alive():
                log.error("thread did not stop thread=%s", sup.thread.name)
        self._supervisors.clear()

    def alive(self) -> bool:
        """Return True while every stage runs (or is being restarted within its limit); False once one is given up."""
        return bool(self._supervisors) and all(s.alive() for s in self._supervisors)

    def health(self) -> dict[str, Any]:
        """Return per stage: state, in-process restarts, contained failures per kind (status, MQTT state)."""
        return health_summary({name: h.snapshot() for name, h in self.stage_health.items()}, alive=self.alive())

    # -- producers --------------------------------------------------------------------------------
    def _tap(self, stage: StageHealth, taps: list[Callable[[Any], None]], item: Any) -> None:
        """Hand ``item`` to each tap; a failing tap is counted, never stops the stage or the other taps."""
        for tap in taps:
            try:
                tap(item)
            except Exception as exc:  # counted per kind, logged once per interval
                stage.failed(f"tap:{type(exc).__name__}", exc, dropped=False, tap=getattr(tap, "__qualname__", repr(tap)))

    def _camera_loop(self) -> None:
        health = self.stage_health["camera"]
        while not self._stop.is_set():
            try:
                frame = self.camera.read(timeout=0.5)
            except Exception as exc:  # a dead or confused adapter: count, pause, read again
                health.failed(type(exc).__name__, exc, step="read")
                self._stop.wait(self.settings.read_error_pause_s)
                continue
            if frame is None:
                continue
            health.ok()
            self.counters.add("frames")
            self._face_slot.put(frame)
            self._code_slot.put(frame)
            self._tap(health, self.frame_taps, frame)

    def _face_loop(self) -> None:
        health = self.stage_health["face"]
        last: FaceObservation | None = None
        while not self._stop.is_set():
            frame = self._face_slot.take(timeout=0.5)
            if frame is None:
                continue
            try:
                last = self._faces_in(frame, last)
            except Exception as exc:  # this frame only: dropped, counted
                health.failed(type(exc).__name__, exc, frame_seq=getattr(frame, "seq", None))
                continue
            health.ok()

    def _faces_in(self, frame: VisibleFrame, last: FaceObservation | None) -> FaceObservation | None:
        """Detect (or re-use) the faces of one frame and offer them to the lane; return the last detection."""
        h, w = frame.image.shape[:2]
        if last is not None and not self.frame_gate.should_detect(frame.image, frame.t):
            # Same scene as the last detected frame: its faces still hold (no crops from this frame).
            self.counters.add("detections_reused")
            self._offer(FaceObservation(frame.seq, frame.t, self.clock.monotonic(), last.faces, (w, h), 0.0))
            return last
        t0 = self.clock.monotonic()
        faces = self.detector.detect(frame.image)
        done = self.clock.monotonic()
        sharpness = self.captures.measure(frame.seq, frame.image, faces)
        last = FaceObservation(frame.seq, frame.t, done, tuple(faces), (w, h), (done - t0) * 1000.0, sharpness)
        self._offer(last)
        self._tap(self.stage_health["face"], self.face_taps, last)
        return last

    def _code_loop(self) -> None:
        health = self.stage_health["code"]
        while not self._stop.is_set():
            frame = self._code_slot.take(timeout=0.5)
            if frame is None or self.lane.state is not LaneState.SCREENING:
                continue
            try:
                self._codes_in(frame)
            except Exception as exc:  # this frame only (a decoder that raised): dropped, counted
                health.failed(type(exc).__name__, exc, frame_seq=getattr(frame, "seq", None))
                continue
            health.ok()

    def _codes_in(self, frame: VisibleFrame) -> None:
        """Decode the codes of one frame, judge each new one, offer the verdicts to the lane."""
        t0 = self.clock.monotonic()
        codes = self.reader.decode(frame.image)
        decode_ms = (self.clock.monotonic() - t0) * 1000.0
        self.counters.add("decodes")
        if getattr(self.reader, "last_was_cached", False):  # the tracking wrapper answered without decoding
            self.counters.add("decodes_cached")
        for code in codes:
            now = self.clock.monotonic()
            if self._last_code and self._last_code[0] == code.payload and now - self._last_code[1] < self.settings.code_repeat_s:
                continue  # the same code still held up: already judged
            self._last_code = (code.payload, now)
            verdict = self._judge(code, frame.image)
            self.counters.add(f"codes_{verdict.status.value}")
            self._offer(CodeObservation(frame.seq, frame.t, self.clock.monotonic(), verdict, decode_ms, code.decoder))

    def _judge(self, code: DecodedCode, image: Any = None) -> CodeVerdict:
        """Ask each configured verifier in order; the first that recognises the format decides.

        A verifier that also looks at the pixels (the colour-on-screen fallback, or the judge that
        wraps it) gets the frame and the code's box through ``verify_in_frame``. A verifier that
        raises decides too: ``invalid``/``verifier_error`` (never passed on to a laxer verifier).
        """
        verdict: CodeVerdict | None = None
        for verifier in self.verifiers:
            try:
                in_frame = getattr(verifier, "verify_in_frame", None)
                if in_frame is not None:
                    verdict = in_frame(code, image, self.clock.wall())
                else:
                    verdict = verifier.verify(code.payload, self.clock.wall())
                if not isinstance(verdict, CodeVerdict) or not isinstance(verdict.status, CodeStatus):
                    raise TypeError(f"verifier returned {type(verdict).__name__}, not a CodeVerdict")
            except Exception as exc:  # a hostile payload (or a bug) must not end the code stage
                name = str(getattr(verifier, "name", type(verifier).__name__))
                self.stage_health["code"].failed(f"verify:{type(exc).__name__}", exc, dropped=False, verifier=name)
                self.counters.add("codes_verifier_error")
                return CodeVerdict(CodeStatus.INVALID, None, "verifier_error", name, detail={"error": type(exc).__name__})
            if not (verdict.status is CodeStatus.INVALID and verdict.reason == "unknown_format"):
                return verdict
        assert verdict is not None
        return verdict

    def _thermal_loop(self) -> None:
        health = self.stage_health["thermal"]
        while not self._stop.is_set():
            try:
                frame = self.thermal.read_frame(timeout=0.5)
            except Exception as exc:  # a driver bug on one read: count, pause, read again
                health.failed(type(exc).__name__, exc, step="read")
                self._stop.wait(self.settings.read_error_pause_s)
                continue
            if frame is not None:
                health.ok()
                self._offer(frame)
                self._tap(health, self.thermal_taps, frame)

    def offer_code(self, obs: CodeObservation) -> None:
        """Hand the lane a code judged outside the camera's code stage (an ID card read, station.lane.idcard_feed)."""
        self._offer(obs)

    def _offer(self, item: Any) -> None:
        try:
            self._inbox.put_nowait(item)
        except queue.Full:
            self.counters.add("inbox_dropped")

    # -- the lane ---------------------------------------------------------------------------------
    def _lane_loop(self) -> None:
        lane = self.lane
        health = self.stage_health["lane"]
        while not self._stop.is_set():
            try:
                item = self._inbox.get(timeout=0.05)
            except queue.Empty:
                item = None
            verdict: Verdict | None = None
            if item is not None:
                try:
                    verdict = self._lane_item(item)
                except Exception as exc:  # this observation only: dropped, counted; timeouts still run below
                    health.failed(type(exc).__name__, exc, item=type(item).__name__)
                else:
                    health.ok()
            # Timeouts are not an item: if they raise, the lane loop is broken and its supervisor restarts it.
            now = self.clock.monotonic()
            if verdict is None and lane.state is LaneState.SCREENING and now - self._last_thermal_t > self.settings.thermal_stale_s:
                # Checked on every pass, not only when idle: faces keep arriving while the sensor is silent.
                verdict = lane.on_temperature(TemperatureMeasurement(MeasureState.SENSOR_FAULT, now))
            if verdict is None:
                verdict = lane.tick(now)
            if verdict is not None:
                self.counters.add(f"decision_{verdict.decision.value}")
                # Blocks only if the executor is 64 decisions behind (a dead disk): then the lane
                # stops, the watchdog stops being pinged and systemd restarts the station.
                self._decisions.put(verdict)
            if self._on_progress is not None:
                self._on_progress()

    def _lane_item(self, item: Any) -> Verdict | None:
        lane = self.lane
        if isinstance(item, FaceObservation):
            return lane.on_faces(item)
        if isinstance(item, ThermalFrame):
            self._last_thermal_t = max(self._last_thermal_t, item.t)
            return lane.on_thermal(item)
        if isinstance(item, CodeObservation):
            return lane.on_code(item)
        if isinstance(item, _StaffRequest):
            return self._staff_item(item)
        return None

    # -- record, then act -------------------------------------------------------------------------
    def _executor_loop(self) -> None:
        while True:
            while len(self._unrecorded) >= self.settings.unrecorded_max and not self._stop.is_set():
                # Full: stop taking decisions rather than drop one (the lane backs up, see above).
                if not self._retry_unrecorded():
                    self._stop.wait(self.settings.record_retry_s)
            try:
                verdict = self._decisions.get(timeout=self.settings.record_retry_s if self._unrecorded else None)
            except queue.Empty:
                self._retry_unrecorded()
                continue
            if verdict is None:
                if not self._retry_unrecorded():
                    # Never actuated (the gate stayed closed), but their records are gone with us.
                    log.error(
                        "stopping with unrecorded decisions count=%d event_ids=%s",
                        len(self._unrecorded),
                        ",".join(e.event_id for e, _ in self._unrecorded),
                    )
                return
            self._retry_unrecorded()  # older decisions first, so records keep decision order
            try:
                self._carry_out(verdict)
            except Exception as exc:  # this decision only; the barrier goes to (stays in) its safe state
                self._safe_gate()
                self.stage_health["executor"].failed(type(exc).__name__, exc, decision=verdict.decision.value)
            else:
                self.stage_health["executor"].ok()

    def _safe_gate(self) -> None:
        try:
            self.gate.safe_state()
        except Exception:  # logged; nothing more the executor can do about its gate
            log.exception("gate safe state failed after a decision error")

    def _retry_unrecorded(self) -> bool:
        """Write kept events, oldest first; return True when none is left."""
        while self._unrecorded:
            event, result = self._unrecorded[0]
            try:
                self.store.record(event)
            except Exception as exc:  # still no space: keep it, try again later (logged once, when it failed)
                log.debug("kept event still not writable event_id=%s error=%s", event.event_id, exc)
                return False
            self._unrecorded.popleft()
            self.counters.add("recorded_late")
            try:
                self.store.record_gate_result(result)  # the audit row says the gate never acted on it
            except Exception as exc:  # the event itself is safe now
                log.error("gate result not recorded event_id=%s error=%s", event.event_id, exc)
            log.warning(
                "event recorded after a failed write; the gate never acted on it event_id=%s decision=%s pending=%d",
                event.event_id,
                event.decision.value,
                len(self._unrecorded),
            )
        return True

    def _carry_out(self, verdict: Verdict) -> None:
        decided_t = verdict.stage_t["decision"]
        event = ScreeningEvent(
            event_id=verdict.event_id or uuid.uuid4().hex,
            station_id=self.identity.station_id,
            site=self.identity.site,
            lane=self.identity.lane,
            decision=verdict.decision,
            reason=verdict.reason,
            alarm=verdict.alarm,
            wall_ts=self.clock.wall(),
            temperature_c=verdict.temperature_c,
            temperature=verdict.temperature,
            code_colour=verdict.code_colour,
            code=verdict.code,
            face=verdict.face,
            stage_t={k: round(v, 6) for k, v in verdict.stage_t.items()},
            latency_ms=verdict.latency_ms(),
            policy=verdict.policy,
            clock_synced=self.clock.synced(),
            decision_source=verdict.source,
        )
        command: GateCommand = gate_command_for(event.event_id, verdict.decision, decided_t, self.settings.command_ttl_s, verdict.alarm)
        # The record is durable before the gate moves: a crash here leaves an event without a gate
        # action (safe: the barrier stays closed), never a gate action without its event.
        try:
            self.store.record(event)
        except Exception as exc:  # disk full, I/O error: logged loudly; the gate stays closed
            self.counters.add("record_failed")
            now = self.clock.monotonic()
            self.gate.safe_state()
            result = GateResult(event.event_id, command.action, False, f"fault: event not recorded: {exc}", now)
            # Kept, not lost: written (with this refusal as its gate result) once the disk takes it.
            self._unrecorded.append((event, result))
            log.error(
                "event not recorded, gate stays closed; kept for retry event_id=%s decision=%s pending=%d error=%s",
                event.event_id,
                event.decision.value,
                len(self._unrecorded),
                exc,
            )
            self._notify(Decided(event, result, round((now - decided_t) * 1000.0, 2), round((now - decided_t) * 1000.0, 2)))
            return
        stored_t = self.clock.monotonic()
        result = self.gate.execute(command, self.clock.monotonic())
        gate_t = self.clock.monotonic()
        if not result.executed:
            log.warning("gate command not carried out event_id=%s action=%s reason=%s", event.event_id, command.action, result.reason)
        try:
            self.store.record_gate_result(result)
        except Exception as exc:  # the event itself is safe; only its audit row is missing
            self.counters.add("record_failed")
            log.error("gate result not recorded event_id=%s error=%s", event.event_id, exc)
        decided = Decided(
            event,
            result,
            round((stored_t - decided_t) * 1000.0, 2),
            round((gate_t - decided_t) * 1000.0, 2),
            capture=self.captures.crop_for(verdict.face.get("capture")),
        )
        self.last_decided = decided
        log.info(
            "decision event_id=%s decision=%s reason=%s temperature_c=%s code=%s total_ms=%s",
            event.event_id,
            event.decision.value,
            event.reason,
            event.temperature_c,
            event.code_colour.value if event.code_colour else None,
            event.latency_ms.get("total"),
        )
        self._notify(decided)

    def _notify(self, decided: Decided) -> None:
        for fn in self._listeners:
            try:
                fn(decided)
            except Exception:  # logged; the decision is already recorded and acted on
                log.exception("decision listener failed listener=%r", fn)

    def stats(self) -> dict[str, Any]:
        """Return the lane's counters: frames, decodes, decisions, drops, restarts, unrecorded events, counts."""
        with self.counters.lock:
            out: dict[str, Any] = dict(self.counters.values)
        out["stage_restarts"] = sum(h.restarts for h in self.stage_health.values())
        out["stage_errors"] = sum(sum(h.errors.snapshot().values()) for h in self.stage_health.values())
        out["face_frames_dropped"] = self._face_slot.dropped
        out["code_frames_dropped"] = self._code_slot.dropped
        out["unrecorded_pending"] = len(self._unrecorded)
        out["lane_state"] = self.lane.state.value
        out["direction_counts"] = dict(self.lane.directions.counts)
        out["turned_back"] = self.lane.directions.turned_back
        out["refused"] = self.lane.directions.refused
        return out
