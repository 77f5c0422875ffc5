"""The station's one configuration schema, and how files and the environment feed it.

Layers, later wins: the schema's defaults (embedded here, documented with comments in
``config/station.toml``) ← the config file ← override files (e.g. a machine-written
``calibration.toml``) ← environment variables ``CHECKPOINT_<SECTION>__<KEY>=value``.

Every model forbids unknown keys, so a typo is an error rather than a silently ignored setting.
Errors name the key, where it was set (file and line, or the environment variable), the bad value
and what is allowed — that is what a technician at a gate needs to fix it.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from station.ops.mqtt_url import parse_mqtt_url
from station.ops.redact import has_userinfo, redact_url

ENV_PREFIX = "CHECKPOINT_"

# Visible 640×480 camera with 60° horizontal FOV, co-located with a 55°×35° 32×24 thermal module:
# the default registration (visible pixel → thermal pixel). Replace it with a calibrated homography
# (`stationctl calibrate thermal`) on site; parallax makes it exact only at the calibrated distance.
DEFAULT_REGISTRATION: list[list[float]] = [
    [0.055454, 0.0, -1.745273],
    [0.0, 0.068667, -4.480090],
    [0.0, 0.0, 1.0],
]


class Section(BaseModel):
    """Base of every section: unknown keys are errors, and assignments are validated too."""

    # Numbers coerce to strings so CHECKPOINT_STATION__ID=42 works for a string field.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, coerce_numbers_to_str=True)


class StationSection(Section):
    """Who this station is (site, id, lane) and where it keeps its data."""

    site: str = Field("demo-site", pattern=r"^[A-Za-z0-9_-]{1,64}$", description="Site id used in MQTT topics")
    id: str = Field("lane-1", pattern=r"^[A-Za-z0-9_-]{1,64}$", description="Station id, unique within the site")
    lane: Literal["entry", "exit", "both"] = Field("entry", description="Which way this lane screens")
    data_dir: str = Field("", description="Where the event database lives; empty = the per-user data directory")


class ScreeningSection(Section):
    """Thresholds and stage timeouts of the screening machine (``station.domain.screening``)."""

    fever_threshold_c: float = Field(37.3, ge=35.0, le=40.0, description="Core temperature at or above which a person has a fever")
    valid_min_c: float = Field(
        34.0, ge=25.0, le=37.0, description="Lowest plausible core reading; lower is shown as invalid, never massaged"
    )
    valid_max_c: float = Field(42.0, ge=38.0, le=45.0, description="Highest plausible core reading")
    min_face_px: int = Field(120, ge=20, le=2000, description="Face height in visible pixels at which a person is in the screening zone")
    stable_samples: int = Field(2, ge=1, le=10, description="Consecutive thermal readings that must agree before one is used")
    max_sample_spread_c: float = Field(0.7, gt=0.0, le=3.0, description="How far those readings may spread")
    temperature_timeout_s: float = Field(3.0, gt=0.0, le=30.0, description="From face lock to a valid temperature, else retry")
    code_timeout_s: float = Field(5.0, gt=0.0, le=60.0, description="From face lock to a judged health code, else retry")
    leave_after_s: float = Field(0.8, gt=0.0, le=10.0, description="No face for this long means the person has left")
    face_stable_s: float = Field(0.3, ge=0.0, le=5.0, description="The face must hold its size this long before thermal readings count")
    face_size_tolerance: float = Field(
        0.08, gt=0.0, le=1.0, description="How much the face size may change and still count as standing still"
    )
    thermal_stale_s: float = Field(2.0, gt=0.0, le=30.0, description="No thermal frame for this long is a sensor fault")
    temperature_on: Literal["entry", "both"] = Field(
        "both",
        description=(
            "Who is temperature-screened: both directions, or (one-way mode) entries only; "
            "a person tracked as exiting is then decided on the code alone"
        ),
    )
    code_required: bool = Field(
        True,
        description=(
            "false: a temperature-only lane (no health-code check): a normal temperature passes with reason "
            "temperature_only; a code shown anyway is still judged"
        ),
    )
    zone_x_min: float = Field(0.1, ge=0.0, lt=1.0, description="Left edge of the lane zone (face centre), as a fraction of the frame width")
    zone_x_max: float = Field(0.9, gt=0.0, le=1.0, description="Right edge of the lane zone, as a fraction of the frame width")
    side_by_side_ratio: float = Field(
        0.8, gt=0.0, le=1.0, description="Another undecided face at least this tall (relative) at the decision point: retry, one_at_a_time"
    )

    @model_validator(mode="after")
    def _range_ordered(self) -> ScreeningSection:
        if not self.valid_min_c < self.fever_threshold_c < self.valid_max_c:
            raise ValueError(
                f"need valid_min_c < fever_threshold_c < valid_max_c, got "
                f"{self.valid_min_c} / {self.fever_threshold_c} / {self.valid_max_c}"
            )
        if not self.zone_x_min < self.zone_x_max:
            raise ValueError(f"need zone_x_min < zone_x_max, got {self.zone_x_min} / {self.zone_x_max}")
        return self


class PolicySection(Section):
    """Safety behaviour as named policies, each logged with every decision. There is no "open anyway"."""

    temperature: Literal["hard", "soft"] = Field(
        "hard", description="hard: fever → deny_fever, gate stays closed; soft: fever → manual_check, staff decide"
    )
    yellow_code: Literal["deny_code", "manual_check"] = Field("manual_check", description="What a valid yellow code leads to")
    uncoloured_code: Literal["manual_check", "deny_code"] = Field(
        "manual_check",
        description="What a genuine, in-date code without our colour claim leads to (e.g. an EU Digital COVID "
        "Certificate): manual_check = staff look at it; deny_code = refused. It never passes",
    )
    idcard_unknown: Literal["manual_check", "deny_code"] = Field(
        "manual_check",
        description="What an ID card read the centre did not vouch for leads to (unknown person, expired card, no centre key, "
        "no answer): manual_check = staff look at the card; deny_code = refused. It never passes",
    )
    unsynced_clock_validity: Literal["manual_check", "trust_wall_clock"] = Field(
        "manual_check",
        description="A code whose validity depends on the clock (HC1, local claims, an online answer's expiry, an ID card's "
        "end date) judged while the wall clock is not synchronised: manual_check = staff check it, whatever its dates say; "
        "trust_wall_clock = judge its dates against the wall clock as it is",
    )


class ThermalSection(Section):
    """The thermal module, its link, and the calibration that turns its pixels into a core temperature."""

    driver: Literal["gy-mcu90640", "htpa32x32"] = Field(
        "gy-mcu90640", description="htpa32x32: Heimann 32×32 module, 115200 baud, query-driven (set its own registration)"
    )
    port: str = Field("/dev/ttyUSB0", description="Serial device; prefer a /dev/serial/by-id/… path")
    baud: Literal[0, 9600, 115200, 460800] = Field(0, description="0 = probe 115200, 460800, 9600 in turn")
    # typing allows no float in a Literal; pydantic checks the choices at run time all the same
    refresh_hz: Literal[0.5, 1, 2, 4, 8] = Field(4, description="Module refresh; 8 Hz needs 460800 baud")  # type: ignore[valid-type]
    emissivity: float = Field(0.98, ge=0.1, le=1.0, description="Human skin is 0.98")
    offset_c: float = Field(1.35, ge=-5.0, le=5.0, description="Skin→core offset; calibrate on site")
    min_pixels: int = Field(8, ge=1, le=768, description="Fewer thermal pixels on the face means too far")
    roi_margin: float = Field(0.1, ge=0.0, le=0.4, description="Shrink the mapped face box by this fraction (parallax)")
    registration: list[list[float]] = Field(
        default_factory=lambda: [row[:] for row in DEFAULT_REGISTRATION],
        description="3×3 homography from visible to thermal pixel coordinates",
    )
    registration_rmse_px: float = Field(0.0, ge=0.0, description="Reprojection RMSE of the fitted registration (0 = not fitted)")
    calibration_version: str = Field("default", description="Written by `stationctl calibrate thermal`; recorded with every event")
    ambient_source: Literal["die", "room"] = Field("die", description="die: room = sensor die − ta_shift_c | room: room_c (a room sensor)")
    ta_shift_c: float = Field(8.0, ge=0.0, le=20.0, description="The MLX90640 die runs this much above the room")
    room_c: float = Field(22.0, ge=-20.0, le=50.0, description="Room temperature when ambient_source = room")
    ambient_ref_c: float = Field(22.0, ge=-20.0, le=50.0, description="Room temperature at calibration")
    ambient_gain: float = Field(0.0, ge=-2.0, le=2.0, description="Ambient term: gain × (ambient_ref_c − ambient)")
    face_ref_px: float = Field(
        222.0, ge=0.0, le=4000.0, description="Visible face-box height at the calibrated distance; 0 = no distance term or limits"
    )
    distance_gain: float = Field(0.0, ge=-1.0, le=1.0, description="Distance term: gain × (skin − ambient) × (face_ref_px / face_px − 1)")
    too_close_ratio: float = Field(0.6, gt=0.0, le=1.0, description="face_ref_px / face_px below this: too close")
    too_far_ratio: float = Field(1.6, ge=1.0, le=10.0, description="face_ref_px / face_px above this: too far")
    reference_box: list[int] = Field(default_factory=list, description="Blackbody patch in thermal pixels [x1, y1, x2, y2]; [] = none")
    reference_c: float = Field(0.0, ge=0.0, le=100.0, description="Blackbody set-point")
    several_people_ratio: float = Field(
        0.8, gt=0.0, le=1.0, description="A second face this tall relative to the measured one: several people"
    )
    warmup_s: float = Field(0.0, ge=0.0, le=7200.0, description="Readings are 'warming_up' for this long after the module's first frame")
    warmup_max_die_rate: float = Field(
        0.0, ge=0.0, le=10.0, description="... and while the die temperature rises faster than this (°C/min); 0 = off"
    )

    @field_validator("registration")
    @classmethod
    def _three_by_three(cls, v: list[list[float]]) -> list[list[float]]:
        if len(v) != 3 or any(len(row) != 3 for row in v):
            raise ValueError("must be a 3×3 matrix (three rows of three numbers)")
        return v

    @field_validator("reference_box")
    @classmethod
    def _box(cls, v: list[int]) -> list[int]:
        if v and (len(v) != 4 or v[0] >= v[2] or v[1] >= v[3] or min(v) < 0):
            raise ValueError("must be [] or [x1, y1, x2, y2] thermal pixels with x1 < x2 and y1 < y2")
        return v

    @model_validator(mode="after")
    def _rate_fits_link(self) -> ThermalSection:
        # A 1544-byte frame takes 134 ms at 115200 and 1.6 s at 9600: some rates cannot be carried.
        limits = {9600: 0.5, 115200: 4, 460800: 8}
        if self.baud and self.refresh_hz > limits[self.baud]:
            raise ValueError(f"refresh_hz {self.refresh_hz} needs more than {self.baud} baud carries (max {limits[self.baud]} Hz)")
        return self


class CameraSection(Section):
    """The visible camera."""

    driver: Literal["opencv"] = "opencv"
    device: str = Field("/dev/video0", description="V4L2 device path, /dev/v4l/by-id/… path, or a video file")
    width: int = Field(640, ge=160, le=3840)
    height: int = Field(480, ge=120, le=2160)
    fps: float = Field(15.0, gt=0.0, le=60.0)


class DetectorSection(Section):
    """The face detector, its models and its per-frame budget."""

    face: Literal["ultraface-rfb-320", "ultraface-rfb-640", "haar"] = "ultraface-rfb-320"
    score_threshold: float = Field(0.7, gt=0.0, lt=1.0)
    threads: int = Field(1, ge=1, le=8, description="onnxruntime intra-op threads per model")
    models_dir: str = Field("", description="Empty = the models shipped inside the station package (station/models_data/)")
    max_rate_hz: float = Field(0.0, ge=0.0, le=60.0, description="Run face detection at most this often; 0 = every frame")
    skip_unchanged_below: float = Field(
        0.0, ge=0.0, le=50.0, description="Re-use the last detection while the frame differs by less than this (mean grey levels); 0 = off"
    )


class VehicleSection(Section):
    """Vehicle-lane mode: the checkpoint screens a vehicle (its plate) and its occupants."""

    mode: Literal["off", "vehicle"] = Field("off", description="off: person lane | vehicle: read plates too")
    plate_max_side: int = Field(640, ge=160, le=4096, description="Frames are downscaled to this longest side for plate detection")
    plate_score_threshold: float = Field(0.7, gt=0.0, lt=1.0, description="Plate detector score threshold")
    min_plate_confidence: float = Field(0.3, ge=0.0, le=1.0, description="A read below this confidence does not count")
    min_reads: int = Field(2, ge=1, le=50, description="Agreeing reads of one vehicle's plate before its event is raised")
    plate_gate_diff: float = Field(
        4.0, ge=0.0, le=255.0, description="Read plates only when a part of the picture changed by this many grey levels (0 = every frame)"
    )
    plate_gate_max_skip_s: float = Field(
        0.5, gt=0.0, le=1.5, description="Read anyway after this long while a plate is in view (below the lane's 2 s plate memory)"
    )
    plate_gate_max_skip_empty_s: float = Field(2.0, gt=0.0, le=30.0, description="Read anyway after this long while no plate is in view")
    plate_track_s: float = Field(
        1.0,
        ge=0.0,
        le=10.0,
        description="Between whole-frame searches, look for plates only around where they were last read (0 = search every frame whole)",
    )
    plate_second_opinion: bool = Field(
        True,
        description="Read single-row plates with a second recogniser too (HyperLPR) and join the two character by character"
        " (drivers/detect/plate_second.py): fixes the main one's province bias, costs a few ms and ~6 MB",
    )
    plate_low_memory: bool = Field(
        True,
        description="Vehicle lane low-memory mode: plate models without onnxruntime's arena, freed memory handed back after"
        " each read, malloc blocks of 1 MiB or more on their own mappings (station.ops.malloc)",
    )
    registration_valid_h: float = Field(
        24.0,
        gt=0.0,
        le=720.0,
        description="An outsider registered on the operator page is recognised on visits within this many hours (at most 30 days)",
    )


class DirectionSection(Section):
    """Lane geometry for telling entry from exit along a track."""

    by: Literal["size", "x", "y"] = Field("size", description="size: approaching the camera (growing face) | x / y: image axis of travel")
    entry: Literal["increasing", "decreasing"] = Field("increasing", description="Which change along `by` is an entry")
    min_travel: float = Field(
        0.25, gt=0.0, le=5.0, description="Relative size change (size) or fraction of the frame (x, y) that counts as a passage"
    )


VerifierName = Literal["hc1", "online", "screen-colour", "local-claims"]
_DEFAULT_VERIFIERS: tuple[VerifierName, ...] = ("hc1", "online")


class CodesSection(Section):
    """Reading health codes, the verifiers that judge them, and the replay guard."""

    reader: Literal["cascade", "zxing", "pyzbar", "opencv"] = Field(
        "cascade", description="cascade: zxing-cpp, then an upscaled pass where it failed (best in bench/qr.py) | zxing | pyzbar | opencv"
    )
    track: bool = Field(True, description="Skip decoding while the last code's region is unchanged (decode again when it changes)")
    track_max_reuse: int = Field(15, ge=0, le=1000, description="Decode anyway after this many frames answered from the tracked code")
    verifiers: list[VerifierName] = Field(
        default_factory=lambda: list(_DEFAULT_VERIFIERS),
        min_length=1,
        description="Tried in order; the first that knows the code's format judges it",
    )
    max_clock_skew_s: float = Field(300.0, ge=0.0, le=86400.0)
    trust_list_file: str = Field("", description="HC1 signer certificates (JSON); a list pushed over MQTT replaces it")
    trust_list_signer_file: str = Field("", description="PEM public key/cert that signs pushed trust lists; empty = pushes refused")
    dynamic_grace_s: float = Field(
        30.0, ge=0.0, le=3600.0, description="A dynamic code older than its refresh period plus this is a screenshot"
    )
    replay_window_s: float = Field(86400.0, ge=0.0, le=30 * 86400.0, description="A valid code used again within this is a replay; 0 = off")
    replay_grace_s: float = Field(
        20.0, ge=0.0, le=600.0, description="Re-reads of the same code within this of its first use are not replays"
    )
    online_timeout_s: float = Field(1.5, gt=0.0, le=10.0, description="Online code look-up timeout; then manual_check")
    decode_max_side: int = Field(640, ge=160, le=4096, description="Frames are downscaled to this before decoding")


class IdCardSection(Section):
    """The resident ID card reader (SAM serial protocol): for people without a smartphone."""

    enabled: bool = Field(False, description="Read ID cards at this lane (a card read decides like a health code)")
    port: str = Field("/dev/ttyUSB1", description="Serial port of the card reader (its /dev/serial/by-id name survives replugs)")
    baud: int = Field(115200, description="Serial speed of the reader's SAM module")
    key_file: str = Field(
        "", description="The centre's ID card key (hex); empty = hashes keyed by the station's own salt, no look-up possible"
    )
    poll_s: float = Field(0.3, gt=0.0, le=5.0, description="How often the reader looks for a card")
    reply_timeout_s: float = Field(1.0, gt=0.0, le=10.0, description="How long one SAM command may take to answer")
    lookup_timeout_s: float = Field(1.5, gt=0.0, le=10.0, description="Centre look-up timeout; then policy.idcard_unknown")


class GateSection(Section):
    """The gate's outputs (GPIO pins) and their timings."""

    pin_factory: Literal["default", "mock"] = Field("default", description="mock: no GPIO on this machine")
    relay_pin: int = Field(17, ge=0, le=53)
    buzzer_pin: int = Field(27, ge=0, le=53)
    green_pin: int = Field(22, ge=0, le=53)
    red_pin: int = Field(23, ge=0, le=53)
    amber_pin: int = Field(24, ge=0, le=53)
    open_s: float = Field(1.5, gt=0.0, le=10.0, description="Barrier release time for pass")
    alarm_s: float = Field(3.0, gt=0.0, le=60.0, description="How long the fever alarm sounds")
    command_ttl_s: float = Field(0.5, gt=0.0, le=5.0, description="A gate command older than this is refused")

    @model_validator(mode="after")
    def _distinct_pins(self) -> GateSection:
        pins = [self.relay_pin, self.buzzer_pin, self.green_pin, self.red_pin, self.amber_pin]
        if len(set(pins)) != len(pins):
            raise ValueError(f"gate pins must be distinct, got {pins}")
        return self


