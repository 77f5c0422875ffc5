"""Thermal camera adapters: the modules' byte protocols and their reconnecting serial sources."""
