"""Compose ``station demo``: the real pipeline against emulated hardware, on any machine.

This is the demo's own composition: the one place an emulator is wired to a ``StationApp``. The
``station demo`` verb (``station/cli/station_main.py``) imports it lazily; the daemon never does.

What is emulated and what is real:

- thermal: a GY-MCU90640 emulator owns a pseudo-terminal and speaks the module's exact bytes at the
  configured baud; the station's real serial driver opens the pty, configures the module and parses
  the stream, as on the box;
- visible camera: frames rendered from the scene (a public-domain NASA portrait as the face, a phone
  showing a health-code QR), read by the real face detector (ONNX) and the real QR decoder (zbar);
- gate: the real gpiozero driver on gpiozero's mock pins;
- store: the real SQLite event store and outbox; with ``--mqtt`` the real MQTT sync.

The scene is a queue of people covering every decision; the default scene's ground truth says what a
correct station decides for each, and the demo reports how many it got right.
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TextIO

from sim.idcard_emulator import EmulatedCard, IdCardEmulator
from sim.issuer import demo_issuer, write_demo_trust_list
from sim.scene import Phase, SceneDirector, SceneGeometry, ScenePerson, SceneTiming
from station.app import Injected, StationApp
from station.config import StationConfig
from station.domain.model import CodeColour, Decision
from station.lane.pipeline import Decided
from station.ops.clock import SystemClock

log = logging.getLogger("sim.demo")

DEMO_BAUD: Final = 460800  # Final keeps the literal, which the config's baud field (a Literal of rates) accepts
DEMO_REFRESH_HZ: Final = 8


@dataclass(frozen=True, slots=True)
class Casting:
    """One role in the demo's queue: who the person is and what their phone shows."""

    label: str
    core_c: float
    colour: CodeColour | None
    payload_kind: str  # "valid", "expired", "garbage", "none", "idcard" (no phone: puts an ID card on the reader)


# One of each situation a gate meets, in an order that shows them all within the first five people.
CAST: tuple[Casting, ...] = (
    Casting("normal, green code", 36.6, CodeColour.GREEN, "valid"),
    Casting("fever 38.2 °C, green code", 38.2, CodeColour.GREEN, "valid"),
    Casting("normal, red code", 36.7, CodeColour.RED, "valid"),
    Casting("normal, yellow code", 36.5, CodeColour.YELLOW, "valid"),
    Casting("normal, shows no code", 36.8, None, "none"),
    Casting("normal, green code", 36.9, CodeColour.GREEN, "valid"),
    Casting("normal, expired green code", 36.4, CodeColour.GREEN, "expired"),
    Casting("normal, shows a payment QR", 36.6, None, "garbage"),
    Casting("normal, no phone, ID card", 36.7, None, "idcard"),
)


def expected_decision(c: Casting, cfg: StationConfig, clock_synced: bool = True) -> Decision:
    """Return the decision a correct station makes for ``c`` under ``cfg``'s policy (the ground truth).

    ``clock_synced``: whether the station's wall clock is synchronised (a signed code's dates are then judged).
    """
    if c.core_c >= cfg.screening.fever_threshold_c:
        return Decision.DENY_FEVER if cfg.policy.temperature == "hard" else Decision.MANUAL_CHECK
    dated = c.payload_kind in ("valid", "expired")
    if dated and not clock_synced and cfg.policy.unsynced_clock_validity == "manual_check":
        return Decision.MANUAL_CHECK  # code_unverifiable:clock_unsynced
    if c.payload_kind == "none":
        return Decision.RETRY
    if c.payload_kind == "garbage":
        return Decision.MANUAL_CHECK
    if c.payload_kind == "idcard":  # the demo has no centre to vouch for a card: the named policy decides
        return Decision(cfg.policy.idcard_unknown)
    if c.payload_kind == "expired" or c.colour is CodeColour.RED:
        return Decision.DENY_CODE
    if c.colour is CodeColour.YELLOW:
        return Decision(cfg.policy.yellow_code)
    return Decision.PASS