class MqttSection(Section):
    """The link to the command centre's broker, and the outbox bounds."""

    url: str = Field("", description="mqtt://host[:port] or mqtts://host[:port]; empty = no broker: events wait in the outbox")
    topic_prefix: str = Field("checkpoint/v1", pattern=r"^[A-Za-z0-9_/-]+$")
    protocol: Literal["auto", "5", "3.1.1"] = Field(
        "auto", description="auto = MQTT 5, falling back to 3.1.1 when the broker lacks 5; or force 5 / 3.1.1"
    )
    username: str = Field("", description="Empty = no username")
    password_file: str = Field("", description="File whose first line is the password (never logged); empty = password_env")
    password_env: str = Field(
        "CHECKPOINT_MQTT_PASSWORD",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable holding the password when password_file is empty",
    )
    tls_ca_file: str = Field("", description="CA bundle that signs the broker's certificate (mqtts://); empty = system store")
    tls_cert_file: str = Field("", description="Client certificate (PEM) for mutual TLS; empty = none")
    tls_key_file: str = Field("", description="Client private key (PEM) for tls_cert_file")
    keepalive_s: int = Field(30, ge=5, le=3600)
    reconnect_min_s: float = Field(1.0, gt=0.0, le=60.0, description="First reconnect delay; doubles per failure, with random jitter")
    reconnect_max_s: float = Field(60.0, gt=0.0, le=3600.0, description="Longest reconnect delay")
    max_in_flight: int = Field(10, ge=1, le=100, description="Outbox rows published and not yet acknowledged")
    stats_interval_s: float = Field(60.0, ge=0.0, le=3600.0, description="Period of the stats topic (QoS 0); 0 = off")
    outbox_max_rows: int = Field(
        200000, ge=100, description="Above this, the oldest ordinary rows are dropped (counted, alarm raised); alarms are never dropped"
    )
    outbox_max_bytes: int = Field(200_000_000, ge=100_000, description="Same bound in payload bytes")
    outbox_max_age_days: float = Field(
        30.0, gt=0.0, le=3650.0, description="Ordinary rows older than this are dropped (counted, alarm raised)"
    )
    ha_discovery: bool = Field(False, description="Announce the station to Home Assistant (MQTT discovery)")
    ha_prefix: str = Field("homeassistant", pattern=r"^[A-Za-z0-9_/-]+$", description="Home Assistant discovery prefix")

    @field_validator("url", mode="before")
    @classmethod
    def _no_credentials_in_url(cls, v: Any) -> Any:
        # Checked before the URL is parsed so that the technician gets this message.
        if isinstance(v, str) and has_userinfo(v):
            raise ValueError(
                "credentials do not belong in the URL (it is shown in logs and status): "
                "put the user in mqtt.username and the password in mqtt.password_file "
                "(or the variable named by mqtt.password_env)"
            )
        return v

    @field_validator("url")
    @classmethod
    def _broker_url(cls, v: str) -> str:
        if v:
            parse_mqtt_url(v)  # the clients' own parser: what loads here, they can connect to
        return v

    @model_validator(mode="after")
    def _tls_pairs(self) -> MqttSection:
        if self.tls_key_file and not self.tls_cert_file:
            raise ValueError("tls_key_file needs tls_cert_file")
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError(f"reconnect_min_s {self.reconnect_min_s} > reconnect_max_s {self.reconnect_max_s}")
        return self


