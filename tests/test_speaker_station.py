"""The voice in the running station: the demo says (or, without a sound card, logs) each decision's
prompt; a box without a sound card names the degraded speaker; ``stationctl test speaker`` reports."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from drivers.speaker.alsa import no_device_reason
from station.domain.prompts import decision_prompt
from tests.support.demo import DemoRunResult

ROOT = Path(__file__).resolve().parents[1]
VOICE_LINE = re.compile(r"station\.voice voice prompt (said|dropped) (.*)$")


def voice_lines(stderr: str) -> list[dict[str, str]]:
    """Return the voice log lines of a run as dicts of their ``voice.*`` fields (plus ``what``: said or dropped)."""
    out = []
    for line in stderr.splitlines():
        m = VOICE_LINE.search(line)
        if m is None:
            continue
        fields = dict(re.findall(r'voice\.(\w+)=("(?:[^"\\]|\\.)*"|\S+)', m.group(2)))
        out.append({k: json.loads(v) if v.startswith('"') else v for k, v in fields.items()} | {"what": m.group(1)})
    return out


@pytest.mark.slow
def test_the_demo_says_or_logs_the_prompt_of_each_decision(demo_run: DemoRunResult) -> None:
    assert demo_run.returncode == 0, demo_run.stderr[-2000:]
    lines = voice_lines(demo_run.stderr)
    by_event = {line["event_id"]: line for line in lines if "event_id" in line}
    checked = 0
    for d in demo_run.decisions:
        prompt = decision_prompt(d["decision"], d["reason"])
        if prompt is None:  # the person left before a decision: nobody to tell
            assert d["event_id"] not in by_event
            continue
        line = by_event.get(d["event_id"])
        assert line is not None, (d, lines)
        assert line["key"] == prompt.key and line["language"] == "zh", (d, line)
        if line["what"] == "said":
            assert line["text"] == prompt.zh
        checked += 1
    assert checked >= 6, demo_run.decisions  # pass, fever, red, yellow, no code, expired, payment QR …
    keys = {line["key"] for line in by_event.values()}
    assert {"go_ahead", "step_aside_recheck", "code_refused", "show_code"} <= keys, keys
    if no_device_reason() is not None:
        # No sound card here: the prompts are the log lines above, and the station says it is degraded.
        assert all(line["output"] == "log" for line in lines), lines
        assert "degraded.module=speaker" in demo_run.stderr


@pytest.mark.slow  # two stationctl processes
def test_stationctl_test_speaker_says_why_it_cannot_play_in_one_line(tmp_path: Path) -> None:
    why = no_device_reason()
    if why is None:
        pytest.skip("this machine has a sound card: the test would play through it")
    proc = subprocess.run(
        [sys.executable, "-m", "station.cli.stationctl", "--data-dir", str(tmp_path), "test", "speaker", "--prompt", "show_code"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.splitlines() == [f"speaker: FAIL — no device: {why}; the daemon logs its prompts instead"], proc.stdout
    assert "Traceback" not in proc.stderr
    as_json = subprocess.run(
        [sys.executable, "-m", "station.cli.stationctl", "--data-dir", str(tmp_path), "test", "speaker", "--json", "--language", "en"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    got = json.loads(as_json.stdout)
    assert as_json.returncode == 1 and got["ok"] is False and got["prompt"] == "look_at_screen" and got["text"] == "Look at the screen"


def test_stationctl_test_speaker_refuses_an_unknown_prompt(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "station.cli.stationctl", "--data-dir", str(tmp_path), "test", "speaker", "--prompt", "sing"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 2 and "show_code" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
