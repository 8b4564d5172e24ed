"""The service's artifact stores: the embedded diskcache implementation of flexsn_core's interface.

The interface (``Store`` = :class:`flexsn_core.store.ArtifactStore`) and its
rules live in flexsn_core, shared with the client's mirror; every
implementation runs ``tests/store_contract.py``. ``open_store("disk:PATH")``
opens the embedded store. ``redis://`` URLs are reserved for the shared store
of several replicas (not implemented yet).
"""

from __future__ import annotations

from .base import CorruptEntry, GcReport, ManifestInfo, Store, StoreError, VerifyReport
from .disk import DiskStore

__all__ = ["Store", "DiskStore", "StoreError", "CorruptEntry", "ManifestInfo", "VerifyReport", "GcReport", "open_store"]


def open_store(url: str) -> Store:
    """Open a store from its URL: ``disk:PATH``."""
    scheme, _, rest = url.partition(":")
    if scheme == "disk" and rest:
        return DiskStore(rest)
    if scheme in ("redis", "rediss"):
        raise NotImplementedError(
            "the Redis store for several replicas is not implemented yet; use disk:PATH"
        )
    raise ValueError(f"store URL must look like 'disk:PATH', got {url!r}")