class CentreSection(Section):
    """Trust in the command centre: the keys that sign remote commands and code look-up answers (station/link/command_auth.py)."""

    command_keys_file: str = Field(
        "",
        description=(
            "PEM public key(s) (Ed25519 or ECDSA P-256) of the command centre; a signed command-keys rotation "
            "replaces them; empty = every command that changes the gate or the station is refused (no_keys_configured)"
        ),
    )
    command_max_window_s: float = Field(
        60.0, ge=5.0, le=300.0, description="A signed command whose deadline is further ahead than this is refused (deadline_too_far)"
    )
    command_max_bytes: int = Field(
        262144, ge=4096, le=16_777_216, description="cmd/ message bodies larger than this are dropped unread (counted)"
    )
    command_queue: int = Field(32, ge=4, le=1024, description="Commands waiting for the command thread; more are dropped (counted)")
    refused_audit_per_min: int = Field(
        10, ge=1, le=600, description="Audit rows written per minute for refused commands; the rest are counted and logged only"
    )


class RetentionSection(Section):
    """How long personal data stays on the box; the daemon purges hourly (station/store/retention.py)."""

    events_days: int = Field(
        90,
        ge=1,
        le=3650,
        description="Screening and vehicle events older than this are deleted (never while their MQTT message is undelivered)",
    )
    face_crops_days: int = Field(7, ge=0, le=3650, description="Face crops (<data_dir>/crops) older than this are deleted; 0 = keep none")
    interval_s: float = Field(3600.0, ge=60.0, le=86400.0, description="How often the daemon runs the purge")


