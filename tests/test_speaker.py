"""The gate's voice: which prompt is said for each decision of a replayed lane, the volume schedule,
the bounded queue that never delays a decision, and the ALSA driver's bytes to aplay."""

from __future__ import annotations

import dataclasses
import io
import stat
import sys
import threading
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from drivers.speaker.alsa import CLIPS_DIR, AlsaSpeaker, clip_path, no_device_reason, scaled_wav
from station.domain.model import Box, CodeColour, GateAction, GateResult
from station.domain.prompts import PROMPTS, Phrase, VolumeSchedule
from station.domain.screening import ScreeningLane, Verdict
from station.domain.thermal import MeasureState
from station.lane.pipeline import Decided
from station.lane.prompting import LanePrompter
from station.lane.voice import LoggedSpeaker, VoiceQueue
from station.ports import Speaker
from tests.support.events import make_event
from tests.support.screening_obs import code, faces, lane, temp
from tests.support.waiting import wait_until

BIG = Box(200, 100, 360, 320)  # 220 px tall: in the zone
NEAR = Box(400, 100, 560, 320)  # as near as BIG: two people side by side


class RecordingSpeaker:
    """A ``Speaker`` that records what it was asked to say; ``hold`` makes each play wait (a slow speaker)."""

    name = "recording"

    def __init__(self, hold: threading.Event | None = None) -> None:
        self.said: list[tuple[str, str, int]] = []
        self.hold = hold
        self.playing = threading.Event()

    def play(self, phrase: Phrase, language: str, volume: int) -> None:
        self.playing.set()
        if self.hold is not None:
            self.hold.wait(10)
        self.said.append((phrase.key, language, volume))


def test_the_fakes_and_the_drivers_are_speakers() -> None:
    assert isinstance(RecordingSpeaker(), Speaker)
    assert isinstance(LoggedSpeaker(), Speaker)
    assert isinstance(AlsaSpeaker(), Speaker)


def decided(v: Verdict, i: int) -> Decided:
    """Return the pipeline's ``Decided`` for a verdict of the domain lane (the event as the executor records it)."""
    event = dataclasses.replace(make_event(i), decision=v.decision, reason=v.reason, alarm=v.alarm)
    return Decided(event, GateResult(event.event_id, GateAction.OPEN, True, "ok", 0.0), 1.0, 1.0)


def standing(ln: ScreeningLane, t0: float, t1: float, *boxes: Box) -> list[Verdict]:
    out = []
    t = t0
    while t <= t1 + 1e-9:
        v = ln.on_faces(faces(round(t, 6), *(boxes or (BIG,))))
        if v is not None:
            out.append(v)
        t += 0.1
    return out


def person(ln: ScreeningLane, t0: float, core: float | None, colour: CodeColour | None, state: str = MeasureState.MEASURED) -> Verdict:
    """Replay one person: walks up, stands, two readings, maybe a code; return the lane's verdict."""
    standing(ln, t0, t0 + 0.4)
    v = ln.on_temperature(temp(t0 + 0.45, core, state)) or ln.on_temperature(temp(t0 + 0.55, core, state))
    if v is None and colour is not None:
        v = ln.on_code(code(t0 + 0.6, colour))
    if v is None:
        out = standing(ln, t0 + 0.6, t0 + 6.0)
        v = out[0] if out else None
    assert v is not None
    standing(ln, t0 + 6.1, t0 + 6.0)  # nothing: the person leaves
    assert ln.tick(t0 + 8.0) is None
    return v


def test_each_decision_of_a_replayed_lane_says_its_prompt() -> None:
    ln = lane()
    speaker = RecordingSpeaker()
    voice = VoiceQueue(speaker, "zh", VolumeSchedule(80), local_time=lambda: (12, 0))
    prompter = LanePrompter(ln.progress, voice=voice)
    voice.start()
    try:
        cases = [
            (36.6, CodeColour.GREEN, MeasureState.MEASURED, "pass", "go_ahead"),
            (38.4, CodeColour.GREEN, MeasureState.MEASURED, "deny_fever", "step_aside_recheck"),
            (36.7, CodeColour.RED, MeasureState.MEASURED, "deny_code", "code_refused"),
            (36.5, CodeColour.YELLOW, MeasureState.MEASURED, "manual_check", "wait_for_staff"),
            (36.8, None, MeasureState.MEASURED, "retry", "show_code"),
            (None, None, MeasureState.SEVERAL_PEOPLE, "retry", "one_at_a_time"),
        ]
        for i, (core, colour, state, decision, key) in enumerate(cases):
            v = person(ln, 20.0 * i, core, colour, state)
            assert v.decision.value == decision, v.reason
            prompter.on_decided(decided(v, i))
            wait_until(voice.idle, 5, f"the prompt for {decision}")
            assert speaker.said[-1] == (key, "zh", 80), (decision, v.reason, speaker.said)
        assert [k for k, _, _ in speaker.said] == [c[4] for c in cases]
    finally:
        voice.stop()


