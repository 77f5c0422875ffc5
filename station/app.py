"""The composition root: the one place that turns configuration into running parts and wires them.

``StationApp`` builds every adapter from ``StationConfig`` (an adapter handed in explicitly — the
demo's emulated camera, say — is used instead), starts them in dependency order, and stops them in
reverse. Nothing else in the station chooses a concrete class or reaches into the app: each
collaborator gets what it needs (ports, callables, settings) as typed arguments from here.

Start order: store (so every later failure can be recorded) → gate, forced to its safe state → face
detector, warmed up → code reader and judge → thermal source → camera → pipeline (with the plate
thread and the direction counts) → broker link (outbox pump, states and commands, snapshots) →
operator display → status file → retention → control socket → READY to systemd. Stop order is the
reverse, ending with the gate in its safe state and the store closed.

A module that cannot work (no face model, thermal module absent, code library missing, broker
unreachable, a port taken) degrades the station instead of stopping it; each is a
:class:`Degradation` named with its reason in READY's status text, the log and ``stationctl status``.
"""

from __future__ import annotations

import functools
import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import platformdirs

from station.config import StationConfig
from station.domain.model import Decision, DecodedCode
from station.domain.screening import ScreeningLane, ScreeningPolicy, ScreeningSettings
from station.domain.thermal import ThermalCalibration
from station.lane.pipeline import Decided, Pipeline, PipelineSettings, StationIdentity
from station.ops.clock import ClockWatch, SystemClock
from station.ops.runtime import clear_runtime_status, write_runtime_status
from station.ops.systemd import Notifier, WatchdogGate
from station.ports import Clock, CodeReader, CodeVerifier, FaceDetector, FrameSource, GateOutput, ThermalSource

if TYPE_CHECKING:  # the running parts are imported where they are started: stationctl imports this module
    from drivers.publish.mqtt import MqttPublisher
    from station.codes.judge import CodeJudge
    from station.codes.online import OnlineVerifier
    from station.domain.vehicles import VehicleLane
    from station.lane.capture import CropWriter
    from station.lane.counts import CountsKeeper
    from station.lane.idcard_feed import IdCardFeed
    from station.lane.prompting import LanePrompter
    from station.lane.vehicle_loop import PlateLoop
    from station.lane.visits import VisitRecorder
    from station.lane.voice import VoiceQueue
    from station.link.commands import StationLink
    from station.link.snapshots import SnapshotPublisher
    from station.link.sync import OutboxPump
    from station.ops.control import ControlServer
    from station.store.events import SqliteEventStore
    from station.store.retention import RetentionThread
    from station.web.operator import OperatorServer
    from station.web.registration import Registrar
from station.store.events import DB_NAME

log = logging.getLogger("station.app")

STATUS_PERIOD_S = 2.0


def default_data_dir() -> Path:
    """Return the per-user data directory (used when ``station.data_dir`` is empty)."""
    return Path(platformdirs.user_data_dir("checkpoint-station", appauthor=False))


def data_dir_for(cfg: StationConfig, override: Path | None = None) -> Path:
    """Return the data directory: ``override``, else ``station.data_dir``, else the per-user default."""
    if override is not None:
        return override
    return Path(cfg.station.data_dir) if cfg.station.data_dir else default_data_dir()


def models_dir_for(cfg: StationConfig) -> Path:
    """Return the models directory: ``detector.models_dir``, else the default one (``station.models``)."""
    from station.models import default_models_dir

    return Path(cfg.detector.models_dir) if cfg.detector.models_dir else default_models_dir()


# -- builders: one per port, each picks the adapter the config names -------------------------------


def build_detector(cfg: StationConfig) -> FaceDetector:
    """Return the configured face detector, or one that finds nothing and says why (missing or corrupt model)."""
    # The station then runs degraded with the lane closed instead of crash-looping (station.lane.vision).
    from station.lane.vision import build_face_detector

    d = cfg.detector
    return build_face_detector(d.face, models_dir_for(cfg), score_threshold=d.score_threshold, threads=d.threads)


def vehicle_low_memory(cfg: StationConfig) -> bool:
    """Return whether the daemon runs the vehicle lane's low-memory mode (``vehicle.plate_low_memory`` in vehicle mode)."""
    return cfg.vehicle.mode == "vehicle" and cfg.vehicle.plate_low_memory


def apply_memory_settings(cfg: StationConfig) -> bool:
    """In the vehicle lane's low-memory mode, serve large allocations from their own mappings (station.ops.malloc); return whether set."""
    if not vehicle_low_memory(cfg):
        return False
    from station.ops.malloc import mmap_large_allocations

    return mmap_large_allocations()


def build_reader(cfg: StationConfig) -> CodeReader:
    """Return the configured code reader (``codes.reader``), tracked across frames when ``codes.track`` is on."""
    c = cfg.codes
    reader: CodeReader
    if c.reader == "cascade":
        from drivers.codes.cascade import CascadeReader

        reader = CascadeReader(max_side=c.decode_max_side)
    elif c.reader == "zxing":
        from drivers.codes.zxing_reader import ZxingReader

        reader = ZxingReader(max_side=c.decode_max_side)
    elif c.reader == "opencv":
        from drivers.codes.opencv_reader import OpenCvReader

        reader = OpenCvReader(max_side=c.decode_max_side)
    else:
        from drivers.codes.pyzbar_reader import PyzbarReader

        reader = PyzbarReader(max_side=c.decode_max_side)
    if c.track:
        from drivers.codes.code_tracker import TrackingReader

        # An unchanged code is not decoded again every frame; see drivers/codes/code_tracker.py.
        reader = TrackingReader(reader, max_reuse=c.track_max_reuse)
    return reader