class CaptureSection(Section):
    """Which decisions keep the person's face crop and thermal crop on the box (station/lane/capture.py).

    Kept under ``<data_dir>/crops`` for ``retention.face_crops_days``, shown on the operator page's
    alarm card, erased with the event, never published over MQTT.
    """

    keep: Literal["alarms", "all", "none"] = Field(
        "alarms",
        description="alarms: fevers and denials | all: every decision | none: never (retention.face_crops_days = 0 also keeps none)",
    )


class SnapshotsSection(Section):
    """Small JPEG of the latest camera frame for the command-centre board (MQTT `snapshot`, retained, QoS 0)."""

    enabled: bool = Field(True, description="Publish snapshots while MQTT is configured")
    interval_s: float = Field(5.0, ge=1.0, le=3600.0, description="Seconds between snapshots")
    max_width: int = Field(320, ge=80, le=1920, description="Snapshots are downscaled to at most this width")
    quality: int = Field(70, ge=20, le=95, description="JPEG quality")
    blur_faces: bool = Field(
        True, description="Blur every detected face (generously); false only where the site allows identifiable pictures"
    )
    watch_interval_s: float = Field(
        1.0, ge=0.5, le=3600.0, description="Seconds between snapshots while the centre watches (a signed `watch` lease)"
    )
    watch_max_lease_s: float = Field(60.0, ge=5.0, le=600.0, description="Longest watch lease the station grants; renewals extend it")


