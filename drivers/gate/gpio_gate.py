"""The lane's gate outputs — barrier relay, buzzer, green/red/amber lights — on GPIO via gpiozero.

Safety model, in order of importance:

1. **De-energised is safe.** A released relay means the barrier stays closed; a silent buzzer and
   dark lights mean "idle". Every device is built with an explicit ``initial_value=False`` so the
   moment this process (re)starts — after a watchdog kill, a crash, a safe-mode boot — it drives
   the gate *closed* rather than leaving whatever level the pin happened to have
   (``initial_value=None``) or relying on a library default that could change.
2. **A late command never actuates.** A ``GateCommand`` that arrives after its ``deadline_t`` is
   refused without touching any output: a decision that sat behind a slow disk or a backlog must not
   open the barrier for whoever is standing there now.
3. **Only OPEN energises the relay**, and only for a ``pass`` decision: an OPEN carrying any other
   decision is rejected as an upstream bug instead of being obeyed.
4. **Never raise into the pipeline.** A hardware error becomes ``GateResult(executed=False,
   reason="fault: …")``, is logged, and the driver forces every output it still can to the safe state.

Timing: ``execute()`` applies the first step of a pattern (relay on, light on, buzzer on) before it
returns, so the expiry check and the actuation are microseconds apart; later steps (relay off after
``open_s``, the end of a beep, lights back to idle) run on one sequencer thread owned by the gate.
The driver keeps its own timeline instead of gpiozero's ``blink()`` threads so that each write —
including the ones that happen in the background — goes through one place that records it in
``history()``; that works the same on a real Pi (lgpio) as on ``MockFactory``, whose pins only keep
relative timestamps.

``pin_factory="mock"`` builds the same gpiozero devices on ``gpiozero.pins.mock.MockFactory``: that is
how CI and the laptop demo run this real driver code on a machine without GPIO.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal, TypeAlias

from gpiozero import LED, Buzzer, DigitalOutputDevice
from gpiozero.pins import Factory
from gpiozero.pins.mock import MockFactory

from station.domain.model import Decision, GateAction, GateCommand, GateResult

log = logging.getLogger("station.gate")

RELAY: Final = "relay"
BUZZER: Final = "buzzer"
GREEN: Final = "green"
RED: Final = "red"
AMBER: Final = "amber"
OUTPUTS: Final[tuple[str, ...]] = (RELAY, BUZZER, GREEN, RED, AMBER)

# Order of writes when a command starts: everything that goes off is switched off relay-first, and
# everything that comes on is switched on relay-last, so a failure part-way through a command can
# leave a light lit but never the barrier open with the signalling missing.
_OFF_ORDER: Final[tuple[str, ...]] = (RELAY, BUZZER, GREEN, RED, AMBER)
_ON_ORDER: Final[tuple[str, ...]] = (GREEN, RED, AMBER, BUZZER, RELAY)

SHORT_BEEP_S: Final = 0.12
BEEP_GAP_S: Final = 0.12
LONG_BEEP_S: Final = 0.8
ALARM_ON_S: Final = 0.25
ALARM_OFF_S: Final = 0.25

# The sequencer re-reads the injected clock at least this often, so a clock that is not
# time.monotonic (the station's Clock, a simulated one) is followed without long sleeps.
_MAX_WAIT_S: Final = 0.25

PinFactorySpec: TypeAlias = Literal["mock", "default"] | Factory
_Step: TypeAlias = tuple[float, str, bool]  # (offset or due time in seconds, output, value)


class GpioGate:
    """Drive one lane's gate (the ``GateOutput`` port): relay, buzzer and three lights on five GPIO pins.

    ``active_high`` is either one bool for all outputs or a mapping from output name (``relay``,
    ``buzzer``, ``green``, ``red``, ``amber``) to bool for the ones wired active-low; ``history()``
    always records *logical* values (True = energised / sounding / lit) whatever the wiring.

    ``show_s`` is how long a result stays on the lights when no next command replaces it.
    ``clock`` must be the same monotonic clock the pipeline uses for ``GateCommand`` deadlines.

    Construction errors (pin in use, no GPIO on this machine with ``pin_factory="default"``) are
    raised: the composition root must know, and go to safe mode. Once built, the gate never raises
    from ``execute``.
    """

    def __init__(
        self,
        relay_pin: int | str,
        buzzer_pin: int | str,
        green_pin: int | str,
        red_pin: int | str,
        amber_pin: int | str,
        open_s: float = 1.5,
        alarm_s: float = 3.0,
        active_high: bool | Mapping[str, bool] = True,
        pin_factory: PinFactorySpec = "default",
        clock: Callable[[], float] = time.monotonic,
        name: str = "gpio-gate",
        show_s: float = 3.0,
        history_limit: int = 10_000,
    ) -> None:
        pins = {RELAY: relay_pin, BUZZER: buzzer_pin, GREEN: green_pin, RED: red_pin, AMBER: amber_pin}
        if len(set(pins.values())) != len(pins):
            raise ValueError(f"gate pins must be distinct, got {pins}")
        for label, value in (("open_s", open_s), ("alarm_s", alarm_s), ("show_s", show_s)):
            if not value > 0.0:
                raise ValueError(f"{label} must be > 0, got {value}")
        if history_limit < 1:
            raise ValueError(f"history_limit must be >= 1, got {history_limit}")
        levels = _active_levels(active_high)
        if not levels[RELAY]:
            log.warning(
                "gate relay is wired active-low: while this process is not running the pin's boot/pull "
                "level decides the relay — check on the bench that the barrier stays closed with the "
                "service stopped and during boot"
            )

        self.name = name
        self.open_s = float(open_s)
        self.alarm_s = float(alarm_s)
        self.show_s = float(show_s)
        self._clock = clock
        self._factory, self._owns_factory = _resolve_factory(pin_factory)

        self._devices: dict[str, DigitalOutputDevice] = {}
        try:
            # initial_value=False on every device: the process starting is itself a "go to the safe
            # state" — relay released (barrier closed), buzzer silent, lights dark. Never None, which
            # would keep whatever level the pin had, e.g. a relay left energised by a killed process.
            self._devices[RELAY] = DigitalOutputDevice(relay_pin, active_high=levels[RELAY], initial_value=False, pin_factory=self._factory)
            self._devices[BUZZER] = Buzzer(buzzer_pin, active_high=levels[BUZZER], initial_value=False, pin_factory=self._factory)
            for light, pin in ((GREEN, green_pin), (RED, red_pin), (AMBER, amber_pin)):
                self._devices[light] = LED(pin, active_high=levels[light], initial_value=False, pin_factory=self._factory)
        except Exception:  # release what was claimed, then re-raise
            self._close_devices()
            raise

        self._cond = threading.Condition(threading.RLock())
        self._pending: deque[_Step] = deque()  # absolute due times, sorted
        self._history: deque[tuple[float, str, Any]] = deque(maxlen=history_limit)
        self._state: dict[str, bool | None] = {}
        self._closed = False
        self._counts = {"executed": 0, "expired": 0, "rejected": 0, "faults": 0}
        self._last_fault = ""
        t0 = self._clock()
        for output in OUTPUTS:
            self._state[output] = False
            self._history.append((t0, output, False))

        self._thread = threading.Thread(target=self._run, name=f"{name}-sequencer", daemon=True)
        self._thread.start()
        log.info(
            "gate %s ready pins=%s active_high=%s factory=%s",
            name,
            pins,
            levels,
            type(self._factory).__name__ if self._factory else "default",
        )

    # ------------------------------------------------------------------ GateOutput

    def execute(self, command: GateCommand, now: float) -> GateResult:
        """Carry out ``command`` unless ``now`` is past its deadline; never raises.

        ``now`` is the caller's monotonic reading taken just before the call (the port's contract);
        a command exactly at its deadline is still carried out.
        """
        with self._cond:
            if self._closed:
                log.error("gate %s is closed; command refused event_id=%s action=%s", self.name, command.event_id, command.action)
                return self._result(command, False, "fault: gate closed", "faults")
            if not now <= command.deadline_t:  # also refuses a NaN deadline or reading: unknown age = too old
                log.warning(
                    "gate command expired, outputs untouched event_id=%s action=%s late_by_ms=%.1f",
                    command.event_id,
                    command.action.value,
                    (now - command.deadline_t) * 1000.0,
                )
                return self._result(command, False, "expired", "expired")
            try:
                pattern = self._pattern(command)
            except ValueError as exc:
                log.error("gate command rejected event_id=%s: %s", command.event_id, exc)
                return self._result(command, False, f"rejected: {exc}", "rejected")
            try:
                self._start(pattern)
            except Exception as exc:  # noqa: BLE001 — gpiozero, lgpio and OSError alike become a fault result
                self._fault(f"{command.action.value} for event {command.event_id}", exc)
                return self._result(command, False, f"fault: {type(exc).__name__}: {exc}", None)
            return self._result(command, True, "ok", "executed")

    def safe_state(self) -> None:
        """Put the gate in its safe state: relay released, buzzer silent, lights dark, pending steps dropped.

        Tries every output even if one fails (each failure is logged and counted) and does not
        raise: it is called from shutdown and safe-mode paths where the remaining outputs matter more
        than an exception.
        """
        with self._cond:
            if self._closed:
                return
            self._force_safe()
        log.info("gate %s in safe state", self.name)

    def close(self) -> None:
        """Go to the safe state, stop the sequencer and release the pins; idempotent."""
        with self._cond:
            if self._closed:
                return
            self._force_safe()
            self._closed = True
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=2.0)
            if self._thread.is_alive():
                log.error("gate %s sequencer did not stop within 2 s", self.name)
        self._close_devices()
        log.info("gate %s closed", self.name)

    def history(self) -> list[tuple[float, str, Any]]:
        """Return every output state change: (monotonic time, output name, logical value).

        Starts with one ``False`` entry per output at construction (the gate came up safe). Bounded by
        ``history_limit``; older entries are dropped first.
        """
        with self._cond:
            return list(self._history)

    # ------------------------------------------------------------------ diagnostics

    def stats(self) -> dict[str, Any]:
        """Return counters for the watchdog and the operator UI: executed, expired, rejected, faults and more."""
        with self._cond:
            out: dict[str, Any] = dict(self._counts)
            out["last_fault"] = self._last_fault
            out["sequencer_alive"] = self._thread.is_alive()
            out["closed"] = self._closed
            return out

    # ------------------------------------------------------------------ patterns

    def _pattern(self, command: GateCommand) -> list[_Step]:
        """Return the timeline (offset from now, output, value) for one command.

        Raises ``ValueError`` for a command the gate must not obey (OPEN for a non-pass decision).
        """
        action = command.action
        if action is GateAction.OPEN:
            if command.decision is not Decision.PASS:
                raise ValueError(f"open for decision {command.decision.value}")
            return [
                (0.0, GREEN, True),
                (0.0, RELAY, True),
                *self._beeps(SHORT_BEEP_S, BEEP_GAP_S, 1),
                (self.open_s, RELAY, False),
                (max(self.open_s, self.show_s), GREEN, False),
            ]
        if action is GateAction.HOLD:
            if command.decision is Decision.MANUAL_CHECK:
                # Staff come over: amber, one long beep — distinct from a refusal, not an alarm.
                return [(0.0, AMBER, True), *self._beeps(LONG_BEEP_S, 0.0, 1), (max(self.show_s, LONG_BEEP_S), AMBER, False)]
            beeps = self._beeps(SHORT_BEEP_S, BEEP_GAP_S, 2)
            return [(0.0, RED, True), *beeps, (max(self.show_s, beeps[-1][0]), RED, False)]
        if action is GateAction.RETRY:
            beeps = self._beeps(SHORT_BEEP_S, BEEP_GAP_S, 1)
            return [(0.0, AMBER, True), *beeps, (max(self.show_s, beeps[-1][0]), AMBER, False)]
        if action is GateAction.ALARM:
            # On/off for the whole of alarm_s, the last beep cut short rather than sounding past it.
            n = math.ceil(self.alarm_s / (ALARM_ON_S + ALARM_OFF_S))
            beeps = [(min(t, self.alarm_s), out, v) for t, out, v in self._beeps(ALARM_ON_S, ALARM_OFF_S, n)]
            return [(0.0, RED, True), *beeps, (max(self.show_s, self.alarm_s), RED, False)]
        raise ValueError(f"unknown gate action {action!r}")

    @staticmethod
    def _beeps(on_s: float, off_s: float, count: int) -> list[_Step]:
        """Return ``count`` beeps of ``on_s`` separated by ``off_s``, starting at offset 0, ending silent."""
        steps: list[_Step] = []
        t = 0.0
        for _ in range(count):
            steps.append((t, BUZZER, True))
            steps.append((t + on_s, BUZZER, False))
            t += on_s + off_s
        return steps

    # ------------------------------------------------------------------ output control (lock held)

    def _start(self, pattern: list[_Step]) -> None:
        """Replace whatever is showing with ``pattern``: apply offset-0 steps now, queue the rest.

        Outputs already at their target are not rewritten, so back-to-back OPENs keep the relay
        energised and restart its timer instead of dropping it for a few microseconds.
        """
        self._pending.clear()
        target = dict.fromkeys(OUTPUTS, False)
        for offset, output, value in pattern:
            if offset <= 0.0:
                target[output] = value
        for output in _OFF_ORDER:
            if not target[output]:
                self._write(output, False)
        for output in _ON_ORDER:
            if target[output]:
                self._write(output, True)
        start = self._clock()
        later = sorted((start + offset, output, value) for offset, output, value in pattern if offset > 0.0)
        self._pending.extend(later)
        self._cond.notify_all()

    def _write(self, output: str, value: bool) -> None:
        """Drive one output and record the change; raise whatever the backend raises."""
        if self._state[output] == value:  # None (unknown after a failed write) never matches
            return
        device = self._devices[output]
        self._state[output] = None  # unknown until the write is known to have happened
        if value:
            device.on()
        else:
            device.off()
        self._state[output] = value
        self._history.append((self._clock(), output, value))

    def _force_safe(self) -> None:
        """Drop pending steps and switch every output off, relay first; log and count failures."""
        self._pending.clear()
        for output in _OFF_ORDER:
            try:
                self._write(output, False)
            except Exception as exc:  # keep going: the other outputs still need switching off
                self._counts["faults"] += 1
                self._last_fault = f"{output} off: {type(exc).__name__}: {exc}"
                log.exception("gate %s could not switch %s off", self.name, output)

    def _fault(self, what: str, exc: Exception) -> None:
        """Log and count a failed write, then force the safe state."""
        self._counts["faults"] += 1
        self._last_fault = f"{what}: {type(exc).__name__}: {exc}"
        log.error("gate %s fault during %s: %s: %s", self.name, what, type(exc).__name__, exc, exc_info=exc)
        self._force_safe()

    def _result(self, command: GateCommand, executed: bool, reason: str, counter: str | None) -> GateResult:
        if counter is not None:
            self._counts[counter] += 1
        return GateResult(command.event_id, command.action, executed, reason, self._clock())

    # ------------------------------------------------------------------ sequencer thread

    def _run(self) -> None:
        """Apply queued steps when they fall due; a failed step forces the safe state."""
        with self._cond:
            while not self._closed:
                if not self._pending:
                    self._cond.wait()
                    continue
                delay = self._pending[0][0] - self._clock()
                if delay > 0.0:
                    self._cond.wait(timeout=min(delay, _MAX_WAIT_S))
                    continue
                _, output, value = self._pending.popleft()
                try:
                    self._write(output, value)
                except Exception as exc:  # noqa: BLE001 — logged by _fault; the thread must outlive a bad write
                    self._fault(f"timed step {output}={value}", exc)

    def _close_devices(self) -> None:
        for output, device in self._devices.items():
            try:
                device.close()
            except Exception:  # release the other pins regardless
                log.exception("gate %s could not close %s", self.name, output)
        if self._owns_factory and self._factory is not None:
            self._factory.close()


def _active_levels(active_high: bool | Mapping[str, bool]) -> dict[str, bool]:
    """Return per-output ``active_high`` from one bool or a partial mapping (unknown names are an error)."""
    if isinstance(active_high, bool):
        return dict.fromkeys(OUTPUTS, active_high)
    unknown = set(active_high) - set(OUTPUTS)
    if unknown:
        raise ValueError(f"unknown gate outputs in active_high: {sorted(unknown)}; known: {list(OUTPUTS)}")
    return {output: bool(active_high.get(output, True)) for output in OUTPUTS}


def _resolve_factory(spec: PinFactorySpec) -> tuple[Factory | None, bool]:
    """Return (factory to pass to devices, whether this gate owns and must close it).

    ``"default"`` returns None so gpiozero picks its usual backend (lgpio on a current Pi, or
    ``GPIOZERO_PIN_FACTORY``). ``"mock"`` gets a private ``MockFactory`` so two gates, or a gate and
    a test, never share pin reservations.
    """
    if isinstance(spec, Factory):
        return spec, False
    if spec == "mock":
        return MockFactory(), True
    if spec == "default":
        return None, False
    raise ValueError(f"pin_factory must be 'mock', 'default' or a gpiozero Factory, got {spec!r}")
