"""The district command centre: every station's events from the broker into PostgreSQL (docs/centre.md)."""
