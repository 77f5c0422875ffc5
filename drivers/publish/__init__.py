"""Adapter that moves outbox messages to an MQTT broker (paho-mqtt)."""