def build_code_judge(cfg: StationConfig, data_dir: Path | None = None, clock_synced: Callable[[], bool] | None = None) -> CodeJudge:
    """Return the configured verifiers in order, wrapped in the guards (salted hash, replay) as one judge.

    With ``data_dir`` the salt, the replay memory and pushed trust lists live there; without it
    (CLI tools) the salt is per process and nothing is remembered. With ``clock_synced`` (the station's
    clock), a verdict on a code's dates judged while unsynchronised is marked for policy.unsynced_clock_validity.
    """
    from station.codes.colour import ScreenColourVerifier
    from station.codes.hc1 import Hc1Verifier
    from station.codes.judge import CodeJudge, SeenCodes, holder_ref_fn, station_salt
    from station.codes.local_claims import LocalClaimsVerifier
    from station.codes.online import OnlineVerifier
    from station.codes.trace_key import DistrictKeys
    from station.codes.trust_list import TrustStore

    c = cfg.codes
    salt = station_salt(data_dir)
    factories: dict[str, Callable[[], CodeVerifier]] = {
        "hc1": lambda: Hc1Verifier(
            TrustStore(data_dir, Path(c.trust_list_file) if c.trust_list_file else None),
            max_clock_skew_s=c.max_clock_skew_s,
            dynamic_grace_s=c.dynamic_grace_s,
            holder_ref=holder_ref_fn(salt),
            trace_ref=DistrictKeys(data_dir).holder_ref,  # none without a pushed district key (station.codes.trace_key)
        ),
        "online": lambda: OnlineVerifier(
            f"{cfg.mqtt.topic_prefix}/{cfg.station.site}/{cfg.station.id}",
            timeout_s=c.online_timeout_s,
            identity={"station_id": cfg.station.id, "site": cfg.station.site},
        ),
        "screen-colour": ScreenColourVerifier,
        "local-claims": lambda: LocalClaimsVerifier(max_clock_skew_s=c.max_clock_skew_s),
    }
    seen = SeenCodes(data_dir / "codes" / "seen.sqlite3") if data_dir is not None else SeenCodes(None)
    return CodeJudge(
        [factories[name]() for name in c.verifiers],
        salt=salt,
        seen=seen,
        replay_window_s=c.replay_window_s,
        replay_grace_s=c.replay_grace_s,
        clock_synced=clock_synced,
    )


def build_verifiers(cfg: StationConfig, data_dir: Path | None = None) -> list[CodeVerifier]:
    """Return the code judge (see :func:`build_code_judge`) as the pipeline's verifier list."""
    return [build_code_judge(cfg, data_dir)]


def _online_verifiers(judge: CodeJudge) -> list[OnlineVerifier]:
    from station.codes.online import OnlineVerifier

    return [v for v in judge.verifiers if isinstance(v, OnlineVerifier)]


def build_thermal(cfg: StationConfig) -> ThermalSource:
    """Return the configured thermal source (``thermal.driver``), started later by the caller."""
    from drivers.thermal.gy_mcu90640 import GyMcu90640Source

    t = cfg.thermal
    # The daemon starts without its module rather than crash-looping: screenings end in manual_check
    # (sensor fault) and the state says "reconnecting" until the module answers.
    if t.driver == "htpa32x32":
        from drivers.thermal.htpa32x32 import HtpaSource

        return HtpaSource(t.port, refresh_hz=float(t.refresh_hz), require_link_at_start=False)
    return GyMcu90640Source(
        t.port, baud=t.baud or None, refresh_hz=float(t.refresh_hz), emissivity=t.emissivity, require_link_at_start=False
    )


def build_camera(cfg: StationConfig) -> FrameSource:
    """Return the camera named by ``camera.device`` (a device index, a device path or a video file)."""
    from drivers.camera.opencv_camera import OpenCVCamera

    c = cfg.camera
    device: str | int = int(c.device) if c.device.isdigit() else c.device
    return OpenCVCamera(device, width=c.width, height=c.height, fps=c.fps)


def build_gate(cfg: StationConfig, clock: Clock) -> GateOutput:
    """Return the GPIO gate on the configured pins (``gate.pin_factory`` = ``mock`` for tests and demos)."""
    from drivers.gate.gpio_gate import GpioGate

    g = cfg.gate
    return GpioGate(
        relay_pin=g.relay_pin,
        buzzer_pin=g.buzzer_pin,
        green_pin=g.green_pin,
        red_pin=g.red_pin,
        amber_pin=g.amber_pin,
        open_s=g.open_s,
        alarm_s=g.alarm_s,
        pin_factory=g.pin_factory,
        clock=clock.monotonic,
    )


def calibration_for(cfg: StationConfig) -> ThermalCalibration:
    """Return the thermal calibration from ``[thermal]`` and the valid range from ``[screening]``."""
    t, s = cfg.thermal, cfg.screening
    return ThermalCalibration(
        registration=np.array(t.registration, dtype=np.float64),
        offset_c=t.offset_c,
        valid_min_c=s.valid_min_c,
        valid_max_c=s.valid_max_c,
        min_pixels=t.min_pixels,
        roi_margin=t.roi_margin,
        version=t.calibration_version,
        ambient_gain=t.ambient_gain,
        ambient_ref_c=t.ambient_ref_c,
        ta_shift_c=t.ta_shift_c,
        room_c=t.room_c if t.ambient_source == "room" else None,
        face_ref_px=t.face_ref_px,
        distance_gain=t.distance_gain,
        too_close_ratio=t.too_close_ratio,
        too_far_ratio=t.too_far_ratio,
        reference_box=(t.reference_box[0], t.reference_box[1], t.reference_box[2], t.reference_box[3]) if t.reference_box else None,
        reference_c=t.reference_c,
        several_people_ratio=t.several_people_ratio,
        warmup_s=t.warmup_s,
        warmup_max_die_rate=t.warmup_max_die_rate,
    )


