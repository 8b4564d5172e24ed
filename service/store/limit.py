"""The store's size limit (``FLEXSN_SERVICE_MAX_BYTES``), enforced continuously.

After every write of a kernel (a build stored) the replica that wrote checks the
store's size; over the limit it evicts least recently used kernels, then their
unreferenced blobs (``ArtifactStore.gc``), down to ``LOW_WATER`` of the limit so
that the next few writes do not each start an eviction (bazel-remote's
``--max_size`` evicts on write the same way). One replica evicts at a time: the
others skip while the ``evict`` lease is held. ``flexsn-cache gc`` stays for manual use.
"""

from __future__ import annotations

import logging

from ..builds.leases import Leases
from .base import GcReport, Store

__all__ = ["SizeLimit", "LOW_WATER"]

logger = logging.getLogger("flexsn_service.store")

#: evict down to this fraction of the limit
LOW_WATER = 0.9


class SizeLimit:
    def __init__(self, store: Store, max_bytes: int, leases: Leases | None = None) -> None:
        if max_bytes <= 0:
            raise ValueError("the size limit must be positive")
        self.store, self.max_bytes, self.leases = store, max_bytes, leases

    def enforce(self) -> GcReport | None:
        """Evict if the store is over the limit; the report, or None if nothing had to go (or another replica evicts)."""
        if self.store.stats()["bytes"] <= self.max_bytes:
            return None
        lease = self.leases.lease("evict") if self.leases is not None else None
        if lease is not None and not lease.try_acquire():
            return None
        try:
            report = self.store.gc(int(self.max_bytes * LOW_WATER))
        finally:
            if lease is not None:
                lease.release()
        logger.info("size limit %d bytes: evicted %d kernel(s) and %d blob(s), %d -> %d bytes", self.max_bytes,
                    len(report.evicted_manifests), report.deleted_blobs, report.bytes_before, report.bytes_after)
        return report