class HttpSection(Section):
    """The operator display (station/web): the lane's touch-screen page, served by the daemon itself."""

    enabled: bool = Field(False, description="Serve the operator page (the kiosk unit shows it on the box's display)")
    listen: str = Field("127.0.0.1", pattern=r"^[0-9A-Za-z.:-]{1,64}$", description="Bind address; 127.0.0.1 = only this box's kiosk")
    port: int = Field(8080, ge=0, le=65535, description="TCP port; 0 = any free port")
    language: Literal["zh", "en"] = Field("zh", description="The page's language until the operator toggles it")
    mjpeg_fps: float = Field(5.0, gt=0.0, le=30.0, description="Live picture frame rate cap (one encoder shared by every viewer)")
    mjpeg_width: int = Field(640, ge=160, le=1920, description="Live picture width in pixels")
    pin_hash: str = Field(
        "",
        pattern=r"^$|^pbkdf2_sha256\$\d+\$[0-9a-f]+\$[0-9a-f]+$",
        description="Salted hash of the operator PIN (python -m station.web.pin); empty = PIN actions refused",
    )
    pin_max_failures: int = Field(5, ge=1, le=100, description="Wrong PINs in a row before PIN actions are locked")
    pin_lock_s: float = Field(60.0, ge=1.0, le=3600.0, description="How long the first lock lasts; each further lock doubles it")
    pin_lock_max_s: float = Field(3600.0, ge=1.0, le=86400.0, description="Longest lock (the doubling stops here)")
    allowed_hosts: list[str] = Field(
        default_factory=list, description="Host names the page is reached under besides IP addresses and localhost (DNS-rebinding guard)"
    )
    overrides_per_min: int = Field(6, ge=1, le=120, description="Manual overrides (open gate, re-check) allowed per minute")


