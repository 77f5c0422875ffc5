"""The station's link to the centre: outbox pump, commands and their signatures, HA discovery, snapshots."""
