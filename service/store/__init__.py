"""The service's artifact stores: the embedded diskcache implementation of flexsn_core's interface.

The interface (``Store`` = :class:`flexsn_core.store.ArtifactStore`) and its
rules live in flexsn_core, shared with the client's mirror; every
implementation runs ``tests/store_contract.py``. ``open_store("disk:PATH")``
opens the embedded store (one host; several uvicorn workers may share it),
``open_store("redis://HOST:PORT/DB")`` the shared store of several replicas
(``redis_store.py``; imported only when asked for).
"""

from __future__ import annotations

from .base import CorruptEntry, GcReport, ManifestInfo, Store, StoreError, VerifyReport
from .disk import DiskStore

__all__ = ["Store", "DiskStore", "StoreError", "CorruptEntry", "ManifestInfo", "VerifyReport", "GcReport", "open_store", "store_kind"]


def store_kind(url: str) -> str:
    """``"disk"`` or ``"redis"`` for a store URL; ValueError (the message a person reads) otherwise."""
    scheme, _, rest = url.partition(":")
    if scheme == "disk" and rest:
        return "disk"
    if scheme in ("redis", "rediss") and rest.startswith("//"):
        return "redis"
    raise ValueError(f"store URL must look like 'disk:PATH' or 'redis://HOST:PORT/DB', got {url!r}")


def open_store(url: str) -> Store:
    """Open a store from its URL: ``disk:PATH``, or ``redis://HOST:PORT/DB[?prefix=NAME]`` (also rediss://)."""
    if store_kind(url) == "disk":
        return DiskStore(url.partition(":")[2])
    from .redis_store import RedisStore

    return RedisStore(url)