class VoiceSection(Section):
    """The gate's voice: each decision and next step said through the box's loudspeaker (drivers/speaker)."""

    enabled: bool = Field(True, description="Say the prompts; without a sound card they are logged (a degraded speaker)")
    language: Literal["zh", "en"] = Field("zh", description="The language the prompts are said in")
    device: str = Field("default", pattern=r"^[0-9A-Za-z_.:,=-]{1,64}$", description="ALSA PCM device the clips play on (aplay -L)")
    volume: int = Field(80, ge=0, le=100, description="Volume in percent (the clips are scaled; the card's mixer is left alone)")
    quiet_hours: str = Field(
        "22:00-07:00", pattern=r"^$|^\d{2}:\d{2}-\d{2}:\d{2}$", description='HH:MM-HH:MM local time at quiet_volume; "" = none'
    )
    quiet_volume: int = Field(30, ge=0, le=100, description="Volume in percent during quiet_hours")

    @field_validator("quiet_hours")
    @classmethod
    def _hours_of_day(cls, v: str) -> str:
        from station.domain.prompts import VolumeSchedule

        VolumeSchedule.parse(80, v, 30)  # raises ValueError for 25:00 and the like
        return v


class LoggingSection(Section):
    """Log level, an optional log file, and the line format."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    file: str = Field("", description="Also append logs to this file (for hosts without journald); empty = stderr only")
    format: Literal["text", "json"] = Field(
        "text", description="text: one line with key=value fields | json: one JSON object per line (journald, Loki)"
    )


class ClockSection(Section):
    """The wall clock: when it counts as synchronised and what is a step (station/ops/clock.py)."""

    timesync_flag: str = Field(
        "/run/systemd/timesync/synchronized",
        description="File systemd-timesyncd creates once synchronised; the kernel's NTP status (adjtimex) counts too",
    )
    step_threshold_s: float = Field(
        1.0, ge=0.05, le=3600.0, description="A change of wall - monotonic larger than this is a step (NTP slews far slower)"
    )
    check_interval_s: float = Field(1.0, ge=0.05, le=60.0, description="How often the clock is checked for a sync or a step")


class StationConfig(Section):
    """The whole configuration: one section per part of the station."""

    station: StationSection = Field(default_factory=StationSection)
    screening: ScreeningSection = Field(default_factory=ScreeningSection)
    policy: PolicySection = Field(default_factory=PolicySection)
    thermal: ThermalSection = Field(default_factory=ThermalSection)
    camera: CameraSection = Field(default_factory=CameraSection)
    detector: DetectorSection = Field(default_factory=DetectorSection)
    vehicle: VehicleSection = Field(default_factory=VehicleSection)
    direction: DirectionSection = Field(default_factory=DirectionSection)
    codes: CodesSection = Field(default_factory=CodesSection)
    idcard: IdCardSection = Field(default_factory=IdCardSection)
    gate: GateSection = Field(default_factory=GateSection)
    mqtt: MqttSection = Field(default_factory=MqttSection)
    centre: CentreSection = Field(default_factory=CentreSection)
    retention: RetentionSection = Field(default_factory=RetentionSection)
    capture: CaptureSection = Field(default_factory=CaptureSection)
    snapshots: SnapshotsSection = Field(default_factory=SnapshotsSection)
    http: HttpSection = Field(default_factory=HttpSection)
    voice: VoiceSection = Field(default_factory=VoiceSection)
    logging: LoggingSection = Field(default_factory=LoggingSection)
    clock: ClockSection = Field(default_factory=ClockSection)


# ---------------------------------------------------------------------------------------------
# Loading and error reporting


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One bad setting: which key, its value, what is wrong, and where it was set."""

    key: str  # dotted path, e.g. "screening.fever_threshold_c"
    value: Any
    message: str
    where: str  # "station.toml:12", "env CHECKPOINT_SCREENING__FEVER_THRESHOLD_C", or "defaults"

    def __str__(self) -> str:
        shown = "(missing)" if self.value is _MISSING else repr(self.value)
        return f"{self.where}: {self.key} = {shown}: {self.message}"


