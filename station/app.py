"""The composition root: the one place that turns configuration into running adapters.

``StationApp`` builds every adapter from ``StationConfig`` (an adapter handed in explicitly — the
demo's emulated camera, say — is used instead), starts them in dependency order, and stops them in
reverse. Nothing else in the station chooses a concrete class.

Start order: store (so every later failure can be recorded) → gate, forced to its safe state → face
detector, warmed up → code reader/verifiers → thermal source → camera → pipeline → outbox sync →
READY to systemd. Stop order is the reverse, ending with the gate in its safe state and the store
closed.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import platformdirs

from station.config import StationConfig
from station.domain.model import Decision
from station.domain.screening import ScreeningLane, ScreeningPolicy, ScreeningSettings
from station.domain.thermal import ThermalCalibration
from station.lane.pipeline import Decided, Pipeline, PipelineSettings, StationIdentity
from station.ops.clock import SystemClock
from station.ops.runtime import clear_runtime_status, write_runtime_status
from station.ops.systemd import Notifier, WatchdogGate
from station.ports import Clock, CodeReader, CodeVerifier, FaceDetector, FrameSource, GateOutput, ThermalSource
from station.store.events import DB_NAME

log = logging.getLogger("station.app")

STATUS_PERIOD_S = 2.0


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("checkpoint-station", appauthor=False))


def data_dir_for(cfg: StationConfig, override: Path | None = None) -> Path:
    if override is not None:
        return override
    return Path(cfg.station.data_dir) if cfg.station.data_dir else default_data_dir()


def models_dir_for(cfg: StationConfig) -> Path:
    from station.models import default_models_dir

    return Path(cfg.detector.models_dir) if cfg.detector.models_dir else default_models_dir()


# -- builders: one per port, each picks the adapter the config names -------------------------------


def build_detector(cfg: StationConfig) -> FaceDetector:
    # A missing or corrupt model gives a detector that finds nothing and says why (station.lane.vision):
    # the station runs degraded with the lane closed instead of crash-looping.
    from station.lane.vision import build_face_detector

    d = cfg.detector
    return build_face_detector(d.face, models_dir_for(cfg), score_threshold=d.score_threshold, threads=d.threads)  # type: ignore[no-any-return]


def build_reader(cfg: StationConfig) -> CodeReader:
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


def build_verifiers(cfg: StationConfig, data_dir: Path | None = None) -> list[CodeVerifier]:
    """The configured verifiers in order, wrapped in the guards (salted hash, replay) as one judge.

    With ``data_dir`` the salt, the replay memory and pushed trust lists live there; without it
    (CLI tools) the salt is per process and nothing is remembered."""
    from station.codes.colour import ScreenColourVerifier
    from station.codes.hc1 import Hc1Verifier
    from station.codes.judge import CodeJudge, SeenCodes, holder_ref_fn, station_salt
    from station.codes.local_claims import LocalClaimsVerifier
    from station.codes.online import OnlineVerifier
    from station.codes.trust_list import TrustStore

    c = cfg.codes
    salt = station_salt(data_dir)
    factories: dict[str, Callable[[], CodeVerifier]] = {
        "hc1": lambda: Hc1Verifier(
            TrustStore(data_dir, Path(c.trust_list_file) if c.trust_list_file else None),
            max_clock_skew_s=c.max_clock_skew_s,
            dynamic_grace_s=c.dynamic_grace_s,
            holder_ref=holder_ref_fn(salt),
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
    judge = CodeJudge(
        [factories[name]() for name in c.verifiers],
        salt=salt,
        seen=seen,
        replay_window_s=c.replay_window_s,
        replay_grace_s=c.replay_grace_s,
    )
    return [judge]


def build_thermal(cfg: StationConfig) -> ThermalSource:
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
    from drivers.camera.opencv_camera import OpenCVCamera

    c = cfg.camera
    device: str | int = int(c.device) if c.device.isdigit() else c.device
    return OpenCVCamera(device, width=c.width, height=c.height, fps=c.fps)


def build_gate(cfg: StationConfig, clock: Clock) -> GateOutput:
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
    )
    policy = ScreeningPolicy(
        temperature=cfg.policy.temperature,
        yellow_code=Decision(cfg.policy.yellow_code),
        uncoloured_code=Decision(cfg.policy.uncoloured_code),
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


class StationApp:
    """Builds, starts and stops the whole station."""

    def __init__(
        self,
        cfg: StationConfig,
        data_dir: Path | None = None,
        injected: Injected | None = None,
        notifier: Notifier | None = None,
        config_path: Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.config_path = config_path  # for remote commands that validate or edit the file
        self.data_dir = data_dir_for(cfg, data_dir)
        self.injected = injected or Injected()
        self.notifier = notifier or Notifier()
        self.clock: Clock = self.injected.clock or SystemClock()
        self.stop_requested = threading.Event()
        self._stack: list[tuple[str, Callable[[], None]]] = []
        self.pipeline: Pipeline | None = None
        self.store: Any = None
        self.pump: Any = None
        self.publisher: Any = None
        self.started_t: float | None = None
        self.ready_t: float | None = None
        self.warmup_ms: float | None = None
        self.session: int | None = None
        self.detector_state = "not started"
        self.plates: Any = None  # the vehicle lane's plate thread (vehicle.mode = "vehicle")
        self.plate_state = "off"
        self.retention: Any = None  # station.store.retention.RetentionThread, once started
        self.control: Any = None  # station.ops.control.ControlServer, once started
        self.http: Any = None  # station.web.operator.OperatorServer (http.enabled), once started

    @property
    def db_path(self) -> Path:
        return self.data_dir / DB_NAME

    def _push(self, name: str, stop: Callable[[], None]) -> None:
        self._stack.append((name, stop))

    def start(self) -> None:
        """Start everything in order; on any failure, stop what was started and re-raise."""
        self.started_t = self.clock.monotonic()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        from station.store.events import SqliteEventStore

        cfg = self.cfg
        for extra in self.injected.extra_start:
            extra.start()
            self._push(type(extra).__name__, extra.stop)

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = SqliteEventStore(self.db_path, station_id=cfg.station.id, site=cfg.station.site, topic_prefix=cfg.mqtt.topic_prefix)
        self._push("store", self.store.close)
        self.session = self.store.begin_session()
        log.info("store open path=%s session=%s", self.db_path, self.session)

        gate = self.injected.gate or build_gate(cfg, self.clock)
        gate.safe_state()
        self._push("gate", gate.close)

        self.notifier.status("loading models")
        self.notifier.extend_timeout(60)
        detector = build_detector(cfg)
        self.warmup_ms = detector.warm_up()
        from station.lane.vision import detector_state

        self.detector_state = detector_state(detector)
        log.info("detector warm detector=%s warmup_ms=%.1f", detector.name, self.warmup_ms)
        reader = build_reader(cfg)
        verifiers = build_verifiers(cfg, self.data_dir)
        self.code_verifiers = verifiers  # the online verifier is attached to the MQTT link in _start_sync
        self._push("code-verifiers", lambda: [getattr(v, "close", lambda: None)() for v in verifiers])

        self.notifier.status("opening thermal camera")
        thermal = self.injected.thermal or build_thermal(cfg)
        thermal.start()
        self._push("thermal", thermal.stop)

        camera = self.injected.camera or build_camera(cfg)
        camera.start()
        self._push("camera", camera.stop)

        watchdog = WatchdogGate(self.notifier)
        self.watchdog = watchdog
        self.pipeline = Pipeline(
            identity=StationIdentity(cfg.station.site, cfg.station.id, cfg.station.lane),
            lane=lane_for(cfg),
            thermal=thermal,
            camera=camera,
            detector=detector,
            reader=reader,
            verifiers=verifiers,
            store=self.store,
            gate=gate,
            clock=self.clock,
            settings=PipelineSettings(
                thermal_stale_s=cfg.screening.thermal_stale_s,
                command_ttl_s=cfg.gate.command_ttl_s,
                detect_max_rate_hz=cfg.detector.max_rate_hz,
                detect_skip_diff=cfg.detector.skip_unchanged_below,
            ),
            on_progress=watchdog.progress,
        )
        if cfg.vehicle.mode == "vehicle":
            self._start_plates()
        from station.lane.counts import CountsKeeper

        # Restored before the lane runs; stopped (final save) after the pipeline, before the store.
        self.counts_keeper = CountsKeeper(self.store, self.pipeline.lane.directions.counts)
        self.counts_keeper.restore()
        self.counts_keeper.start()
        self._push("counts", self.counts_keeper.stop)
        self.pipeline.start()
        self._push("pipeline", self.pipeline.stop)

        if cfg.mqtt.url:
            self._start_sync()
        if cfg.http.enabled:
            # The operator display; a port it cannot bind is logged, never fatal (the gate works without it).
            from station.web.operator import start_operator_display

            self.http = start_operator_display(self)
            if self.http is not None:
                self._push("http", self.http.stop)

        self._status_stop = threading.Event()
        status_thread = threading.Thread(target=self._status_loop, name="station-status", daemon=True)
        status_thread.start()

        def stop_status() -> None:
            self._status_stop.set()
            status_thread.join(5.0)
            clear_runtime_status(self.data_dir)

        self._push("status", stop_status)

        # Retention purge thread and the local control socket for stationctl (docs/stationctl.md).
        from station.ops.control import start_control
        from station.store.retention import start_retention

        self.retention = start_retention(self)
        self._push("retention", self.retention.stop)
        self.control = start_control(self)
        if self.control is not None:
            self._push("control", self.control.stop)

        self.ready_t = self.clock.monotonic()
        link = thermal.stats().get("state")
        degraded = "" if link == "connected" else f"; DEGRADED: thermal module {link}, every screening ends in manual_check"
        if self.detector_state != "ok":
            degraded += f"; DEGRADED: face detector {self.detector_state}; the lane stays closed"
            log.error("station running without a face detector state=%s", self.detector_state)
        if self.plate_state not in ("ok", "off"):
            degraded += f"; DEGRADED: plate reader {self.plate_state}"
        if degraded:
            log.error("station running without its thermal module state=%s", link)
        self.notifier.ready(status=f"screening site={cfg.station.site} station={cfg.station.id}{degraded}")
        log.info("station ready start_s=%.2f", self.ready_t - (self.started_t or self.ready_t))

    def _start_plates(self) -> None:
        """Vehicle lane: the plate reader on its own thread, fed the newest camera frames."""
        from station.domain.vehicles import VehicleLane
        from station.lane.vehicle_loop import PlateLoop
        from station.lane.vision import build_plate_reader
        from station.store.residents import ResidentFile, resident_path

        v = self.cfg.vehicle
        reader, self.plate_state = build_plate_reader(
            models_dir_for(self.cfg), threads=self.cfg.detector.threads, max_side=v.plate_max_side, score_threshold=v.plate_score_threshold
        )
        if reader is None:
            # The person lane still works; vehicles are not read (the state says why).
            log.error("vehicle lane without plate reader state=%s", self.plate_state)
            return
        log.info("plate reader warm warmup_ms=%.1f", reader.warm_up())
        lane = VehicleLane(ResidentFile(resident_path(self.data_dir)), min_reads=v.min_reads, min_confidence=v.min_plate_confidence)
        assert self.store is not None  # started before the pipeline: vehicle events are durable records
        self.plates = PlateLoop(reader, lane, record=self.store.record_vehicle, clock_synced=self.clock.synced)
        assert self.pipeline is not None
        self.pipeline.frame_taps.append(self.plates.offer)
        self.plates.start()
        self._push("plates", self.plates.stop)

    def _start_sync(self) -> None:
        from station.link.sync import OutboxPump, bounds_from_config, publisher_from_config

        cfg = self.cfg
        self.store.outbox_bounds = bounds_from_config(cfg)
        self.publisher = publisher_from_config(cfg, self.session or 0)
        self.publisher.start()
        self._push("mqtt", self.publisher.stop)
        self.pump = OutboxPump(self.store, self.publisher, max_in_flight=cfg.mqtt.max_in_flight)
        self.pump.start()
        self._push("outbox-pump", self.pump.stop)
        from station.link.commands import link_for_app  # states, stats, commands (docs/mqtt.md)

        self.link = link_for_app(self)
        self.link.start()
        for judge in getattr(self, "code_verifiers", []):
            for verifier in getattr(judge, "verifiers", []):
                if hasattr(verifier, "attach"):  # online code look-ups ride the station's own link
                    verifier.attach(self.publisher)
        self._push("mqtt-link", self.link.stop)
        if cfg.snapshots.enabled:  # the board's live picture (station.link.snapshots), only with a broker
            from station.link.snapshots import snapshots_for_app

            self.snapshots = snapshots_for_app(self)
            self.snapshots.start()
            self._push("snapshots", self.snapshots.stop)

    def runtime_status(self) -> dict[str, Any]:
        p = self.pipeline
        return {
            "site": self.cfg.station.site,
            "station": self.cfg.station.id,
            "session": self.session,
            "lane_state": p.lane.state.value if p else None,
            "detector": self.detector_state,
            "plate_reader": self.plate_state,
            "vehicles": self.plates.stats() if self.plates is not None else None,
            "pipeline": p.stats() if p else {},
            "thermal": dict(p.thermal.stats()) if p else {},
            "camera": dict(p.camera.stats()) if p else {},
            "mqtt_connected": self.publisher.connected() if self.publisher else None,
            "mqtt_state": self.publisher.state if self.publisher else None,  # e.g. auth_failed
            "outbox_pump": self.pump.stats() if self.pump else None,
            "uptime_s": round(self.clock.monotonic() - (self.started_t or 0.0), 1),
            "http": self.http.url if self.http is not None else None,
            "codes": [j.stats() for j in getattr(self, "code_verifiers", []) if hasattr(j, "stats")],
            # Per stage: state, in-process restarts, contained failures per kind (station.lane.pipeline).
            "stages": self.stage_health(),
        }

    def stage_health(self) -> dict[str, Any]:
        """The pipeline's stage health, with the plate thread's as one more stage when it runs."""
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
