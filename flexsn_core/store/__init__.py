"""Artifact stores: one interface, every implementation checked by one contract suite.

    base.py         ArtifactStore: blobs by sha256, manifests by key, blobs before manifests,
                    heal on read, per-key locked read-modify-write (merge, tuning)
    envelope.py     a manifest's stored text: digest line + JSON
    maintenance.py  listing, size accounting, LRU eviction, verification (for every store)
    files.py        FileStore: a plain folder (the client's mirror, local builds)

The service's embedded store (``flexsn_service.store.DiskStore``, diskcache)
implements the same interface; ``tests/store_contract.py`` runs against each.
"""

from __future__ import annotations

from .base import ArtifactStore, sha256_hex
from .errors import CorruptEntry, StoreError
from .files import FileStore
from .maintenance import GcReport, ManifestInfo, VerifyReport

__all__ = ["ArtifactStore", "sha256_hex", "FileStore", "StoreError", "CorruptEntry", "ManifestInfo", "VerifyReport", "GcReport"]