class ConfigError(Exception):
    """The configuration is not usable; ``problems`` says exactly why, one entry per key."""

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        self.problems = list(problems)
        super().__init__("invalid configuration:\n" + "\n".join(f"  {p}" for p in self.problems))


_MISSING = object()


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _parse_env_value(raw: str) -> Any:
    """Parse an environment value as a TOML literal when it is one (37.5, true, [1,2]), else keep the string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def env_layer(env: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Return the environment's settings as a nested dict, and which variable set each dotted key."""
    data: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = _parse_env_value(raw)
        origin[".".join(parts)] = f"env {name}"
    return data, origin


_TABLE_RE = re.compile(r"^\s*\[([A-Za-z0-9_.\-\s]+)\]\s*(#.*)?$")
_KEY_RE = re.compile(r"^\s*([A-Za-z0-9_\-]+)\s*=")


def key_lines(text: str) -> dict[str, int]:
    """Map dotted keys to the 1-based line that sets them (tomllib reports no positions for values)."""
    lines: dict[str, int] = {}
    table = ""
    for n, line in enumerate(text.splitlines(), start=1):
        m = _TABLE_RE.match(line)
        if m:
            table = m.group(1).strip().replace(" ", "")
            lines.setdefault(table, n)
            continue
        m = _KEY_RE.match(line)
        if m:
            key = f"{table}.{m.group(1)}" if table else m.group(1)
            lines.setdefault(key, n)
    return lines


