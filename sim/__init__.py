"""Simulate the station's hardware for the demo, the tests and the bench.

What is here: the demo scene and its director (``scene``), the visible camera that films it
(``scene_camera``), the thermal scene renderer (``thermal_render``), byte-exact emulators of the
thermal modules on a pseudo-terminal (``gy_mcu90640_emulator``, ``htpa_emulator``), the DEMO ONLY
health-code issuer (``issuer``) and the demo's own composition (``demo``).

The rule: production code (``station/``, ``drivers/``) never imports ``sim``. Only the
``station demo`` verb (a lazy import in ``station/cli/station_main.py``), the tests and the bench
do, so an installed station cannot be wired to an emulator by accident.
"""
