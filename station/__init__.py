"""Checkpoint station: screening gate software (thermal, health code, face and plate), its store, link, CLI and web pages."""