def cast_people(n: int, cfg: StationConfig, now_wall: float, clock_synced: bool = True) -> list[ScenePerson]:
    """Return a queue of ``n`` people cycling through ``CAST``, with their codes and expected decisions."""
    # Real signed HC1 codes (ES256) from the DEMO ONLY issuer, whose key is public: a demo, not a credential.
    issuer = demo_issuer()
    people = []
    for i in range(n):
        c = CAST[i % len(CAST)]
        payload: bytes | None
        if c.payload_kind == "valid" and c.colour is not None:
            payload = issuer.issue(c.colour, iat=int(now_wall) - 600, exp=int(now_wall) + 86400, holder=f"demo-person-{i}").encode()
        elif c.payload_kind == "expired" and c.colour is not None:
            payload = issuer.issue(
                c.colour, iat=int(now_wall) - 3 * 86400, exp=int(now_wall) - 2 * 86400, holder=f"demo-person-{i}"
            ).encode()
        elif c.payload_kind == "garbage":
            payload = b"https://pay.example/qr/7F3A9C21"
        else:
            payload = None
        card = demo_id_card(i) if c.payload_kind == "idcard" else None
        people.append(ScenePerson(i, c.core_c, c.colour, payload, c.label, expected_decision(c, cfg, clock_synced).value, id_card=card))
    return people


ID_CHECK_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def demo_id_card(index: int) -> EmulatedCard:
    """Return a made-up resident ID card for demo person ``index`` (a valid check digit, a test region, test names)."""
    from sim.idcard_emulator import EmulatedCard

    body = f"990101{1950 + index % 50:04d}0101{index % 1000:03d}"  # region 990101 does not exist
    check = "10X98765432"[sum(int(d) * w for d, w in zip(body, ID_CHECK_WEIGHTS, strict=True)) % 11]
    birth = f"{1950 + index % 50:04d}0101"
    return EmulatedCard(body + check, name=f"演示人{index}", address=f"演示省演示市演示路{index}号", authority="演示市公安局", birth=birth)


def demo_config(base: StationConfig) -> StationConfig:
    """Return ``base`` set up for the demo's devices: emulated module at 460800 baud / 8 Hz, mock GPIO.

    The thermal port is filled in by ``DemoRun.run`` once the emulator owns its pty. The demo's issuer
    signs its codes by this machine's clock, so their dates are right against it whatever the true time:
    ``policy.unsynced_clock_validity`` is ``trust_wall_clock`` unless the config sets it.
    """
    cfg = base.model_copy(deep=True)
    if "unsynced_clock_validity" not in base.policy.model_fields_set:
        cfg.policy.unsynced_clock_validity = "trust_wall_clock"
    cfg.thermal.baud = DEMO_BAUD
    cfg.thermal.refresh_hz = DEMO_REFRESH_HZ
    cfg.gate.pin_factory = "mock"
    return cfg


@dataclass
class DemoResult:
    """What one demo run produced: the decisions with the person each was for, timings and stats."""

    decided: list[tuple[ScenePerson | None, Decided]]
    elapsed_s: float
    start_s: float
    db_path: Path
    outbox_pending: int
    thermal_stats: dict[str, Any]
    pipeline_stats: dict[str, Any]


