"""Shared test helpers: real parts (a Mosquitto broker, the daemon, the demo) and the one way tests wait.

Test modules import helpers from here, never from each other.
"""
