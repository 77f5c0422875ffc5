"""Play the prompt clips through ALSA with ``aplay``: one short WAV per prompt and language.

The clips (``station/assets/voice/<language>/<key>.wav``, 16-bit mono, made offline by
``python -m drivers.speaker.make_clips``) are read with the standard ``wave`` module, scaled to the
scheduled volume in software (the card's mixer, shared with whatever else the box plays, is left
alone) and piped to ``aplay -q -D <device> -t wav -``. ``play`` blocks until aplay has finished: the
station calls it from its voice thread only (``station.lane.voice.VoiceQueue``).

Without a sound card (``/proc/asound/cards`` lists none) or without ``aplay`` there is nothing to
play on: :func:`no_device_reason` says why, and the station logs its prompts instead (a degraded
``speaker`` module).
"""

from __future__ import annotations

import io
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np

from station.domain.prompts import Phrase

CLIPS_DIR = Path(__file__).resolve().parents[2] / "station" / "assets" / "voice"
CARDS = Path("/proc/asound/cards")
PLAY_MARGIN_S = 5.0  # aplay gets the clip's length plus this before it is killed (a wedged device)


def no_device_reason(player: str = "aplay", cards: Path = CARDS) -> str | None:
    """Return why no clip can be played here (no aplay, no sound card), or None when it can."""
    if shutil.which(player) is None:
        return f"{player} not found (Debian package alsa-utils)"
    try:
        listing = cards.read_text(errors="replace")
    except OSError:
        return f"no sound card ({cards} missing)"
    if not listing.strip() or "no soundcards" in listing:
        return f"no sound card ({cards} lists none)"
    return None


def clip_path(clips_dir: Path, key: str, language: str) -> Path:
    """Return where the clip of prompt ``key`` in ``language`` lives."""
    return clips_dir / language / f"{key}.wav"


def scaled_wav(path: Path, volume: int) -> tuple[bytes, float]:
    """Return the 16-bit mono clip at ``path`` scaled to ``volume`` percent, as WAV bytes, and its length in seconds.

    Raise ``OSError`` for a missing clip and ``ValueError`` for one that is not 16-bit PCM.
    """
    try:
        with wave.open(str(path), "rb") as w:
            params = w.getparams()
            frames = w.readframes(params.nframes)
    except wave.Error as exc:
        raise ValueError(f"{path}: not a WAV clip: {exc}") from exc
    except EOFError as exc:
        raise ValueError(f"{path}: truncated WAV clip") from exc
    if params.sampwidth != 2:
        raise ValueError(f"{path}: {8 * params.sampwidth}-bit samples; clips are 16-bit PCM")
    # Loudness is heard roughly logarithmically: squaring the fraction spreads 0-100 % more evenly.
    gain = (max(0, min(100, volume)) / 100.0) ** 2
    samples = np.frombuffer(frames, dtype="<i2").astype(np.float32) * gain
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(params.nchannels)
        w.setsampwidth(2)
        w.setframerate(params.framerate)
        w.writeframes(np.clip(samples, -32768, 32767).astype("<i2").tobytes())
    return out.getvalue(), params.nframes / float(params.framerate or 1)


class AlsaSpeaker:
    """A ``station.ports.Speaker`` that plays the prompt clips on an ALSA device with ``aplay``."""

    def __init__(self, device: str = "default", clips_dir: Path = CLIPS_DIR, command: tuple[str, ...] = ("aplay",)) -> None:
        """Play on ALSA PCM ``device`` (``aplay -L`` lists them) from ``clips_dir``; ``command`` is the player."""
        self.device = device
        self.clips_dir = clips_dir
        self.command = command
        self.name = f"alsa:{device}"

    def play(self, phrase: Phrase, language: str, volume: int) -> None:
        """Play the clip of ``phrase`` in ``language`` at ``volume`` percent; return once aplay has finished.

        Raise ``OSError`` when the clip is missing or aplay fails, ``ValueError`` for a malformed clip.
        """
        data, seconds = scaled_wav(clip_path(self.clips_dir, phrase.key, language), volume)
        try:
            proc = subprocess.run(
                [*self.command, "-q", "-D", self.device, "-t", "wav", "-"],
                input=data,
                capture_output=True,
                timeout=seconds + PLAY_MARGIN_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise OSError(f"{self.command[0]} did not finish playing {phrase.key} on {self.device}") from exc
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip().splitlines()
            raise OSError(f"{self.command[0]} exit {proc.returncode} on {self.device}: {err[-1] if err else 'no message'}")
