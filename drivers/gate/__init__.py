"""Adapter that drives the physical gate: barrier relay, buzzer and signal lights on GPIO (gpiozero)."""
