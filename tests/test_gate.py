"""GpioGate on gpiozero's MockFactory: the real device code, with pins that record every change.

Timing assertions use generous upper bounds (shared, noisy machines) but strict lower bounds where
safety depends on them: the relay must never drop *early* nor rise for anything but a pass.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory, MockPin

from drivers.gate.gpio_gate import AMBER, BUZZER, GREEN, LONG_BEEP_S, OUTPUTS, RED, RELAY, SHORT_BEEP_S, GpioGate
from station.domain.gate import gate_command_for
from station.domain.model import Decision, GateAction, GateCommand
from station.ports import GateOutput
from tests.support.waiting import wait_until

# Real relay, light and beep patterns timed by the driver's thread (0.3-1 s a test): out of the fast loop.
pytestmark = pytest.mark.slow
PINS = {RELAY: 17, BUZZER: 27, GREEN: 22, RED: 23, AMBER: 24}
OPEN_S = 0.3
ALARM_S = 0.6
SHOW_S = 0.4
SLACK_S = 1.0  # upper-bound tolerance for anything timed by a thread on a loaded machine


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    f = MockFactory()
    yield f
    f.close()


def make_gate(
    pin_factory: Any,
    *,
    open_s: float = OPEN_S,
    alarm_s: float = ALARM_S,
    show_s: float = SHOW_S,
    active_high: bool | dict[str, bool] = True,
) -> GpioGate:
    return GpioGate(
        PINS[RELAY],
        PINS[BUZZER],
        PINS[GREEN],
        PINS[RED],
        PINS[AMBER],
        open_s=open_s,
        alarm_s=alarm_s,
        show_s=show_s,
        active_high=active_high,
        pin_factory=pin_factory,
    )


@pytest.fixture
def gate(factory: MockFactory) -> Iterator[GpioGate]:
    g = make_gate(factory)
    yield g
    g.close()


def pin(factory: MockFactory, output: str) -> MockPin:
    p = factory.pin(PINS[output])
    assert isinstance(p, MockPin)
    return p


def levels(factory: MockFactory) -> dict[str, bool]:
    return {out: bool(pin(factory, out).state) for out in OUTPUTS}


def ever_high(factory: MockFactory, output: str) -> bool:
    return any(s.state for s in pin(factory, output).states)


def command(action: GateAction, decision: Decision, ttl_s: float = 5.0, event_id: str = "ev") -> GateCommand:
    t = time.monotonic()
    return GateCommand(event_id, action, decision, t, t + ttl_s)


def changes(gate: GpioGate, output: str) -> list[tuple[float, bool]]:
    """The output's recorded changes after the construction entry."""
    return [(t, v) for t, out, v in gate.history() if out == output][1:]


def all_low(factory: MockFactory) -> bool:
    return not any(levels(factory).values())


EVERY_COMMAND = [
    (GateAction.OPEN, Decision.PASS),
    (GateAction.HOLD, Decision.DENY_CODE),
    (GateAction.HOLD, Decision.MANUAL_CHECK),
    (GateAction.RETRY, Decision.RETRY),
    (GateAction.ALARM, Decision.DENY_FEVER),
]
NOT_OPEN = [c for c in EVERY_COMMAND if c[0] is not GateAction.OPEN]


# --------------------------------------------------------------------------- construction


def test_is_a_gate_output(gate: GpioGate) -> None:
    assert isinstance(gate, GateOutput)


def test_comes_up_with_every_output_driven_low(gate: GpioGate, factory: MockFactory) -> None:
    for out in OUTPUTS:
        p = pin(factory, out)
        assert p.function == "output"
        assert p.state is False
        assert not ever_high(factory, out)
    assert [(out, v) for _, out, v in gate.history()] == [(out, False) for out in OUTPUTS]


def test_active_low_relay_idles_high_and_history_stays_logical(factory: MockFactory) -> None:
    g = make_gate(factory, active_high={RELAY: False})
    try:
        relay = pin(factory, RELAY)
        assert relay.state is True  # de-energised on an active-low module
        g.execute(command(GateAction.OPEN, Decision.PASS), time.monotonic())
        assert relay.state is False  # energised
        assert wait_until(lambda: relay.state is True)
        assert [v for _, v in changes(g, RELAY)] == [True, False]
    finally:
        g.close()
    assert relay.state is True


