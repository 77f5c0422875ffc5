"""What the gate does for each decision. The relay is energised for ``pass`` and nothing else."""

from __future__ import annotations

from station.domain.model import Decision, GateAction, GateCommand

ACTION_FOR: dict[Decision, GateAction] = {
    Decision.PASS: GateAction.OPEN,
    Decision.DENY_FEVER: GateAction.ALARM,  # keep closed, sound the alarm, staff do a clinical check
    Decision.DENY_CODE: GateAction.HOLD,
    Decision.RETRY: GateAction.RETRY,
    Decision.MANUAL_CHECK: GateAction.HOLD,  # staff come over; the barrier stays closed meanwhile
}


def gate_command_for(event_id: str, decision: Decision, issued_t: float, ttl_s: float, alarm: bool = False) -> GateCommand:
    """Return the gate command for a decision, valid for ``ttl_s``: a late command must never open the gate.

    An alarm (a fever under the soft policy is ``manual_check`` with an alarm) sounds the alarm
    whatever the decision; it never opens the barrier.
    """
    action = GateAction.ALARM if alarm and decision is not Decision.PASS else ACTION_FOR[decision]
    return GateCommand(event_id, action, decision, issued_t, issued_t + ttl_s)