class DemoRun:
    """Wire the scene, the emulators and the station together and run the queue of people."""

    def __init__(
        self,
        cfg: StationConfig,
        people: int,
        data_dir: Path,
        fast: bool,
        on_decided: Callable[[ScenePerson | None, Decided], None] | None = None,
        seed: int = 7,
        thermal_link: tuple[int, float] = (DEMO_BAUD, DEMO_REFRESH_HZ),  # (baud, Hz) of the emulated module
        wait_for_page: bool = False,  # with http.enabled: nobody walks up until the operator page is open
        cast: Sequence[ScenePerson] | None = None,  # this queue instead of ``people`` from CAST (any QR payload)
    ) -> None:
        from sim.gy_mcu90640_emulator import GyMcu90640Emulator
        from sim.scene_camera import SceneCamera
        from sim.thermal_render import ThermalSceneRenderer

        self.cfg = demo_config(cfg)
        # Both at once: the schema checks the pair (a rate the link cannot carry is refused).
        self.cfg.thermal = type(self.cfg.thermal).model_validate(
            {**self.cfg.thermal.model_dump(), "baud": thermal_link[0], "refresh_hz": thermal_link[1]}
        )
        leave = self.cfg.screening.leave_after_s
        timing = SceneTiming.fast(leave) if fast else SceneTiming.realtime(leave)
        synced = SystemClock(self.cfg.clock.timesync_flag).synced()
        self.people = list(cast) if cast is not None else cast_people(people, self.cfg, time.time(), synced)
        self.director = SceneDirector(self.people, timing, SceneGeometry())
        self.emulator = GyMcu90640Emulator(ThermalSceneRenderer(self.director, seed=seed), baud=thermal_link[0], refresh_hz=thermal_link[1])
        # Someone in the queue has an ID card and no phone: an ID card reader (SAM emulator on a pty) beside the gate.
        self.card_reader = IdCardEmulator(self.cfg.idcard.baud) if any(p.id_card is not None for p in self.people) else None
        self._card_hand: threading.Thread | None = None
        self._card_hand_stop = threading.Event()
        self.camera = SceneCamera(self.director, fps=self.cfg.camera.fps, seed=seed)
        self.waiting_for_page = wait_for_page and self.cfg.http.enabled
        if self.waiting_for_page:
            self.director.hold()
        self.data_dir = data_dir
        if not self.cfg.codes.trust_list_file:  # the demo issuer's trust list, beside the demo's data
            self.cfg.codes.trust_list_file = str(write_demo_trust_list(Path(data_dir)))
        self.on_decided = on_decided
        self.decided: list[tuple[ScenePerson | None, Decided]] = []
        self._lock = threading.Lock()
        self.app: StationApp | None = None

    def _listener(self, d: Decided) -> None:
        state = self.director.state()
        person = state.person
        self.director.on_decision(d.event.decision.value)
        with self._lock:
            self.decided.append((person, d))
        if self.on_decided is not None:
            self.on_decided(person, d)

    def run(self, stop: threading.Event | None = None, max_s: float | None = None, keep_running: bool = False) -> DemoResult:
        """Run the queue until everyone is decided, ``stop`` is set or the time limit passes; return the result.

        ``max_s`` defaults to 30 s plus 15 s a person; ``keep_running`` keeps the station up after the
        queue until ``stop`` or Ctrl-C.
        """
        t0 = time.monotonic()
        # The emulator must own its pty before the station's config can name it.
        self.emulator.start()
        if self.card_reader is not None:
            self.card_reader.start()
            self.cfg.idcard.enabled = True
            self.cfg.idcard.port = self.card_reader.port
        try:
            self.cfg.thermal.port = self.emulator.port
            # The demo's voice is heard (a sound card) or read: each prompt said is one INFO line of
            # station.voice, shown whatever the demo's log level (no sound card: that line is the voice).
            logging.getLogger("station.voice").setLevel(logging.INFO)
            self.app = StationApp(self.cfg, data_dir=self.data_dir, injected=Injected(camera=self.camera))
            self.app.start()
            start_s = time.monotonic() - t0
            self.app.add_listener(self._listener)
            if self.card_reader is not None:
                self._card_hand = threading.Thread(target=self._hand_cards, args=(self.card_reader,), name="demo-card-hand", daemon=True)
                self._card_hand.start()
            limit = max_s if max_s is not None else 30.0 + 15.0 * len(self.people)
            while not self.director.finished():
                if stop is not None and stop.is_set():
                    break
                if self.waiting_for_page:
                    http = self.app.http
                    if http is None or http.desk.viewer_seen.is_set():  # no display (port busy): do not wait forever
                        self.director.release()
                        self.waiting_for_page = False
                        log.info("operator page connected; the queue walks up")
                    t0 = time.monotonic() - start_s  # the time limit counts from here
                    time.sleep(0.05)
                    continue
                if time.monotonic() - t0 > limit:
                    log.error("demo did not finish in time limit_s=%.0f", limit)
                    break
                time.sleep(0.05)
            elapsed = time.monotonic() - t0 - start_s
            assert self.app.pipeline is not None and self.app.store is not None
            if self.app.pump is not None:
                from station.link.sync import drain_bounded

                # Bounded: an unreachable broker leaves the events queued for `outbox flush`.
                drain_bounded(self.app.pump, self.app.publisher, timeout=10.0)
            if keep_running:
                # `station demo --keep-running`: the station stays up after its queue of people
                # (status, states, snapshots keep flowing, e.g. for the command-centre board) until
                # Ctrl-C / SIGINT or ``stop``; then it shuts down cleanly (retained status "stopped").
                print(
                    f"demo: all people done ({len(self.decided)} decisions); the station keeps running until Ctrl-C",
                    file=sys.stderr,
                    flush=True,
                )
                try:
                    while stop is None or not stop.is_set():
                        time.sleep(0.2)
                except KeyboardInterrupt:
                    log.info("demo interrupted after its people; stopping")
            return DemoResult(
                decided=list(self.decided),
                elapsed_s=elapsed,
                start_s=start_s,
                db_path=self.app.db_path,
                outbox_pending=int(self.app.store.outbox_stats()["pending"]),
                thermal_stats=dict(self.app.pipeline.thermal.stats()),
                pipeline_stats=self.app.pipeline.stats(),
            )
        finally:
            self._card_hand_stop.set()
            if self._card_hand is not None:
                self._card_hand.join(timeout=2.0)
            if self.app is not None:
                self.app.stop()
            self.emulator.stop()
            if self.card_reader is not None:
                self.card_reader.stop()

    def _hand_cards(self, reader: IdCardEmulator, after_s: float = 0.3) -> None:
        """Put the person's ID card on the reader ``after_s`` after they stand at the gate; take it off when they go."""
        on_reader: ScenePerson | None = None
        standing_since: float | None = None
        while not self._card_hand_stop.wait(0.05):
            state = self.director.state()
            person = state.person if state.phase is Phase.STANDING else None
            if on_reader is not None and person is not on_reader:
                reader.remove_card()
                on_reader = None
            if person is None or person.id_card is None:
                standing_since = None
                continue
            standing_since = standing_since if standing_since is not None else time.monotonic()
            if on_reader is None and time.monotonic() - standing_since >= after_s:
                reader.present_card(person.id_card)
                on_reader = person