def test_the_next_step_follows_the_lane_and_only_a_request_is_spoken() -> None:
    ln = lane()
    speaker = RecordingSpeaker()
    voice = VoiceQueue(speaker, "en", VolumeSchedule(60), local_time=lambda: (9, 0))
    prompter = LanePrompter(ln.progress, voice=voice, monotonic=lambda: now)
    shown: list[dict[str, object]] = []
    prompter.listeners.append(shown.append)
    voice.start()
    try:
        now = 0.0
        prompter.poll()
        standing(ln, 0.0, 0.4)
        now = 0.4
        prompter.poll()  # screening, no temperature yet: look at the screen (shown only)
        ln.on_temperature(temp(0.45, 36.6))
        ln.on_temperature(temp(0.55, 36.6))
        now = 0.6
        prompter.poll()  # temperature normal, no code: show your code (shown and said)
        assert prompter.poll() is None  # no change: nothing new sent
        wait_until(voice.idle, 5, "the spoken step")
        steps = [(m["state"], m["prompt"]["key"] if isinstance(m["prompt"], dict) else None) for m in shown]
        assert steps == [("idle", "look_at_screen"), ("screening", "look_at_screen"), ("screening", "show_code")]
        assert shown[-1]["prompt"] == {"key": "show_code", "zh": "请出示健康码", "en": "Show your health code"}
        assert speaker.said == [("show_code", "en", 60)]
    finally:
        voice.stop()


def test_two_people_side_by_side_are_told_one_at_a_time() -> None:
    ln = lane()
    speaker = RecordingSpeaker()
    voice = VoiceQueue(speaker, "zh", VolumeSchedule(80), local_time=lambda: (12, 0))
    prompter = LanePrompter(ln.progress, voice=voice, monotonic=lambda: 1.0)
    voice.start()
    try:
        standing(ln, 0.0, 0.4, BIG, NEAR)
        ln.on_temperature(temp(0.45, None, MeasureState.SEVERAL_PEOPLE))
        msg = prompter.poll()
        assert msg is not None and msg["prompt"]["key"] == "one_at_a_time" and msg["prompt"]["zh"] == "请逐一通过"
        wait_until(voice.idle, 5, "the spoken step")
        assert speaker.said == [("one_at_a_time", "zh", 80)]
    finally:
        voice.stop()


def test_quiet_hours_pick_the_quiet_volume() -> None:
    clock = {"hm": (23, 15)}
    speaker = RecordingSpeaker()
    voice = VoiceQueue(speaker, "zh", VolumeSchedule.parse(85, "22:00-07:00", 25), local_time=lambda: clock["hm"])
    voice.start()
    try:
        voice.say(PROMPTS["go_ahead"])
        wait_until(voice.idle, 5, "the night prompt")
        clock["hm"] = (7, 0)
        voice.say(PROMPTS["go_ahead"])
        wait_until(voice.idle, 5, "the morning prompt")
        assert speaker.said == [("go_ahead", "zh", 25), ("go_ahead", "zh", 85)]
        assert voice.stats()["volume"] == 85
    finally:
        voice.stop()


def test_a_slow_speaker_never_delays_a_decision_and_keeps_only_the_newest() -> None:
    hold = threading.Event()
    speaker = RecordingSpeaker(hold)
    voice = VoiceQueue(speaker, "zh", VolumeSchedule(80), local_time=lambda: (12, 0))
    prompter = LanePrompter(lambda now: ln.progress(now), voice=voice)
    ln = lane()
    voice.start()
    try:
        verdicts = [person(ln, 20.0 * i, core, colour) for i, (core, colour) in enumerate([(36.6, CodeColour.GREEN), (38.5, None)] * 3)]
        first = decided(verdicts[0], 0)
        prompter.on_decided(first)
        wait_until(speaker.playing.is_set, 5, "the speaker to start (and block)")
        took = []
        for i, v in enumerate(verdicts[1:], start=1):
            t0 = time.perf_counter()
            prompter.on_decided(decided(v, i))  # the gate's executor thread calls this
            took.append(time.perf_counter() - t0)
        # The speaker is stuck in its first clip, yet every decision listener call returned at once.
        assert max(took) < 0.05, took
        assert voice.stats()["pending"] == 2 and voice.dropped == 3
        hold.set()
        wait_until(voice.idle, 5, "the queue to drain")
        # Said: the first (already playing), then the two newest; the three between were dropped.
        assert [k for k, _, _ in speaker.said] == ["go_ahead", "go_ahead", "step_aside_recheck"]
    finally:
        hold.set()
        voice.stop()


