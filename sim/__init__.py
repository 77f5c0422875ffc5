"""Simulated hardware for the demo, tests and bench: the scene, its camera, thermal emulators, the demo issuer."""
