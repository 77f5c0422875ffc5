"""``stationctl test speaker``: say one voice prompt on the configured ALSA device, or say why it cannot.

Plays the prompt's clip (``station/assets/voice``) at the volume the ``[voice]`` schedule gives for
now, through the same driver as the daemon (``drivers.speaker.alsa.AlsaSpeaker``). Without aplay or a
sound card it reports that in one line (exit 1): the daemon then logs its prompts instead.
"""

from __future__ import annotations

import time

import click

from station.cli.common import Ctx
from station.cli.test_cmd import _verdict


@click.command("speaker")
@click.option("--prompt", "key", default="look_at_screen", show_default=True, help="Prompt key (station/domain/prompts.py PROMPTS)")
@click.option("--language", type=click.Choice(["zh", "en"]), default=None, help="Default: voice.language")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def test_speaker(obj: Ctx, key: str, language: str | None, as_json: bool) -> None:
    """Say one prompt on the loudspeaker (voice.device) at the scheduled volume."""
    from drivers.speaker.alsa import AlsaSpeaker, no_device_reason
    from station.domain.prompts import PROMPTS, VolumeSchedule
    from station.lane.voice import local_hour_minute

    cfg = obj.load()
    v = cfg.voice
    if key not in PROMPTS:
        raise click.BadParameter(f"{key!r}; one of {', '.join(sorted(PROMPTS))}", param_hint="--prompt")
    lang = language or v.language
    phrase = PROMPTS[key]
    volume = VolumeSchedule.parse(v.volume, v.quiet_hours, v.quiet_volume).volume_at(*local_hour_minute())
    info = {"prompt": key, "language": lang, "volume": volume, "device": v.device, "text": phrase.text(lang)}
    missing = no_device_reason()
    if missing is not None:
        _verdict(obj, "speaker", False, f"no device: {missing}; the daemon logs its prompts instead", as_json, **info)
    speaker = AlsaSpeaker(v.device)
    t0 = time.monotonic()
    try:
        speaker.play(phrase, lang, volume)
    except (OSError, ValueError) as exc:
        _verdict(obj, "speaker", False, str(exc), as_json, **info)
    took = time.monotonic() - t0
    _verdict(
        obj, "speaker", True, f"said {phrase.text(lang)!r} ({key}, {lang}) at {volume} % on {speaker.name} in {took:.1f} s", as_json, **info
    )
