"""Make the prompt clips offline, once: ``python -m drivers.speaker.make_clips [--out DIR]``.

Each prompt of ``station.domain.prompts.PROMPTS`` is spoken by Debian's ``espeak-ng`` (voice
``cmn`` for Chinese, ``en-gb`` for English; no network), resampled to 12 kHz mono 16-bit and
written to ``<out>/<language>/<key>.wav``, with ``manifest.json`` recording the text each clip says
(the tests fail when a phrase changes and its clip was not made again). The clips are committed:
the box plays them and needs no synthesiser. Re-run after changing a phrase; see
``station/assets/voice/ATTRIBUTION.md`` for the licence note.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

from drivers.speaker.alsa import CLIPS_DIR
from station.domain.prompts import LANGUAGES, PROMPTS

VOICES = {"zh": "cmn", "en": "en-gb"}
RATE = 12000
SPEED_WPM = {"zh": 210, "en": 160}


def synthesise(text: str, language: str) -> tuple[np.ndarray, int]:
    """Return espeak-ng's samples (int16) and rate for ``text`` in ``language``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.wav"
        subprocess.run(
            ["espeak-ng", "-v", VOICES[language], "-s", str(SPEED_WPM[language]), "-w", str(path), text], check=True, capture_output=True
        )
        with wave.open(str(path), "rb") as w:
            rate = w.getframerate()
            samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
            if w.getnchannels() > 1:
                samples = samples.reshape(-1, w.getnchannels()).mean(axis=1).astype(np.int16)
    return samples, rate


def resample(samples: np.ndarray, rate: int, to_rate: int = RATE) -> np.ndarray:
    """Return ``samples`` at ``to_rate``: a moving-average low-pass, then linear interpolation."""
    x = samples.astype(np.float64)
    if to_rate < rate:
        width = max(1, round(rate / to_rate))
        x = np.convolve(x, np.ones(width) / width, mode="same")
    n = round(len(x) * to_rate / rate)
    t = np.linspace(0.0, len(x) - 1, n)
    return np.clip(np.interp(t, np.arange(len(x)), x), -32768, 32767).astype("<i2")


def trim(samples: np.ndarray, rate: int, pad_s: float = 0.05) -> np.ndarray:
    """Return ``samples`` without the silence before and after the speech (``pad_s`` kept)."""
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > 300)
    if loud.size == 0:
        return samples
    pad = int(pad_s * rate)
    return samples[max(0, loud[0] - pad) : loud[-1] + pad]


def main() -> None:
    """Write every clip and the manifest."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=CLIPS_DIR)
    args = parser.parse_args()
    version = subprocess.run(["espeak-ng", "--version"], check=True, capture_output=True, text=True).stdout.strip()
    manifest: dict[str, object] = {"synthesiser": version, "rate_hz": RATE, "voices": VOICES, "clips": {}}
    clips: dict[str, dict[str, str]] = {}
    for language in LANGUAGES:
        (args.out / language).mkdir(parents=True, exist_ok=True)
        clips[language] = {}
        for key, phrase in sorted(PROMPTS.items()):
            text = phrase.text(language)
            samples, rate = synthesise(text, language)
            out = trim(resample(samples, rate), RATE)
            with wave.open(str(args.out / language / f"{key}.wav"), "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(RATE)
                w.writeframes(out.tobytes())
            clips[language][key] = text
            print(f"{language}/{key}.wav {len(out) / RATE:.2f} s  {text}")
    manifest["clips"] = clips
    (args.out / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
