"""The gate's loudspeaker: pre-recorded prompt clips played through ALSA (``aplay``)."""
