"""Optional Home Assistant MQTT discovery (``mqtt.ha_discovery = true``; ``architecture.md`` §2.4).

The station appears as one device with entities for its availability, the last temperature, the
number of screenings, the last decision's alarm and the outbox alarm. Each entity's config is
published retained on ``<ha_prefix>/<component>/<node_id>/<object_id>/config`` on every connect,
and again whenever Home Assistant announces itself with ``online`` on ``<ha_prefix>/status`` (its
birth message), as HA's documentation asks of well-behaved devices. The entities read the station's
own topics (``status``, ``state/screening``, ``state/outbox``); nothing is published twice.
"""

from __future__ import annotations

import logging
from typing import Any

from station.link.commands import dumps

log = logging.getLogger("station.link.ha")


def discovery_configs(ha_prefix: str, base: str, site: str, station_id: str, version: str) -> dict[str, dict[str, Any]]:
    """Discovery topic → config payload for each entity."""
    node = f"checkpoint_{site}_{station_id}".replace("-", "_")
    device = {
        "identifiers": [node],
        "name": f"Checkpoint {site}/{station_id}",
        "manufacturer": "checkpoint-station",
        "model": "screening gate",
        "sw_version": version,
    }
    availability = {"topic": f"{base}/status", "value_template": "{{ 'online' if value_json.state == 'online' else 'offline' }}"}
    common = {"device": device, "availability": [availability]}
    entities: list[tuple[str, str, dict[str, Any]]] = [
        (
            "binary_sensor",
            "online",
            {
                "name": "Online",
                "state_topic": f"{base}/status",
                "value_template": "{{ 'ON' if value_json.state == 'online' else 'OFF' }}",
                "device_class": "connectivity",
                "availability": [],
            },
        ),
        (
            "sensor",
            "last_temperature",
            {
                "name": "Last temperature",
                "state_topic": f"{base}/state/screening",
                "value_template": "{{ value_json.last_temperature_c }}",
                "unit_of_measurement": "°C",
                "device_class": "temperature",
            },
        ),
        (
            "sensor",
            "screenings",
            {
                "name": "Screenings",
                "state_topic": f"{base}/state/screening",
                "value_template": "{{ value_json.count_total }}",
                "state_class": "total_increasing",
            },
        ),
        (
            "binary_sensor",
            "alarm",
            {
                "name": "Fever alarm",
                "state_topic": f"{base}/state/screening",
                "value_template": "{{ 'ON' if value_json.alarm else 'OFF' }}",
                "device_class": "problem",
            },
        ),
        (
            "binary_sensor",
            "outbox_alarm",
            {
                "name": "Outbox alarm",
                "state_topic": f"{base}/state/outbox",
                "value_template": "{{ 'ON' if value_json.bounds_alarm else 'OFF' }}",
                "device_class": "problem",
            },
        ),
    ]
    out = {}
    for component, object_id, body in entities:
        unique = f"{node}_{object_id}"
        config = dict(common, unique_id=unique, object_id=unique, **body)
        if not config["availability"]:
            del config["availability"]  # the online sensor itself must stay available
        out[f"{ha_prefix}/{component}/{node}/{object_id}/config"] = config
    return out


class HaDiscovery:
    """Publishes the discovery configs through a publisher's ``publish_direct`` (retained)."""

    def __init__(self, publisher: Any, ha_prefix: str, configs: dict[str, dict[str, Any]]) -> None:
        self.publisher = publisher
        self.ha_prefix = ha_prefix
        self.configs = configs
        self.sent = 0

    def announce(self) -> None:
        """Publish every entity's discovery config, retained."""
        ok = sum(1 for topic, cfg in self.configs.items() if self.publisher.publish_direct(topic, dumps(cfg), qos=1, retain=True))
        self.sent += 1
        log.info("home assistant discovery published entities=%d of=%d", ok, len(self.configs))

    def on_ha_status(self, topic: str, payload: bytes) -> None:
        """Announce again when Home Assistant comes online (its birth message)."""
        if payload.strip() == b"online":  # HA's birth message: it may have lost its retained configs
            self.announce()
