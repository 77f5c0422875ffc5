"""One-way temperature mode (``screening.temperature_on = "entry"``): a person tracked as exiting
is decided on the health code alone; everyone else is screened as before."""

from __future__ import annotations

import pytest

from station.domain.direction import LaneGeometry
from station.domain.model import Box, CodeColour, Decision
from station.domain.screening import NOT_SCREENED_EXIT, ScreeningSettings, temperature_required
from tests.support.screening_obs import SETTINGS, code, faces, lane, temp


@pytest.mark.parametrize(
    ("temperature_on", "direction", "required"),
    [
        ("both", None, True),
        ("both", "entry", True),
        ("both", "exit", True),
        ("entry", None, True),  # direction not known yet: screened (a missed fever is the worse error)
        ("entry", "entry", True),
        ("entry", "exit", False),
    ],
)
def test_temperature_required_table(temperature_on: str, direction: str | None, required: bool) -> None:
    assert temperature_required(temperature_on, direction) is required


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="temperature_on"):
        temperature_required("exit", "exit")


def walk(ln, heights: list[float], t0: float = 0.0) -> float:  # type: ignore[no-untyped-def]
    """One person walking (face height per 0.1 s frame) at the centre of the frame; returns the last t."""
    t = t0
    for i, h in enumerate(heights):
        t = t0 + i * 0.1
        assert ln.on_faces(faces(t, Box(320 - h * 0.4, 240 - h / 2, 320 + h * 0.4, 240 + h / 2))) is None
    return t


AWAY = [300 - 12 * i for i in range(10)]  # 300 → 192 px: shrinking by 36 %, an exit (size geometry)
TOWARDS = [150 + 10 * i for i in range(10)]  # 150 → 240 px: an entry


def one_way_lane(mode: str):  # type: ignore[no-untyped-def]
    from dataclasses import replace

    ln = lane(settings=replace(SETTINGS, temperature_on=mode, face_stable_s=0.0))
    ln.directions.geometry = LaneGeometry(by="size", entry="increasing", min_travel=0.25)
    return ln


def test_exiting_person_in_entry_mode_is_decided_on_the_code_alone() -> None:
    ln = one_way_lane("entry")
    t = walk(ln, AWAY)
    v = ln.on_code(code(t + 0.05, CodeColour.GREEN))
    assert v is not None and v.decision is Decision.PASS
    assert v.temperature["state"] == NOT_SCREENED_EXIT and v.temperature_c is None
    assert v.reason == f"ok;temperature:{NOT_SCREENED_EXIT}" and v.face["direction"] == "exit"
    # The code still decides: a red code leaving is still denied (a new person, later).
    ln2 = one_way_lane("entry")
    t = walk(ln2, AWAY)
    v2 = ln2.on_code(code(t + 0.05, CodeColour.RED))
    assert v2 is not None and v2.decision is Decision.DENY_CODE and v2.temperature["state"] == NOT_SCREENED_EXIT


def test_entering_person_and_both_mode_still_wait_for_a_temperature() -> None:
    for mode, heights in (("entry", TOWARDS), ("both", AWAY)):
        ln = one_way_lane(mode)
        t = walk(ln, heights)
        assert ln.on_code(code(t + 0.05, CodeColour.GREEN)) is None, mode  # no temperature yet: no decision
        ln.on_temperature(temp(t + 0.1, 36.6))
        v = ln.on_temperature(temp(t + 0.2, 36.7))
        assert v is not None and v.decision is Decision.PASS and v.reason == "ok" and v.temperature["state"] == "measured"


def test_a_fever_measured_before_the_exit_was_known_still_alarms() -> None:
    ln = one_way_lane("entry")
    walk(ln, [300.0] * 3)  # standing at the gate: no direction yet
    ln.on_temperature(temp(0.25, 38.4))
    v = ln.on_temperature(temp(0.3, 38.5))
    assert v is not None and v.decision is Decision.DENY_FEVER and v.alarm


def test_config_default_is_both_and_the_value_is_checked() -> None:
    from station.config import StationConfig

    assert StationConfig().screening.temperature_on == "both" == ScreeningSettings().temperature_on
    assert StationConfig.model_validate({"screening": {"temperature_on": "entry"}}).screening.temperature_on == "entry"
    with pytest.raises(ValueError):
        StationConfig.model_validate({"screening": {"temperature_on": "exit"}})


def temperature_only_lane():  # type: ignore[no-untyped-def]
    from dataclasses import replace

    return lane(settings=replace(SETTINGS, code_required=False, face_stable_s=0.0))


def test_temperature_only_lane_passes_a_normal_reading_without_waiting_for_a_code() -> None:
    ln = temperature_only_lane()
    t = walk(ln, TOWARDS)
    ln.on_temperature(temp(t + 0.1, 36.6))
    v = ln.on_temperature(temp(t + 0.2, 36.7))
    assert v is not None and v.decision is Decision.PASS and v.reason == "temperature_only"
    assert v.stage_t["decision"] - v.stage_t["temperature"] < 1e-9, "no code wait after the reading"


def test_temperature_only_lane_still_denies_a_fever_and_a_red_code_shown_anyway() -> None:
    ln = temperature_only_lane()
    t = walk(ln, TOWARDS)
    ln.on_temperature(temp(t + 0.1, 38.4))
    v = ln.on_temperature(temp(t + 0.2, 38.5))
    assert v is not None and v.decision is Decision.DENY_FEVER and v.alarm
    ln2 = temperature_only_lane()
    t = walk(ln2, TOWARDS)
    assert ln2.on_code(code(t + 0.05, CodeColour.RED)) is None  # no temperature yet
    ln2.on_temperature(temp(t + 0.1, 36.6))
    v2 = ln2.on_temperature(temp(t + 0.2, 36.7))
    assert v2 is not None and v2.decision is Decision.DENY_CODE and v2.reason == "code_red"


def test_code_required_is_the_default_and_a_config_key() -> None:
    from station.config import StationConfig

    assert StationConfig().screening.code_required is True and ScreeningSettings().code_required is True
    assert StationConfig.model_validate({"screening": {"code_required": False}}).screening.code_required is False