def lane_for(cfg: StationConfig) -> ScreeningLane:
    """Return the screening lane (settings, policy, calibration and direction geometry) from the config."""
    s = cfg.screening
    settings = ScreeningSettings(
        fever_threshold_c=s.fever_threshold_c,
        min_face_px=s.min_face_px,
        stable_samples=s.stable_samples,
        max_sample_spread_c=s.max_sample_spread_c,
        temperature_timeout_s=s.temperature_timeout_s,
        code_timeout_s=s.code_timeout_s,
        leave_after_s=s.leave_after_s,
        face_stable_s=s.face_stable_s,
        face_size_tolerance=s.face_size_tolerance,
        temperature_on=s.temperature_on,
        code_required=s.code_required,
        zone_x_min=s.zone_x_min,
        zone_x_max=s.zone_x_max,
        side_by_side_ratio=s.side_by_side_ratio,
    )
    policy = ScreeningPolicy(
        temperature=cfg.policy.temperature,
        yellow_code=Decision(cfg.policy.yellow_code),
        uncoloured_code=Decision(cfg.policy.uncoloured_code),
        idcard_unknown=Decision(cfg.policy.idcard_unknown),
        unsynced_clock_validity=cfg.policy.unsynced_clock_validity,
    )
    lane = ScreeningLane(settings, policy, calibration_for(cfg))
    from station.domain.direction import LaneGeometry

    d = cfg.direction
    lane.directions.geometry = LaneGeometry(by=d.by, entry=d.entry, min_travel=d.min_travel)
    return lane


@dataclass
class Injected:
    """Adapters handed to the composition root instead of being built from config."""

    thermal: ThermalSource | None = None
    camera: FrameSource | None = None
    gate: GateOutput | None = None
    clock: Clock | None = None
    extra_start: list[Any] = field(default_factory=list)  # started first, stopped last (emulators)


@dataclass(frozen=True)
class Degradation:
    """A module the station runs without, and why: READY's status text, the log and ``stationctl status`` name it."""

    module: str  # thermal, detector, plate_reader, code_reader, mqtt, control, http, speaker, registration
    reason: str

    def as_dict(self) -> dict[str, str]:
        """Return the degradation as the runtime status carries it."""
        return {"module": self.module, "reason": self.reason}


class UnavailableCodeReader:
    """Stand in for a code reader whose library cannot be loaded: read nothing, so no code ever passes."""

    def __init__(self, wanted: str) -> None:
        """Name the reader that was asked for."""
        self.name = f"unavailable:{wanted}"

    def decode(self, image: np.ndarray) -> list[DecodedCode]:
        """Return no codes."""
        return []