def json_line(person: ScenePerson | None, d: Decided) -> str:
    """Return one decision as a JSON line (``station demo --json``)."""
    e = d.event
    rec = {
        "event_id": e.event_id,
        "person": person.index if person else None,
        "expected": person.expected if person else None,
        "decision": e.decision.value,
        "reason": e.reason,
        "alarm": e.alarm,
        "temperature_c": e.temperature_c,
        "code_colour": e.code_colour.value if e.code_colour else None,
        "code_status": e.code.get("status"),
        "latency_ms": dict(e.latency_ms, stored=d.stored_ms, gate=d.gate_ms),
        "gate": {"action": d.gate.action.value, "executed": d.gate.executed, "reason": d.gate.reason},
    }
    return json.dumps(rec, ensure_ascii=False)


def human_line(person: ScenePerson | None, d: Decided) -> str:
    """Return one decision as a line for a person reading the terminal, flagging a wrong decision."""
    e = d.event
    who = f"#{person.index:<3d} {person.label:<28s}" if person else "#?   (unknown)" + " " * 18
    temp = f"{e.temperature_c:5.2f} °C" if e.temperature_c is not None else "  --.-- °C"
    colour = e.code_colour.value if e.code_colour else (e.code.get("status") or "none")
    mark = "" if person is None or person.expected == e.decision.value else f"   (expected {person.expected})"
    return f"{who} {e.decision.value:<13s} {temp}  code={colour:<8s} {e.latency_ms['total']:7.0f} ms  {e.reason}{mark}"


def summary(result: DemoResult) -> dict[str, Any]:
    """Return the run's figures: decisions, ground-truth agreement, median stage latencies, link stats."""
    decisions = Counter(d.event.decision.value for _, d in result.decided)
    agree = sum(1 for p, d in result.decided if p is not None and p.expected == d.event.decision.value)
    stages: dict[str, list[float]] = {}
    for _, d in result.decided:
        for k, v in d.event.latency_ms.items():
            stages.setdefault(k, []).append(v)
        stages.setdefault("stored", []).append(d.stored_ms)
        stages.setdefault("gate", []).append(d.gate_ms)
    n = len(result.decided)
    return {
        "decisions": n,
        "by_decision": dict(decisions),
        "ground_truth_agreement": f"{agree}/{n}",
        "elapsed_s": round(result.elapsed_s, 2),
        "decisions_per_s": round(n / result.elapsed_s, 3) if result.elapsed_s > 0 else None,
        "start_s": round(result.start_s, 2),
        "median_latency_ms": {k: round(statistics.median(v), 1) for k, v in sorted(stages.items())},
        "db": str(result.db_path),
        "outbox_pending": result.outbox_pending,
        "thermal": {k: result.thermal_stats.get(k) for k in ("frames_ok", "checksum_errors", "resync_bytes", "stalls", "baud")},
        "pipeline": result.pipeline_stats,
    }


def print_summary(s: dict[str, Any], out: TextIO = sys.stdout) -> None:
    """Print ``summary``'s figures as a few human-readable lines."""
    print("", file=out)
    print(f"{s['decisions']} decisions in {s['elapsed_s']} s ({s['decisions_per_s']}/s), start-up {s['start_s']} s", file=out)
    print(f"by decision: {s['by_decision']}; agrees with the scene's ground truth: {s['ground_truth_agreement']}", file=out)
    print("median ms from entering the zone: " + ", ".join(f"{k} {v}" for k, v in s["median_latency_ms"].items()), file=out)
    print(f"thermal link: {s['thermal']}", file=out)
    print(f"events in {s['db']}; outbox pending: {s['outbox_pending']}", file=out)