def test_rejects_bad_configuration(factory: MockFactory) -> None:
    with pytest.raises(ValueError, match="distinct"):
        GpioGate(17, 17, 22, 23, 24, pin_factory=factory)
    with pytest.raises(ValueError, match="unknown gate outputs"):
        make_gate(factory, active_high={"relais": False})
    with pytest.raises(ValueError, match="open_s"):
        make_gate(factory, open_s=0.0)
    with pytest.raises(ValueError, match="pin_factory"):
        make_gate("lgpio")


def test_mock_string_builds_a_private_factory() -> None:
    g = make_gate("mock")
    try:
        result = g.execute(command(GateAction.OPEN, Decision.PASS), time.monotonic())
        assert result.executed and result.reason == "ok"
        assert wait_until(lambda: len(changes(g, RELAY)) == 2)
    finally:
        g.close()
    # a second mock gate on the same pin numbers does not collide with the first
    make_gate("mock").close()


# --------------------------------------------------------------------------- OPEN


def test_open_pulses_relay_for_open_s_with_green_and_one_beep(gate: GpioGate, factory: MockFactory) -> None:
    result = gate.execute(command(GateAction.OPEN, Decision.PASS, event_id="p1"), time.monotonic())

    assert (result.event_id, result.action, result.executed, result.reason) == ("p1", GateAction.OPEN, True, "ok")
    # Applied before execute() returned: the expiry check and the actuation are not separated by a thread hop.
    assert levels(factory)[RELAY] and levels(factory)[GREEN] and levels(factory)[BUZZER]

    assert wait_until(lambda: all_low(factory), timeout=OPEN_S + SHOW_S + SLACK_S)
    relay = pin(factory, RELAY)
    relay.assert_states([False, True, False])
    assert len(relay.states) == 3
    assert OPEN_S - 0.005 <= relay.states[2].timestamp <= OPEN_S + SLACK_S  # on-time measured at the pin

    (t_on, on), (t_off, off) = changes(gate, RELAY)
    assert (on, off) == (True, False)
    assert OPEN_S - 0.005 <= t_off - t_on <= OPEN_S + SLACK_S
    assert [v for _, v in changes(gate, BUZZER)] == [True, False]  # one short beep
    assert [v for _, v in changes(gate, GREEN)] == [True, False]
    assert not ever_high(factory, RED) and not ever_high(factory, AMBER)


def test_history_matches_what_the_pins_did(gate: GpioGate, factory: MockFactory) -> None:
    gate.execute(command(GateAction.OPEN, Decision.PASS), time.monotonic())
    assert wait_until(lambda: all_low(factory))
    gate.execute(command(GateAction.ALARM, Decision.DENY_FEVER), time.monotonic())
    assert wait_until(lambda: len(changes(gate, RED)) == 2, timeout=max(ALARM_S, SHOW_S) + SLACK_S)
    for out in OUTPUTS:
        assert [v for _, v in changes(gate, out)] == [s.state for s in pin(factory, out).states[1:]], out
    times = [t for t, _, _ in gate.history()]
    assert times == sorted(times)


def test_second_open_extends_the_release_instead_of_chattering_the_relay(factory: MockFactory) -> None:
    open_s = 1.0  # long enough that the second command surely lands inside the first release
    gate = make_gate(factory, open_s=open_s)
    try:
        gate.execute(command(GateAction.OPEN, Decision.PASS, event_id="a"), time.monotonic())
        time.sleep(0.1)  # the second command comes 0.1 s into the first release: the timing is the test
        second_t = time.monotonic()
        gate.execute(command(GateAction.OPEN, Decision.PASS, event_id="b"), second_t)
        assert wait_until(lambda: not levels(factory)[RELAY], timeout=open_s + SLACK_S)
        (_, on), (t_off, off) = changes(gate, RELAY)
        assert (on, off) == (True, False)
        assert t_off - second_t >= open_s - 0.005
    finally:
        gate.close()