def test_a_failing_speaker_is_counted_and_the_queue_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        name = "broken"

        def play(self, phrase: Phrase, language: str, volume: int) -> None:
            raise OSError("device gone")

    voice = VoiceQueue(Broken(), "zh", VolumeSchedule(80), local_time=lambda: (12, 0))
    voice.start()
    try:
        voice.say(PROMPTS["show_code"])
        voice.say(PROMPTS["go_ahead"])
        wait_until(lambda: voice.failed == 2, 5, "both failures counted")
        assert voice.said == 0
    finally:
        voice.stop()
    assert "device gone" in caplog.text


def test_every_prompt_said_is_one_key_value_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="station.voice")
    voice = VoiceQueue(LoggedSpeaker(), "zh", VolumeSchedule(80), local_time=lambda: (12, 0))
    voice.start()
    try:
        voice.say(PROMPTS["step_aside_recheck"], about="ev-1")
        wait_until(voice.idle, 5, "the logged prompt")
    finally:
        voice.stop()
    (rec,) = [r for r in caplog.records if r.getMessage() == "voice prompt said"]
    assert rec.voice == {  # type: ignore[attr-defined]
        "key": "step_aside_recheck",
        "language": "zh",
        "output": "log",
        "event_id": "ev-1",
        "volume": 80,
        "text": "体温异常，请到旁边复测",
    }


# -- the ALSA driver -------------------------------------------------------------------------------


def fake_aplay(tmp_path: Path, exit_code: int = 0) -> tuple[str, Path]:
    """Write an aplay stand-in that saves its arguments and the WAV it is given; return its path and the output dir."""
    out = tmp_path / "played"
    out.mkdir()
    script = tmp_path / "aplay"
    script.write_text(
        f"#!{sys.executable}\n"
        "import sys, pathlib\n"
        f"out = pathlib.Path({str(out)!r})\n"
        "n = len(list(out.glob('*.wav')))\n"
        "(out / f'{n}.wav').write_bytes(sys.stdin.buffer.read())\n"
        "(out / f'{n}.args').write_text(' '.join(sys.argv[1:]))\n"
        f"sys.stderr.write('aplay: main:831: audio open error: No such file or directory\\n' if {exit_code} else '')\n"
        f"sys.exit({exit_code})\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script), out


def samples_of(wav_bytes: bytes) -> tuple[np.ndarray, int]:
    with wave.open(io.BytesIO(wav_bytes), "rb") as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2"), w.getframerate()


def test_alsa_speaker_pipes_the_clip_scaled_to_the_volume_to_aplay(tmp_path: Path) -> None:
    player, out = fake_aplay(tmp_path)
    speaker = AlsaSpeaker("plughw:1,0", command=(player,))
    speaker.play(PROMPTS["show_code"], "zh", 100)
    speaker.play(PROMPTS["show_code"], "zh", 50)
    assert (out / "0.args").read_text() == "-q -D plughw:1,0 -t wav -"
    with wave.open(str(clip_path(CLIPS_DIR, "show_code", "zh")), "rb") as w:
        original = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    loud, rate = samples_of((out / "0.wav").read_bytes())
    quiet, _ = samples_of((out / "1.wav").read_bytes())
    assert 8000 <= rate <= 16000
    assert np.array_equal(loud, original)  # 100 %: the clip as recorded
    peak = np.abs(original.astype(np.int32)).max()
    assert abs(np.abs(quiet.astype(np.int32)).max() - peak * 0.25) <= 1  # 50 % → a quarter of the amplitude


def test_alsa_speaker_reports_a_failing_device_and_a_missing_clip(tmp_path: Path) -> None:
    player, _ = fake_aplay(tmp_path, exit_code=1)
    with pytest.raises(OSError, match="audio open error"):
        AlsaSpeaker("hw:9", command=(player,)).play(PROMPTS["go_ahead"], "en", 80)
    with pytest.raises(OSError):
        AlsaSpeaker(clips_dir=tmp_path / "none", command=(player,)).play(PROMPTS["go_ahead"], "en", 80)


def test_a_malformed_clip_is_refused_not_played(tmp_path: Path) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    with pytest.raises(ValueError):
        scaled_wav(bad, 80)
    eight_bit = tmp_path / "8bit.wav"
    with wave.open(str(eight_bit), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(8000)
        w.writeframes(bytes(800))
    with pytest.raises(ValueError, match="16-bit"):
        scaled_wav(eight_bit, 80)


def test_no_device_reason_names_what_is_missing(tmp_path: Path) -> None:
    assert "not found" in (no_device_reason("no-such-player-here") or "")
    assert "missing" in (no_device_reason("sh", tmp_path / "cards") or "")
    none = tmp_path / "none"
    none.write_text("--- no soundcards ---\n")
    assert "lists none" in (no_device_reason("sh", none) or "")
    card = tmp_path / "card"
    card.write_text(" 0 [Headphones     ]: bcm2835_headpho - bcm2835 Headphones\n")
    assert no_device_reason("sh", card) is None