def _read_toml(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigProblem("(file)", str(path), f"cannot read: {exc.strerror}", str(path))]) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([ConfigProblem("(syntax)", _MISSING, f"TOML syntax error: {exc}", str(path))]) from exc
    origin = {k: f"{path.name}:{n}" for k, n in key_lines(text).items()}
    return data, origin


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = StationConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None) if field else None
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return []
    return list(model.model_fields)


def _field_for(loc: tuple[Any, ...]) -> Any:
    model: type[BaseModel] = StationConfig
    field = None
    for part in loc:
        if not isinstance(part, str):
            break
        field = model.model_fields.get(part)
        if field is None:
            return None
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
    return field


def _allowed_hint(loc: tuple[Any, ...]) -> str:
    """Return what a field accepts, in words: its choices or its numeric range."""
    field = _field_for(loc)
    if field is None:
        return ""
    args = getattr(field.annotation, "__args__", None)
    if getattr(field.annotation, "__origin__", None) is Literal and args:
        return "one of " + ", ".join(repr(a) for a in args)
    bounds = []
    for m in field.metadata:
        for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            v = getattr(m, attr, None)
            if v is not None:
                bounds.append(f"{sym} {v}")
    kind = getattr(field.annotation, "__name__", str(field.annotation))
    return f"{kind} {' and '.join(bounds)}" if bounds else kind


def _lookup(data: Mapping[str, Any], loc: tuple[Any, ...]) -> Any:
    node: Any = data
    for part in loc:
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            return _MISSING
    return node


def _redacted(value: Any) -> Any:
    """Return a reported value with URL passwords masked, however deep (a section's value is a dict)."""
    if isinstance(value, str):
        return redact_url(value)
    if isinstance(value, Mapping):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    return value


def problems_from(exc: ValidationError, data: Mapping[str, Any], origin: Mapping[str, str]) -> list[ConfigProblem]:
    """Turn pydantic's errors into problems a technician can act on: key, value (redacted), what is allowed, where set."""
    problems: list[ConfigProblem] = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(loc)
            guess = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            msg = "unknown key" + (f"; did you mean '{guess[0]}'?" if guess else "")
            if allowed:
                msg += f" (allowed here: {', '.join(allowed)})"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        elif not err["type"].startswith(("literal_", "greater_", "less_", "string_pattern")):
            hint = _allowed_hint(loc)
            if hint:
                msg += f" (allowed: {hint})"
        where = "defaults"
        for i in range(len(loc), 0, -1):
            dotted = ".".join(str(p) for p in loc[:i])
            if dotted in origin:
                where = origin[dotted]
                break
        problems.append(ConfigProblem(key, _redacted(_lookup(data, loc)), msg, where))
    return problems


def load_config(
    path: Path | str | None = None,
    overrides: Iterable[Path | str] = (),
    env: Mapping[str, str] | None = None,
) -> StationConfig:
    """Build the effective configuration; raises ``ConfigError`` listing every problem."""
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for p in ([path] if path else []) + list(overrides):
        layer, layer_origin = _read_toml(Path(p))
        data = _merge(data, layer)
        origin.update(layer_origin)
    layer, layer_origin = env_layer(env)
    data = _merge(data, layer)
    origin.update(layer_origin)
    try:
        return StationConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(problems_from(exc, data, origin)) from None


def validate_text(text: str, name: str = "station.toml") -> list[ConfigProblem]:
    """Return the problems in one TOML document on its own (no environment), for ``stationctl config``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return [ConfigProblem("(syntax)", _MISSING, f"TOML syntax error: {exc}", name)]
    origin = {k: f"{name}:{n}" for k, n in key_lines(text).items()}
    try:
        StationConfig.model_validate(data)
    except ValidationError as exc:
        return problems_from(exc, data, origin)
    return []


def get_dotted(cfg: StationConfig, key: str) -> Any:
    """Return the setting at a dotted key (a section as a JSON-able dict); ``KeyError`` naming what exists."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, BaseModel) or part not in type(node).model_fields:
            allowed = list(type(node).model_fields) if isinstance(node, BaseModel) else []
            raise KeyError(f"no setting '{key}'" + (f" (allowed at this level: {', '.join(allowed)})" if allowed else ""))
        node = getattr(node, part)
    return node.model_dump(mode="json") if isinstance(node, BaseModel) else node