def test_open_for_a_non_pass_decision_is_rejected(gate: GpioGate, factory: MockFactory) -> None:
    result = gate.execute(command(GateAction.OPEN, Decision.DENY_FEVER), time.monotonic())
    assert not result.executed
    assert result.reason.startswith("rejected:")
    time.sleep(0.05)  # nothing may go high afterwards either: a wait for nothing to happen
    assert not any(ever_high(factory, out) for out in OUTPUTS)
    assert gate.stats()["rejected"] == 1


# --------------------------------------------------------------------------- deadlines


@pytest.mark.parametrize(("action", "decision"), EVERY_COMMAND)
def test_expired_command_leaves_every_pin_low(
    gate: GpioGate, factory: MockFactory, action: GateAction, decision: Decision, caplog: pytest.LogCaptureFixture
) -> None:
    cmd = command(action, decision, ttl_s=0.5)
    with caplog.at_level(logging.WARNING, logger="station.gate"):
        result = gate.execute(cmd, cmd.deadline_t + 0.001)
    assert (result.executed, result.reason) == (False, "expired")
    assert "expired" in caplog.text
    time.sleep(OPEN_S + 0.1)  # nothing deferred either
    for out in OUTPUTS:
        assert [s.state for s in pin(factory, out).states] == [False], out
    assert len(gate.history()) == len(OUTPUTS)
    assert gate.stats()["expired"] == 1


def test_a_backlog_replayed_late_never_opens(gate: GpioGate, factory: MockFactory) -> None:
    """Decisions queued behind a stall (slow disk, reconnect) arrive after their ttl: none may act."""
    backlog = [gate_command_for(f"ev{i}", d, issued_t=time.monotonic(), ttl_s=0.05) for i, d in enumerate(Decision)]
    time.sleep(0.1)  # the backlog outlives its 0.05 s ttl: the passage of time is the test
    results = [gate.execute(c, time.monotonic()) for c in backlog]
    assert [r.reason for r in results] == ["expired"] * len(backlog)
    assert not any(ever_high(factory, out) for out in OUTPUTS)


def test_a_command_with_an_unknowable_age_is_refused(gate: GpioGate, factory: MockFactory) -> None:
    t = time.monotonic()
    cmd = GateCommand("nan", GateAction.OPEN, Decision.PASS, t, float("nan"))
    assert gate.execute(cmd, t).reason == "expired"
    assert not ever_high(factory, RELAY)


def test_a_command_exactly_at_its_deadline_is_carried_out(gate: GpioGate, factory: MockFactory) -> None:
    cmd = command(GateAction.RETRY, Decision.RETRY, ttl_s=0.5)
    assert gate.execute(cmd, cmd.deadline_t).executed
    assert levels(factory)[AMBER]


# --------------------------------------------------------------------------- deny / retry / alarm


@pytest.mark.parametrize(
    ("action", "decision", "light", "beeps"),
    [
        (GateAction.HOLD, Decision.DENY_CODE, RED, 2),
        (GateAction.HOLD, Decision.MANUAL_CHECK, AMBER, 1),
        (GateAction.RETRY, Decision.RETRY, AMBER, 1),
    ],
)
def test_hold_and_retry_signal_without_the_relay(
    gate: GpioGate, factory: MockFactory, action: GateAction, decision: Decision, light: str, beeps: int
) -> None:
    result = gate.execute(command(action, decision), time.monotonic())
    assert result.executed and result.reason == "ok"
    assert levels(factory)[light]
    assert wait_until(lambda: all_low(factory) and len(changes(gate, light)) == 2, timeout=SHOW_S + 0.8 + SLACK_S)
    assert [v for _, v in changes(gate, BUZZER)] == [True, False] * beeps
    assert not ever_high(factory, RELAY)
    assert not ever_high(factory, GREEN)


def test_manual_check_beep_is_long_and_retry_beep_is_short(gate: GpioGate, factory: MockFactory) -> None:
    def beep_length(decision: Decision, action: GateAction) -> float:
        before = len(changes(gate, BUZZER))
        gate.execute(command(action, decision), time.monotonic())
        assert wait_until(lambda: len(changes(gate, BUZZER)) == before + 2, timeout=2.0 + SLACK_S)
        (t_on, _), (t_off, _) = changes(gate, BUZZER)[before:]
        return t_off - t_on

    long_beep = beep_length(Decision.MANUAL_CHECK, GateAction.HOLD)
    short_beep = beep_length(Decision.RETRY, GateAction.RETRY)
    assert long_beep >= LONG_BEEP_S - 0.005
    assert SHORT_BEEP_S - 0.005 <= short_beep < long_beep


