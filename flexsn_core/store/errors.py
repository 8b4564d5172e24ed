"""Errors of the artifact stores."""

from __future__ import annotations

__all__ = ["StoreError", "CorruptEntry"]


class StoreError(RuntimeError):
    """The store cannot be reached or is inconsistent (the service answers 503)."""


class CorruptEntry(StoreError):
    """One stored value is damaged (the rest of the store is fine); it is dropped and reads as absent."""
