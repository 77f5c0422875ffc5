"""Words for the public: every reason the code base records reads as words, every prompt has its clips."""

from __future__ import annotations

import ast
import json
import wave
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from station.domain.model import Decision
from station.domain.prompts import (
    DECISION_WORDS,
    GENERIC_WORDS,
    LANGUAGES,
    PROMPTS,
    REASON_WORDS,
    LaneProgress,
    Phrase,
    VolumeSchedule,
    decision_prompt,
    next_step,
    reason_words,
    split_reason,
    spoken,
)
from station.domain.thermal import MeasureState

ROOT = Path(__file__).resolve().parents[1]
CLIPS = ROOT / "station" / "assets" / "voice"


def _string_constants(trees: list[ast.Module]) -> dict[str, str]:
    """Return the module-level ``NAME = "text"`` constants of the station (a reason may be named, not spelled)."""
    out: dict[str, str] = {}
    for tree in trees:
        for node in tree.body:
            if isinstance(node, ast.Assign):
                target, value = node.targets[0], node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                target, value = node.target, node.value
            else:
                continue
            if isinstance(target, ast.Name) and isinstance(value, ast.Constant) and isinstance(value.value, str):
                out[target.id] = value.value
    return out


def _literal_reason(node: ast.expr, constants: dict[str, str]) -> str | None:
    """Return a reason argument's text: a literal, a named constant, or an f-string's known start (``"code_expired:"``)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return constants.get(node.id)
    if isinstance(node, ast.JoinedStr):
        text = ""
        for part in node.values:
            if isinstance(part, ast.Constant):
                text += str(part.value)
            elif isinstance(part, ast.FormattedValue) and isinstance(part.value, ast.Name) and part.value.id in constants:
                text += constants[part.value.id]
            else:
                break
        return text or None
    return None


def recorded_reasons() -> set[str]:
    """Return every reason the station's code can record: the reason argument of each decide call anywhere in station/.

    ``_decide(decision, reason, …)`` (the lane's one way to a verdict) and any ``Verdict(…, reason=…)`` or
    ``ScreeningEvent(…, reason=…)`` built elsewhere: a new decision source with a new reason is found here.
    """
    trees = [ast.parse(path.read_text(encoding="utf-8")) for path in sorted((ROOT / "station").rglob("*.py"))]
    constants = _string_constants(trees)
    found: set[str] = set()
    for tree in trees:
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            candidates: list[ast.expr] = []
            if name in ("_decide", "decide") and len(node.args) >= 2:
                candidates.append(node.args[1])
            if name in ("_decide", "decide", "Verdict", "ScreeningEvent"):
                candidates += [kw.value for kw in node.keywords if kw.arg == "reason"]
            for c in candidates:
                text = _literal_reason(c, constants)
                if text is not None:
                    found.add(text)
    return found


@pytest.mark.slow  # about a second: kept out of the fast loop
def test_the_scan_finds_the_lanes_reasons() -> None:
    # The scan itself must see what the lane records, or the test below would pass on nothing.
    reasons = {split_reason(r)[0] for r in recorded_reasons()}
    assert {"ok", "fever", "no_code", "code_red", "code_expired", "no_valid_temperature", "left_before_decision"} <= reasons, reasons


@pytest.mark.slow  # about a second: kept out of the fast loop
def test_every_reason_the_code_base_records_has_words_of_its_own() -> None:
    missing = []
    for reason in sorted(recorded_reasons()):
        head, detail = split_reason(reason)
        if head not in REASON_WORDS and f"{head}:{detail}" not in REASON_WORDS:
            missing.append(reason)
    assert not missing, f"reasons without words in station/domain/prompts.py REASON_WORDS: {missing}"


def test_every_phrase_has_both_languages() -> None:
    for table in (PROMPTS, REASON_WORDS, DECISION_WORDS):
        for key, phrase in table.items():
            assert phrase.key == key
            assert phrase.zh.strip() and phrase.en.strip(), key
            assert not phrase.zh.isascii(), f"{key}: zh is not Chinese"
            assert phrase.en.isascii(), f"{key}: en is not English"


@pytest.mark.parametrize(
    ("reason", "decision", "zh", "en"),
    [
        ("no_code", "retry", "请出示健康码", "Show your health code"),
        ("fever", "deny_fever", "体温异常", "Temperature high"),
        ("code_red", "deny_code", "健康码为红码", "Red health code"),
        ("code_expired:exp_past", "deny_code", "健康码已过期", "Health code expired"),
        ("code_unverifiable:replay", "manual_check", "此健康码已被使用", "This code was already used"),
        ("code_unverifiable:issuer_unknown", "manual_check", "健康码无法核验", "Health code cannot be verified"),
        ("no_valid_temperature:several_people", "retry", "请逐一通过", "One at a time please"),
        ("no_valid_temperature:no_thermal_frame", "retry", "未测到体温，请看屏幕", "No temperature reading, look at the screen"),
        ("code_red;temperature:not_screened_exit", "deny_code", "健康码为红码", "Red health code"),
        ("staff:paper_certificate", "pass", "工作人员已核验纸质证明", "Paper certificate checked by staff"),
        ("a_reason_from_the_future:x", "deny_code", "健康码异常", "Health code not accepted"),
        ("", "no_such_decision", GENERIC_WORDS.zh, GENERIC_WORDS.en),
    ],
)
def test_reason_words(reason: str, decision: str, zh: str, en: str) -> None:
    w = reason_words(reason, decision)
    assert (w.zh, w.en) == (zh, en)
    assert w.text("zh") == zh and w.text("en") == en


@pytest.mark.parametrize(
    ("decision", "reason", "id_reader", "key"),
    [
        ("pass", "ok", False, "go_ahead"),
        ("pass", "ok;temperature:not_screened_exit", False, "go_ahead_plain"),
        ("pass", "staff:id_checked", False, "go_ahead"),
        ("deny_fever", "fever", False, "step_aside_recheck"),
        ("manual_check", "fever_soft_policy", False, "step_aside_recheck"),
        ("deny_code", "code_red", False, "code_refused"),
        ("deny_code", "code_expired:exp_past", False, "code_refused"),
        ("manual_check", "code_yellow", False, "wait_for_staff"),
        ("manual_check", "sensor_fault", False, "wait_for_staff"),
        ("retry", "no_code", False, "show_code"),
        ("retry", "no_code", True, "show_code_or_id"),
        ("retry", "no_valid_temperature:several_people", False, "one_at_a_time"),
        ("retry", "no_valid_temperature:too_far", False, "step_closer"),
        ("retry", "no_valid_temperature:too_close", False, "step_back"),
        ("retry", "no_valid_temperature:cold_roi", False, "look_at_screen"),
        ("retry", "something_new", False, "try_again"),
        ("no_such_decision", "ok", False, "wait_for_staff"),
    ],
)
def test_decision_prompt(decision: str, reason: str, id_reader: bool, key: str) -> None:
    prompt = decision_prompt(decision, reason, id_reader=id_reader)
    assert prompt is not None and prompt.key == key


def test_a_person_who_left_is_told_nothing() -> None:
    assert decision_prompt("retry", "left_before_decision") is None


def test_every_decision_has_a_prompt_and_every_prompt_key_is_a_clip() -> None:
    for d in Decision:
        assert d.value in DECISION_WORDS
        p = decision_prompt(d.value, "")
        assert p is not None and p.key in PROMPTS


@pytest.mark.parametrize(
    ("progress", "id_reader", "key"),
    [
        (LaneProgress("idle"), False, "look_at_screen"),
        (LaneProgress("decided"), False, None),
        (LaneProgress("screening"), False, "look_at_screen"),
        (LaneProgress("screening", measure_state=MeasureState.SEVERAL_PEOPLE), False, "one_at_a_time"),
        (LaneProgress("screening", measure_state=MeasureState.TOO_FAR), False, "step_closer"),
        (LaneProgress("screening", measure_state=MeasureState.TOO_CLOSE), False, "step_back"),
        (LaneProgress("screening", temperature_done=True), False, "show_code"),
        (LaneProgress("screening", temperature_done=True, waited_s=4.0), False, "show_code"),
        (LaneProgress("screening", temperature_done=True, waited_s=1.0), True, "show_code"),
        (LaneProgress("screening", temperature_done=True, waited_s=2.5), True, "show_code_or_id"),
        (LaneProgress("screening", temperature_done=True, invalid_code_shown=True), True, "place_id_card"),
        (LaneProgress("screening", temperature_done=False, code_shown=True), False, "look_at_screen"),
        (LaneProgress("screening", temperature_done=True, waited_s=4.0, code_required=False), True, "look_at_screen"),
    ],
)
def test_next_step_follows_the_lanes_state(progress: LaneProgress, id_reader: bool, key: str | None) -> None:
    step = next_step(progress, id_reader=id_reader)
    assert (step.key if step is not None else None) == key


def test_look_at_the_screen_is_shown_not_spoken() -> None:
    assert not spoken(PROMPTS["look_at_screen"]) and not spoken(None)
    assert spoken(PROMPTS["show_code"]) and spoken(PROMPTS["one_at_a_time"])


@given(st.text(max_size=80), st.one_of(st.none(), st.text(max_size=20), st.sampled_from([d.value for d in Decision])))
def test_words_and_prompts_are_total(reason: str, decision: str | None) -> None:
    assert isinstance(reason_words(reason, decision), Phrase)
    p = decision_prompt(decision or "", reason, id_reader=True)
    assert p is None or p.key in PROMPTS


def test_quiet_hours_pick_the_quiet_volume_across_midnight() -> None:
    s = VolumeSchedule.parse(80, "22:00-07:00", 30)
    assert [s.volume_at(h, m) for h, m in [(21, 59), (22, 0), (23, 30), (0, 0), (6, 59), (7, 0), (12, 0)]] == [80, 30, 30, 30, 30, 80, 80]
    day = VolumeSchedule.parse(70, "12:00-14:00", 10)
    assert [day.volume_at(h, 0) for h in (11, 12, 13, 14)] == [70, 10, 10, 70]
    assert VolumeSchedule.parse(60, "", 5).volume_at(3, 0) == 60


@pytest.mark.parametrize("bad", ["22:00", "25:00-07:00", "22:60-07:00", "2200-0700", "ab:cd-07:00", "22:00-7:0"])
def test_malformed_quiet_hours_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        VolumeSchedule.parse(80, bad, 30)


def test_every_prompt_has_a_small_clip_in_both_languages_saying_its_current_text() -> None:
    manifest = json.loads((CLIPS / "manifest.json").read_text(encoding="utf-8"))
    for language in LANGUAGES:
        for key, phrase in PROMPTS.items():
            # A phrase changed without making its clip again (python -m drivers.speaker.make_clips) fails here.
            assert manifest["clips"][language].get(key) == phrase.text(language), (language, key)
            with wave.open(str(CLIPS / language / f"{key}.wav"), "rb") as w:
                assert (w.getnchannels(), w.getsampwidth()) == (1, 2), (language, key)
                assert 8000 <= w.getframerate() <= 16000, (language, key)
                seconds = w.getnframes() / w.getframerate()
                assert 0.4 <= seconds <= 5.0, (language, key, seconds)
    assert sum(p.stat().st_size for p in CLIPS.rglob("*.wav")) < 2_000_000