def test_alarm_sounds_for_alarm_s_with_red_and_no_relay(gate: GpioGate, factory: MockFactory) -> None:
    start = time.monotonic()
    assert gate.execute(command(GateAction.ALARM, Decision.DENY_FEVER), start).executed
    assert levels(factory)[RED] and levels(factory)[BUZZER]
    assert wait_until(lambda: all_low(factory) and len(changes(gate, RED)) == 2, timeout=ALARM_S + SHOW_S + SLACK_S)
    buzzer = changes(gate, BUZZER)
    assert [v for _, v in buzzer] == [True, False] * (len(buzzer) // 2)
    assert len(buzzer) >= 4  # a pattern, not a single beep
    assert ALARM_S - 0.005 <= buzzer[-1][0] - start <= ALARM_S + SLACK_S
    assert not ever_high(factory, RELAY)


@pytest.mark.parametrize(("action", "decision"), NOT_OPEN)
def test_nothing_but_open_ever_energises_the_relay(gate: GpioGate, factory: MockFactory, action: GateAction, decision: Decision) -> None:
    gate.execute(command(action, decision), time.monotonic())
    assert wait_until(lambda: all_low(factory) and len(gate.history()) > len(OUTPUTS), timeout=2.0 + SLACK_S)
    time.sleep(0.05)  # no late relay step either: a wait for nothing to happen
    assert [s.state for s in pin(factory, RELAY).states] == [False]
    assert changes(gate, RELAY) == []


def test_domain_mapping_energises_the_relay_for_pass_only(gate: GpioGate, factory: MockFactory) -> None:
    for decision in Decision:
        gate.execute(gate_command_for(f"ev-{decision.value}", decision, time.monotonic(), 5.0), time.monotonic())
        relay_high = levels(factory)[RELAY]
        assert relay_high is (decision is Decision.PASS), decision
        gate.safe_state()


# --------------------------------------------------------------------------- idle, safe state, close


def test_next_command_replaces_the_previous_signal(gate: GpioGate, factory: MockFactory) -> None:
    gate.execute(command(GateAction.ALARM, Decision.DENY_FEVER), time.monotonic())
    gate.execute(command(GateAction.OPEN, Decision.PASS), time.monotonic())
    now = levels(factory)
    assert not now[RED] and now[GREEN] and now[RELAY]
    # a refusal during a release ends the release at once: the next person must not walk through
    gate.execute(command(GateAction.HOLD, Decision.DENY_CODE), time.monotonic())
    now = levels(factory)
    assert not now[RELAY] and not now[GREEN] and now[RED]
    time.sleep(ALARM_S + 0.1)  # the replaced alarm's and release's pending steps do not come back
    assert not levels(factory)[RELAY] and not levels(factory)[GREEN]
    assert [v for _, v in changes(gate, RELAY)] == [True, False]


def test_lights_return_to_idle_after_show_s(gate: GpioGate, factory: MockFactory) -> None:
    start = time.monotonic()
    gate.execute(command(GateAction.RETRY, Decision.RETRY), start)
    assert wait_until(lambda: not levels(factory)[AMBER], timeout=SHOW_S + SLACK_S)
    (_, _), (t_off, _) = changes(gate, AMBER)
    assert t_off - start >= SHOW_S - 0.005


@pytest.mark.parametrize(("action", "decision"), [(GateAction.OPEN, Decision.PASS), (GateAction.ALARM, Decision.DENY_FEVER)])
def test_safe_state_stops_everything_at_once(gate: GpioGate, factory: MockFactory, action: GateAction, decision: Decision) -> None:
    gate.execute(command(action, decision), time.monotonic())
    assert any(levels(factory).values())
    gate.safe_state()
    assert all_low(factory)
    n = len(gate.history())
    time.sleep(max(OPEN_S, ALARM_S, SHOW_S) + 0.1)  # longer than any pattern: nothing cancelled comes back
    assert all_low(factory)
    assert len(gate.history()) == n  # the cancelled pattern left no pending steps
    assert gate.execute(command(GateAction.RETRY, Decision.RETRY), time.monotonic()).executed  # still usable


def test_close_leaves_everything_low_and_later_commands_fault(factory: MockFactory) -> None:
    g = make_gate(factory)
    g.execute(command(GateAction.OPEN, Decision.PASS), time.monotonic())
    g.close()
    assert all_low(factory)
    for out in OUTPUTS:
        assert pin(factory, out).function == "input"  # released back to the pin factory
    result = g.execute(command(GateAction.OPEN, Decision.PASS), time.monotonic())
    assert not result.executed and result.reason.startswith("fault:")
    assert all_low(factory)
    g.safe_state()
    g.close()  # idempotent
    assert g.stats()["sequencer_alive"] is False


# --------------------------------------------------------------------------- hardware faults


class FailingPin(MockPin):  # type: ignore[misc]  # gpiozero ships no type hints
    """A pin whose writes fail with OSError (what a backend reports for a lost line) once armed."""

    fail_on: set[bool]

    def __init__(self, factory: MockFactory, info: Any) -> None:
        super().__init__(factory, info)
        self.fail_on = set()
        self._guard = threading.Lock()

    def _set_state(self, value: bool) -> None:
        with self._guard:
            if bool(value) in self.fail_on:
                raise OSError(f"GPIO{self.info.name} write failed")
        super()._set_state(value)


def failing(factory: MockFactory, output: str) -> FailingPin:
    p = factory.pin(PINS[output], pin_class=FailingPin)
    assert isinstance(p, FailingPin)
    return p


def test_fault_while_starting_returns_a_result_and_keeps_the_relay_off(factory: MockFactory, caplog: pytest.LogCaptureFixture) -> None:
    buzzer = failing(factory, BUZZER)
    g = make_gate(factory)
    try:
        buzzer.fail_on = {True}
        with caplog.at_level(logging.ERROR, logger="station.gate"):
            result = g.execute(command(GateAction.OPEN, Decision.PASS), time.monotonic())
        assert not result.executed
        assert result.reason.startswith("fault: OSError")
        assert "fault" in caplog.text
        assert not ever_high(factory, RELAY)  # the relay is energised last, after the signalling worked
        assert all_low(factory)
        assert g.stats()["faults"] == 1
        buzzer.fail_on = set()
        assert g.execute(command(GateAction.OPEN, Decision.PASS), time.monotonic()).executed  # recovers
    finally:
        g.close()


def test_fault_in_a_timed_step_is_logged_and_the_sequencer_survives(factory: MockFactory, caplog: pytest.LogCaptureFixture) -> None:
    buzzer = failing(factory, BUZZER)
    g = make_gate(factory)
    try:
        buzzer.fail_on = {False}  # switching on works; the end of the beep, on the sequencer, fails
        with caplog.at_level(logging.ERROR, logger="station.gate"):
            assert g.execute(command(GateAction.OPEN, Decision.PASS), time.monotonic()).executed
            assert wait_until(lambda: g.stats()["faults"] >= 1)
            assert wait_until(lambda: not levels(factory)[RELAY])  # forced safe, not left to open_s
        assert "buzzer" in str(g.stats()["last_fault"])
        assert "fault" in caplog.text
        assert changes(g, RELAY)[-1][0] - changes(g, RELAY)[0][0] < OPEN_S  # released early, not late
        buzzer.fail_on = set()
        assert g.execute(command(GateAction.RETRY, Decision.RETRY), time.monotonic()).executed
        assert wait_until(lambda: all_low(factory), timeout=SHOW_S + SLACK_S)
        assert g.stats()["sequencer_alive"] is True
    finally:
        g.close()


def test_line_taken_away_underneath_gives_a_fault_not_an_exception(gate: GpioGate, factory: MockFactory) -> None:
    # Something else reconfigured the relay's line (another process, a driver reset): gpiozero's
    # write now raises (PinSetInput on a mock pin, an lgpio error on a Pi).
    pin(factory, RELAY).function = "input"
    result = gate.execute(command(GateAction.OPEN, Decision.PASS), time.monotonic())
    assert not result.executed and result.reason.startswith("fault: PinSetInput")
    assert not ever_high(factory, RELAY)
    assert all_low(factory)
