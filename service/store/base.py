"""The store interface lives in flexsn_core (:mod:`flexsn_core.store`), shared with the client's mirror.

``Store`` is :class:`flexsn_core.store.ArtifactStore`; this module keeps the
names the service imported from here before the interface moved.
"""

from __future__ import annotations

from flexsn_core.store import ArtifactStore, CorruptEntry, GcReport, ManifestInfo, StoreError, VerifyReport
from flexsn_core.store.envelope import parse_manifest_text

#: the service's name of the interface
Store = ArtifactStore

__all__ = ["Store", "ManifestInfo", "VerifyReport", "GcReport", "StoreError", "CorruptEntry", "parse_manifest_text"]