class StationApp:
    """Build, start and stop the whole station."""

    def __init__(
        self,
        cfg: StationConfig,
        data_dir: Path | None = None,
        injected: Injected | None = None,
        notifier: Notifier | None = None,
        config_path: Path | None = None,
    ) -> None:
        """Prepare the station from ``cfg``; nothing is opened before :meth:`start`."""
        self.cfg = cfg
        self.config_path = config_path  # for remote commands that validate or edit the file
        self.data_dir = data_dir_for(cfg, data_dir)
        self.injected = injected or Injected()
        self.notifier = notifier or Notifier()
        # Every part reads this one clock; the watch sees wall steps and the sync, and corrects records
        # stamped before it (station/ops/clock.py). Timing runs on its monotonic reading only.
        k = cfg.clock
        self.clock_watch = ClockWatch(
            self.injected.clock or SystemClock(k.timesync_flag), step_threshold_s=k.step_threshold_s, check_interval_s=k.check_interval_s
        )
        self.clock: Clock = self.clock_watch
        self.watchdog = WatchdogGate(self.notifier)
        self.stop_requested = threading.Event()
        self._stack: list[tuple[str, Callable[[], None]]] = []
        self._status_stop = threading.Event()
        # Found while starting (a model, a library, a socket); the live ones are added by degradations().
        self._degraded: list[Degradation] = []
        self.started_t: float | None = None
        self.ready_t: float | None = None
        self.warmup_ms: float | None = None
        # The running parts, in start order; None until started (or when the config leaves them out).
        self.store: SqliteEventStore | None = None
        self.session: int | None = None
        self.detector_state = "not started"
        self.code_judge: CodeJudge | None = None
        self.pipeline: Pipeline | None = None
        self.plates: PlateLoop | None = None  # the vehicle lane's plate thread (vehicle.mode = "vehicle")
        self.visits: VisitRecorder | None = None  # the vehicle lane's visits (a vehicle and its occupants as one record)
        self.plate_state = "off"
        self.large_allocations_mmapped = False  # the vehicle lane's low-memory mode (apply_memory_settings)
        self.counts_keeper: CountsKeeper | None = None
        self.publisher: MqttPublisher | None = None  # mqtt.url set
        self.pump: OutboxPump | None = None
        self.link: StationLink | None = None
        self.snapshots: SnapshotPublisher | None = None  # snapshots.enabled, with a broker
        self.http: OperatorServer | None = None  # http.enabled and the port could be bound
        self.voice: VoiceQueue | None = None  # voice.enabled (ALSA, or logged without a sound card)
        self.prompter: LanePrompter | None = None  # the next-step prompt for the display and the voice
        self.retention: RetentionThread | None = None
        self.crops: CropWriter | None = None  # [capture] keep is not "none"
        self.control: ControlServer | None = None  # None too when the socket could not be bound
        self.idcard: IdCardFeed | None = None  # idcard.enabled: the ID card reader as a decision source
        self.idcard_lookup: OnlineVerifier | None = None  # its centre look-up, with a centre key and a broker

    @property
    def db_path(self) -> Path:
        """Return the event database's path."""
        return self.data_dir / DB_NAME

    def _push(self, name: str, stop: Callable[[], None]) -> None:
        self._stack.append((name, stop))

    def _degrade(self, module: str, reason: str) -> None:
        self._degraded.append(Degradation(module, reason))

    def start(self) -> None:
        """Start everything in order; on any failure, stop what was started and re-raise."""
        self.started_t = self.clock.monotonic()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        from station.lane.counts import CountsKeeper
        from station.store.events import SqliteEventStore

        cfg = self.cfg
        self.large_allocations_mmapped = apply_memory_settings(cfg)  # before the models are loaded
        for extra in self.injected.extra_start:
            extra.start()
            self._push(type(extra).__name__, extra.stop)

        self.data_dir.mkdir(parents=True, exist_ok=True)
        store = SqliteEventStore(
            self.db_path, station_id=cfg.station.id, site=cfg.station.site, topic_prefix=cfg.mqtt.topic_prefix, recover=True
        )
        if store.recovery is not None:  # damaged files kept aside, started from what was readable (station.store.recovery)
            self._degrade("store", store.recovery.reason())
        self.store = store
        self._push("store", store.close)
        self.session = store.begin_session()
        log.info("store open path=%s session=%s", self.db_path, self.session)
        self.clock_watch.attach(store)  # records stamped while unsynced are corrected once the clock is synchronised
        self.clock_watch.start()
        self._push("clock-watch", self.clock_watch.stop)

        gate = self.injected.gate or build_gate(cfg, self.clock)
        gate.safe_state()
        self._push("gate", gate.close)

        self.notifier.status("loading models")
        self.notifier.extend_timeout(60)
        detector = self._start_detector()
        reader = self._build_reader()
        judge = build_code_judge(cfg, self.data_dir, clock_synced=self.clock.synced)
        self.code_judge = judge  # the online verifier is attached to the MQTT link in _start_sync
        self._push("code-verifiers", judge.close)

        self.notifier.status("opening thermal camera")
        thermal = self.injected.thermal or build_thermal(cfg)
        thermal.start()
        self._push("thermal", thermal.stop)

        camera = self.injected.camera or build_camera(cfg)
        camera.start()
        self._push("camera", camera.stop)

        verifiers: list[CodeVerifier] = [judge]
        pipeline = Pipeline(
            identity=StationIdentity(cfg.station.site, cfg.station.id, cfg.station.lane),
            lane=lane_for(cfg),
            thermal=thermal,
            camera=camera,
            detector=detector,
            reader=reader,
            verifiers=verifiers,
            store=store,
            gate=gate,
            clock=self.clock,
            settings=PipelineSettings(
                thermal_stale_s=cfg.screening.thermal_stale_s,
                command_ttl_s=cfg.gate.command_ttl_s,
                detect_max_rate_hz=cfg.detector.max_rate_hz,
                detect_skip_diff=cfg.detector.skip_unchanged_below,
            ),
            on_progress=self.watchdog.progress,
        )
        self.pipeline = pipeline
        if cfg.vehicle.mode == "vehicle":
            self._start_plates(store, pipeline)
        # Restored before the lane runs; stopped (final save) after the pipeline, before the store.
        self.counts_keeper = CountsKeeper(store, pipeline.lane.directions.counts)
        self.counts_keeper.restore()
        self.counts_keeper.start()
        self._push("counts", self.counts_keeper.stop)
        self._start_crops(store, pipeline)  # stopped after the pipeline: it writes what the executor queued
        pipeline.start()
        self._push("pipeline", pipeline.stop)
        if cfg.idcard.enabled:
            self._start_idcard(pipeline)

        if cfg.mqtt.url:
            self._start_sync(store, pipeline, judge)
        if cfg.http.enabled:
            self._start_http(store, pipeline)
        self._start_prompts(pipeline)

        status_thread = threading.Thread(target=self._status_loop, name="station-status", daemon=True)
        status_thread.start()

        def stop_status() -> None:
            self._status_stop.set()
            status_thread.join(5.0)
            clear_runtime_status(self.data_dir)

        self._push("status", stop_status)
        retention = self._start_retention(store)
        self._start_control(store, pipeline, retention)
        self._ready()

    def _start_idcard(self, pipeline: Pipeline) -> None:
        """Start the ID card reader as a decision source; a key file that cannot be used degrades it, never the lane."""
        from drivers.idcard.sam_reader import IdCardSource
        from station.codes.idcard import HASH_CENTRE, IdHasher, KeyFileError
        from station.codes.online import OnlineVerifier
        from station.codes.trace_key import DistrictKeys
        from station.lane.idcard_feed import IdCardFeed

        cfg, c = self.cfg, self.cfg.idcard
        try:
            hasher = IdHasher.from_config(c.key_file, self.data_dir)
        except KeyFileError as exc:
            self._degrade("idcard", f"{exc}; ID cards are not read")
            return
        if cfg.mqtt.url and hasher.kind == HASH_CENTRE:  # attached to the link in _start_sync
            self.idcard_lookup = OnlineVerifier(
                f"{cfg.mqtt.topic_prefix}/{cfg.station.site}/{cfg.station.id}",
                timeout_s=c.lookup_timeout_s,
                identity={"station_id": cfg.station.id, "site": cfg.station.site},
                kind="idcard",
                subject_field="id_hmac",
            )
        district = DistrictKeys(self.data_dir)  # the ID number's reference for tracing, when a district key is set
        reader = IdCardSource(
            c.port,
            hasher,
            hasher.kind,
            baud=c.baud,
            poll_s=c.poll_s,
            reply_timeout_s=c.reply_timeout_s,
            tracer=lambda number: district.ref("idcard", number),
        )
        self.idcard = IdCardFeed(reader, pipeline.offer_code, self.clock, self.idcard_lookup, lambda: pipeline.lane.state)
        self.idcard.start()
        self._push("idcard", self.idcard.stop)

    def _start_detector(self) -> FaceDetector:
        from station.lane.vision import detector_state

        detector = build_detector(self.cfg)
        self.warmup_ms = detector.warm_up()
        self.detector_state = detector_state(detector)
        if self.detector_state != "ok":
            self._degrade("detector", f"{self.detector_state.removeprefix('degraded: ')}; the lane stays closed")
        log.info("detector warm detector=%s warmup_ms=%.1f", detector.name, self.warmup_ms)
        return detector

    def _build_reader(self) -> CodeReader:
        """Return the configured code reader, or one that reads nothing when its library cannot be loaded."""
        try:
            return build_reader(self.cfg)
        except (ImportError, OSError) as exc:  # e.g. libzbar missing: screen by hand, do not crash-loop
            self._degrade("code_reader", f"{self.cfg.codes.reader} cannot be loaded: {exc}; every screening ends in retry (no_code)")
            return UnavailableCodeReader(self.cfg.codes.reader)

    def _start_plates(self, store: SqliteEventStore, pipeline: Pipeline) -> None:
        """Start the vehicle lane: the plate reader on its own thread, fed the newest camera frames."""
        from station.domain.vehicles import VehicleLane
        from station.lane.vehicle_loop import PlateLoop
        from station.lane.vision import build_plate_reader
        from station.store.residents import ResidentFile, resident_path

        v = self.cfg.vehicle
        reader, self.plate_state = build_plate_reader(
            models_dir_for(self.cfg),
            threads=self.cfg.detector.threads,
            max_side=v.plate_max_side,
            score_threshold=v.plate_score_threshold,
            low_memory=v.plate_low_memory,
            track_s=v.plate_track_s,
            second_opinion=v.plate_second_opinion,
        )
        if reader is None:
            # The person lane still works; vehicles are not read (the state says why).
            self._degrade("plate_reader", f"{self.plate_state.removeprefix('degraded: ')}; vehicles are not read")
            return
        log.info("plate reader warm warmup_ms=%.1f", reader.warm_up())
        lane = VehicleLane(ResidentFile(resident_path(self.data_dir)), min_reads=v.min_reads, min_confidence=v.min_plate_confidence)
        # The store is open before the pipeline: vehicle events are durable records.
        from station.lane.plate_gate import PlateGate

        gate = PlateGate(v.plate_gate_diff, v.plate_gate_max_skip_s, v.plate_gate_max_skip_empty_s)
        self.plates = PlateLoop(
            reader, lane, record=self._traced(store.record_vehicle), wall_clock=self.clock.wall, clock_synced=self.clock.synced, gate=gate
        )
        self.visits = self._visit_recorder(store, pipeline, lane)
        self.plates.add_frame_listener(self.visits.on_frame)
        pipeline.add_listener(self.visits.on_decided)
        pipeline.frame_taps.append(self.plates.offer)
        self._push("visits", self.visits.close)  # stopped after the plate thread: the visits still open are recorded
        self.plates.start()
        self._push("plates", self.plates.stop)

    def _traced(self, record: Callable[[Mapping[str, Any]], int]) -> Callable[[Mapping[str, Any]], int]:
        """Return ``record`` adding the plate's district-key reference (station.codes.trace_key) when a key is set."""
        from station.codes.trace_key import DistrictKeys

        keys = DistrictKeys(self.data_dir)
        return lambda rec: record(keys.annotate_plate(dict(rec)))

    def _visit_recorder(self, store: SqliteEventStore, pipeline: Pipeline, lane: VehicleLane) -> VisitRecorder:
        """Return the vehicle visits' recorder: plates and occupants' screenings as one record, outsiders' registrations looked up."""
        from station.domain.visits import VisitBook
        from station.lane.visits import VisitRecorder
        from station.store import visits

        window_s = self.cfg.vehicle.registration_valid_h * 3600.0

        def registered(plate: str) -> dict[str, Any] | None:
            return visits.registration_for(store, plate, self.clock.wall() - window_s)

        return VisitRecorder(
            lane,
            VisitBook(pipeline.lane.directions.geometry, min_sightings=self.cfg.vehicle.min_reads),
            record=self._traced(functools.partial(visits.record_visit, store)),
            registered=registered,
            fever_threshold_c=self.cfg.screening.fever_threshold_c,
            lane_direction=self.cfg.station.lane,
            wall=self.clock.wall,
            clock_synced=self.clock.synced,
        )

    def _registrar(self, store: SqliteEventStore) -> Registrar | None:
        """Return the outsider registration desk's back end: the store, and phone numbers hashed under the ID card key or salt.

        A centre key file that cannot be used degrades registration only (the page refuses it with
        503): phone numbers are never hashed under a weaker key than the one configured.
        """
        from station.codes.contact import PhoneHasher
        from station.codes.idcard import KeyFileError
        from station.web.registration import Registrar

        try:
            hasher = PhoneHasher.from_config(self.cfg.idcard.key_file, self.data_dir)
        except KeyFileError as exc:
            self._degrade("registration", f"{exc}; outsider vehicles cannot be registered")
            return None
        from station.codes.trace_key import DistrictKeys

        return Registrar(
            store,
            hasher,
            valid_h=self.cfg.vehicle.registration_valid_h,
            wall=self.clock.wall,
            clock_synced=self.clock.synced,
            annotate=DistrictKeys(self.data_dir).annotate_plate,
        )

    def _start_sync(self, store: SqliteEventStore, pipeline: Pipeline, judge: CodeJudge) -> None:
        """Start the broker link: the outbox pump, the live link (states, stats, commands) and snapshots."""
        from station.link.sync import OutboxPump, bounds_from_config, publisher_from_config

        cfg = self.cfg
        store.outbox_bounds = bounds_from_config(cfg)
        publisher: MqttPublisher = publisher_from_config(cfg, self.session or 0)
        self.publisher = publisher
        publisher.start()
        self._push("mqtt", publisher.stop)
        self.pump = OutboxPump(store, publisher, max_in_flight=cfg.mqtt.max_in_flight)
        self.pump.start()
        self._push("outbox-pump", self.pump.stop)
        self.link = self._build_link(store, pipeline, publisher, self.pump, judge)
        self.link.start()
        for verifier in _online_verifiers(judge):  # online code look-ups ride the station's own link
            verifier.attach(publisher)
        if self.idcard_lookup is not None:  # and so do ID card look-ups
            self.idcard_lookup.attach(publisher)
        self._push("mqtt-link", self.link.stop)
        if cfg.snapshots.enabled:  # the board's live picture (station.link.snapshots), only with a broker
            self._start_snapshots(pipeline, publisher)

    def _build_link(
        self, store: SqliteEventStore, pipeline: Pipeline, publisher: MqttPublisher, pump: OutboxPump, judge: CodeJudge
    ) -> StationLink:
        """Return the live link: retained states, periodic stats and signed commands (docs/mqtt.md)."""
        from station.codes.trace_key import DistrictKeys
        from station.link.command_auth import CommandKeys, CommandVerifier, ReplayGuard
        from station.link.commands import COMMAND_IDS_FILE, StationLink, StationStates
        from station.link.fleet_state import FleetState
        from station.link.handlers import CommandHandlers
        from station.link.sync import package_version

        cfg, centre = self.cfg, self.cfg.centre
        base = f"{cfg.mqtt.topic_prefix}/{cfg.station.site}/{cfg.station.id}"
        keys = CommandKeys(Path(centre.command_keys_file) if centre.command_keys_file else None, self.data_dir)
        verifier = CommandVerifier(
            keys,
            ReplayGuard(self.data_dir / COMMAND_IDS_FILE),
            site=cfg.station.site,
            station=cfg.station.id,
            max_window_s=centre.command_max_window_s,
        )

        def stats() -> dict[str, Any]:
            return {
                "pipeline": pipeline.stats(),
                "outbox": store.outbox_stats(),
                "pump": pump.stats(),
                "mqtt": publisher.stats(),
                "counts": store.counts(),
                "commands": link.stats(),
            }

        def snapshot() -> dict[str, Any]:
            return {
                "status": self.runtime_status(),
                "outbox": store.outbox_stats(),
                "pump": pump.stats(),
                "mqtt": publisher.stats(),
                "last_event": store.last_event(),
                "commands": link.stats(),
            }

        district = DistrictKeys(self.data_dir)
        handlers = CommandHandlers(
            store=store,
            gate=pipeline.gate,
            monotonic=self.clock.monotonic,
            config_path=self.config_path,
            data_dir=self.data_dir,
            snapshot=snapshot,
            command_ttl_s=cfg.gate.command_ttl_s,
            trust_list_signer=Path(cfg.codes.trust_list_signer_file) if cfg.codes.trust_list_signer_file else None,
            command_keys=keys,
            district_keys=district,
        )
        fleet = FleetState(
            cfg=cfg,
            data_dir=self.data_dir,
            models_dir=models_dir_for(cfg),
            clock_synced=self.clock.synced,
            district_key_id=lambda: district.status()["key_id"],
            version=package_version(),
        )
        states = StationStates(
            pipeline=pipeline,
            store=store,
            mqtt_state=lambda: publisher.state,
            detector_state=lambda: self.detector_state,
            stage_health=self.stage_health,
        )
        link = StationLink(
            publisher,
            base,
            {"station_id": cfg.station.id, "site": cfg.station.site},
            {**states.sources(), "fleet": fleet.state},
            stats,
            handlers,
            verifier=verifier,
            stats_interval_s=cfg.mqtt.stats_interval_s,
            max_command_bytes=centre.command_max_bytes,
            queue_size=centre.command_queue,
            refused_audit_per_min=centre.refused_audit_per_min,
        )
        for online in _online_verifiers(judge):  # code look-up answers are believed only when signed by the same centre keys
            online.trust_centre_keys(keys)
        if self.idcard_lookup is not None:
            self.idcard_lookup.trust_centre_keys(keys)
        if cfg.mqtt.ha_discovery:
            from station.link.ha import HaDiscovery, discovery_configs
            from station.link.sync import _VERSION

            ha = HaDiscovery(
                publisher, cfg.mqtt.ha_prefix, discovery_configs(cfg.mqtt.ha_prefix, base, cfg.station.site, cfg.station.id, _VERSION)
            )
            link.extra_on_connect.append(ha.announce)
            link.route(f"{cfg.mqtt.ha_prefix}/status", ha.on_ha_status)
        return link

    def _start_snapshots(self, pipeline: Pipeline, publisher: MqttPublisher) -> None:
        from station.lane.vision import build_face_detector
        from station.link.snapshots import SNAPSHOT_SCORE_THRESHOLD, LatestFrame, SnapshotPublisher, SnapshotSettings, snapshot_topic

        cfg, s = self.cfg, self.cfg.snapshots
        detector = None
        if s.blur_faces:
            # Its own instance with a lower threshold (station.link.snapshots); ultraface-320 is ~1 MB.
            detector = build_face_detector(
                cfg.detector.face,
                models_dir_for(cfg),
                score_threshold=min(SNAPSHOT_SCORE_THRESHOLD, cfg.detector.score_threshold),
                threads=1,
            )
            detector.warm_up()
        frames = LatestFrame()
        pipeline.frame_taps.append(frames.offer)
        topic = snapshot_topic(cfg.mqtt.topic_prefix, cfg.station.site, cfg.station.id)

        def publish(payload: bytes) -> bool:
            return bool(publisher.publish_direct(topic, payload, qos=0, retain=True))

        identity = {"station_id": cfg.station.id, "site": cfg.station.site}
        settings = SnapshotSettings(s.interval_s, s.max_width, s.quality, s.blur_faces, s.watch_interval_s, s.watch_max_lease_s)
        self.snapshots = SnapshotPublisher(frames, detector, publish, identity, settings)
        self.snapshots.start()
        self._push("snapshots", self.snapshots.stop)
        if self.link is not None:  # the centre's signed `watch` raises the rate while someone looks
            self.link.commands.snapshot_watch = self.snapshots.watch

    def _start_http(self, store: SqliteEventStore, pipeline: Pipeline) -> None:
        """Start the operator display; a port it cannot bind degrades the station, never stops it (the gate works without it)."""
        from station.web.operator import start_operator_display

        cfg = self.cfg
        try:
            self.http = start_operator_display(
                http=cfg.http,
                identity={"site": cfg.station.site, "id": cfg.station.id, "lane": cfg.station.lane},
                data_dir=self.data_dir,
                store=store,
                pipeline=pipeline,
                runtime_status=self.runtime_status,
                registration=np.array(cfg.thermal.registration, dtype=np.float64),
                fever_threshold_c=cfg.screening.fever_threshold_c,
                command_ttl_s=cfg.gate.command_ttl_s,
                clock=self.clock,
                registrar=self._registrar(store) if cfg.vehicle.mode == "vehicle" else None,
            )
        except OSError as exc:
            self._degrade("http", f"operator display cannot listen on {cfg.http.listen}:{cfg.http.port}: {exc}")
            return
        self._push("http", self.http.stop)

    def _start_crops(self, store: SqliteEventStore, pipeline: Pipeline) -> None:
        """Keep the face and thermal crops of the decisions ``[capture] keep`` names, written on a thread of their own."""
        from station.lane.capture import CropWriter, ThermalFrames
        from station.store.retention import CROPS_DIR

        keep = self.cfg.capture.keep if self.cfg.retention.face_crops_days > 0 else "none"
        if keep == "none":
            return
        frames = ThermalFrames()
        pipeline.thermal_taps.append(frames.offer)
        self.crops = CropWriter(store, self.data_dir / CROPS_DIR, keep, frames, lambda: pipeline.lane.calibration.registration)
        pipeline.add_listener(self.crops.on_decided)
        self.crops.start()
        self._push("crops", self.crops.stop)

    def _start_prompts(self, pipeline: Pipeline) -> None:
        """Start the next-step prompts (display) and the voice; no sound card degrades the speaker, the prompts are logged."""
        from station.domain.prompts import VolumeSchedule
        from station.lane.prompting import LanePrompter
        from station.lane.voice import LoggedSpeaker, VoiceQueue
        from station.ports import Speaker

        v = self.cfg.voice
        if v.enabled:
            from drivers.speaker.alsa import AlsaSpeaker, no_device_reason

            speaker: Speaker = AlsaSpeaker(v.device)
            missing = no_device_reason()
            if missing is not None:
                self._degrade("speaker", f"{missing}; voice prompts are logged")
                speaker = LoggedSpeaker()
            self.voice = VoiceQueue(speaker, v.language, VolumeSchedule.parse(v.volume, v.quiet_hours, v.quiet_volume))
            self.voice.start()
            self._push("voice", self.voice.stop)
        # With an ID card reader at the lane, a person without a code is told to use it.
        self.prompter = LanePrompter(
            pipeline.lane.progress, voice=self.voice, id_reader=self.cfg.idcard.enabled, monotonic=self.clock.monotonic
        )
        if self.http is not None:
            self.prompter.listeners.append(self.http.desk.on_prompt)
        pipeline.add_listener(self.prompter.on_decided)
        self.prompter.start()
        self._push("prompts", self.prompter.stop)

    def _start_retention(self, store: SqliteEventStore) -> RetentionThread:
        from station.store.retention import RetentionThread

        r = self.cfg.retention
        self.retention = RetentionThread(store, self.data_dir, r.events_days, r.face_crops_days, r.interval_s)
        self.retention.start()
        self._push("retention", self.retention.stop)
        return self.retention

    def _start_control(self, store: SqliteEventStore, pipeline: Pipeline, retention: RetentionThread) -> None:
        """Start the control socket for stationctl; without it the station screens on (docs/stationctl.md)."""
        from station.ops.control import ControlServer, socket_path, station_handlers

        cfg = self.cfg
        path = socket_path(self.data_dir)
        server = ControlServer(path)
        server.handlers.update(
            station_handlers(
                server,
                data_dir=self.data_dir,
                site=cfg.station.site,
                station=cfg.station.id,
                ready=lambda: self.ready_t is not None,
                runtime_status=self.runtime_status,
                pipeline=pipeline,
                store=store,
                retention=retention,
                devices={
                    "thermal": {"port": cfg.thermal.port},
                    "camera": {"device": cfg.camera.device},
                    "gate": {"pin_factory": cfg.gate.pin_factory},
                },
                pump=self.pump,
                mqtt_connected=self.publisher.connected if self.publisher is not None else None,
            )
        )
        try:
            server.start()
        except OSError as exc:
            self._degrade("control", f"socket {path} cannot be bound: {exc}; stationctl reads the status file instead")
            return
        self.control = server
        self._push("control", server.stop)

    def _ready(self) -> None:
        """Tell systemd the station is ready, naming every module it runs without and why."""
        cfg = self.cfg
        self.ready_t = self.clock.monotonic()
        degraded = self.degradations()
        for d in degraded:
            # Nested: "module" is a LogRecord attribute of its own (printed as degraded.module=…).
            log.error("station running degraded", extra={"degraded": d.as_dict()})
        text = f"screening site={cfg.station.site} station={cfg.station.id}" + "".join(
            f"; DEGRADED {d.module}: {d.reason}" for d in degraded
        )
        self.notifier.ready(status=text)
        log.info("station ready start_s=%.2f", self.ready_t - (self.started_t or self.ready_t))

    def degradations(self) -> list[Degradation]:
        """Return every module the station runs without now, and why: those found while starting, then the live ones."""
        out = list(self._degraded)
        if self.pipeline is not None:
            thermal = self.pipeline.thermal.stats()
            state = thermal.get("state")
            if state != "connected":
                port = thermal.get("port") or self.cfg.thermal.port
                failures = thermal.get("open_failures")
                tried = f" ({failures} open failures)" if failures else ""
                out.append(Degradation("thermal", f"{state} on {port}{tried}; every screening ends in manual_check"))
            camera = self.pipeline.camera.stats()
            # Opening is asynchronous: only a camera that failed to open (and is not running since) counts.
            if camera.get("state") != "running" and camera.get("open_failures"):
                out.append(
                    Degradation(
                        "camera",
                        f"{camera.get('state')} {self.cfg.camera.device} ({camera['open_failures']} open failures); nobody is screened",
                    )
                )
        storage = self.storage_status()
        if storage.get("state", "ok") != "ok":
            held = storage.get("held", 0)
            out.append(
                Degradation(
                    "store", f"storage {storage['state']}: {storage.get('error')}; {held} decision(s) held in memory, the gate acts on none"
                )
            )
        publisher = self.publisher
        if publisher is not None and not publisher.connected() and (publisher.state == "auth_failed" or publisher.last_error):
            out.append(Degradation("mqtt", f"broker {publisher.state}: {publisher.last_error}; records wait in the outbox"))
        return out

    def runtime_status(self) -> dict[str, Any]:
        """Return the live status the status file, the control socket and ``stationctl status`` show."""
        p = self.pipeline
        return {
            "site": self.cfg.station.site,
            "station": self.cfg.station.id,
            "session": self.session,
            "lane_state": p.lane.state.value if p else None,
            "detector": self.detector_state,
            "plate_reader": self.plate_state,
            "vehicles": self.plates.stats() if self.plates is not None else None,
            "visits": self.visits.stats() if self.visits is not None else None,
            "pipeline": p.stats() if p else {},
            "thermal": dict(p.thermal.stats()) if p else {},
            "camera": dict(p.camera.stats()) if p else {},
            "mqtt_connected": self.publisher.connected() if self.publisher else None,
            "mqtt_state": self.publisher.state if self.publisher else None,  # e.g. auth_failed
            "outbox_pump": self.pump.stats() if self.pump else None,
            "uptime_s": round(self.clock.monotonic() - (self.started_t or 0.0), 1),
            "clock": self.clock_watch.state(),
            "http": self.http.url if self.http is not None else None,
            "codes": [self.code_judge.stats()] if self.code_judge is not None else [],
            "idcard": self.idcard.stats() if self.idcard is not None else None,
            "crops": self.crops.stats() if self.crops is not None else None,
            # Per stage: state, in-process restarts, contained failures per kind (station.lane.pipeline).
            "stages": self.stage_health(),
            "voice": self.voice.stats() if self.voice is not None else None,
            "degraded": [d.as_dict() for d in self.degradations()],
            "storage": self.storage_status(),
        }

    def storage_status(self) -> dict[str, Any]:
        """Return whether the data directory takes writes (station.store.health) and how many decisions wait in memory."""
        if self.store is None:
            return {}
        held = self.pipeline.stats()["unrecorded_pending"] if self.pipeline is not None else 0
        return dict(self.store.storage.snapshot(), held=held)

    def stage_health(self) -> dict[str, Any]:
        """Return the pipeline's stage health, with the plate thread's as one more stage when it runs."""
        if self.pipeline is None:
            return {}
        from station.lane.pipeline import health_summary

        stages = self.pipeline.health()["stages"]
        if self.plates is not None:  # a given-up plate thread shows as failed; the person lane keeps the watchdog
            stages["plates"] = self.plates.health.snapshot()
        return health_summary(stages, alive=self.pipeline.alive())

    def _status_loop(self) -> None:
        while not self._status_stop.wait(STATUS_PERIOD_S if self.ready_t else 0.2):
            try:
                write_runtime_status(self.data_dir, self.runtime_status())
            except OSError as exc:
                log.warning("cannot write runtime status error=%s", exc)

    def add_listener(self, fn: Callable[[Decided], None]) -> None:
        """Call ``fn`` with every decision; after :meth:`start`."""
        assert self.pipeline is not None, "start() first"
        self.pipeline.add_listener(fn)

    def stop(self) -> None:
        """Stop in reverse start order. Safe to call twice."""
        if self._stack:
            self.notifier.stopping()
        while self._stack:
            name, fn = self._stack.pop()
            try:
                fn()
            except Exception:  # logged; the rest must still stop (gate to safe state, store closed)
                log.exception("stop failed component=%s", name)

    def run_forever(self, tick: Callable[[], None] | None = None) -> None:
        """Block until SIGTERM/SIGINT (or ``stop_requested``), pinging the watchdog meanwhile."""

        def on_signal(signum: int, _frame: Any) -> None:
            log.info("signal received signal=%s", signal.Signals(signum).name)
            self.stop_requested.set()

        def on_hangup(_signum: int, _frame: Any) -> None:
            # SIGHUP's default action would kill the gate; reload is not implemented yet.
            log.warning("SIGHUP ignored: live config reload is not supported yet; restart the service to apply changes")

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, on_signal)
            signal.signal(signal.SIGINT, on_signal)
            signal.signal(signal.SIGHUP, on_hangup)
        restarts_seen = 0
        while not self.stop_requested.wait(0.2):
            if self.pipeline is not None and self.pipeline.alive():
                self.watchdog.maybe_ping(time.monotonic())
            if self.pipeline is not None:
                restarts_seen = self._report_stage_health(restarts_seen)
            if tick is not None:
                tick()

    def _report_stage_health(self, restarts_seen: int) -> int:
        """Put a stage restart or a given-up stage on ``systemctl status``; returns the restarts reported."""
        assert self.pipeline is not None
        health = self.stage_health()
        if health["restarts"] == restarts_seen:
            return restarts_seen
        restarted = ", ".join(f"{n}×{h['restarts']}" for n, h in health["stages"].items() if h["restarts"])
        if health["given_up"]:
            text = (
                f"FAILED: pipeline stage {', '.join(health['given_up'])} given up after its restart limit; "
                f"watchdog withheld, systemd restarts the station (restarts: {restarted})"
            )
        else:
            text = (
                f"screening site={self.cfg.station.site} station={self.cfg.station.id}; "
                f"DEGRADED: pipeline stages restarted in-process: {restarted}"
            )
        self.notifier.status(text)
        return int(health["restarts"])
