"""Errors of the event store."""

from __future__ import annotations


class StoreError(Exception):
    """The event store cannot be used as asked."""


class SchemaTooNewError(StoreError):
    """The database was written by a newer release than this one."""
