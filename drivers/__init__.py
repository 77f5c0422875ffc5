"""Adapters for real devices and services: thermal modules, cameras, code readers, detectors, the gate, MQTT."""
