"""Listing, size accounting, eviction and verification, over any :class:`ArtifactStore`.

Written once against the store's primitives, so every implementation lists,
counts, evicts and verifies the same way (``ArtifactStore.list``, ``.stats``,
``.gc``, ``.verify`` call these).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import ArtifactError
from ..manifest import referenced_blobs, targets_of
from .envelope import parse_manifest_text
from .errors import CorruptEntry

if TYPE_CHECKING:
    from .base import ArtifactStore

__all__ = ["ManifestInfo", "VerifyReport", "GcReport", "info", "list_page", "stats", "delete_kernel",
           "delete_orphans", "gc", "verify"]

logger = logging.getLogger("flexsn_core.store")


@dataclass(frozen=True)
class ManifestInfo:
    key: str
    entry: str
    dtype: str
    targets: tuple[str, ...]
    bytes: int
    created: float
    last_access: float


@dataclass
class VerifyReport:
    blobs_checked: int = 0
    manifests_checked: int = 0
    corrupt_blobs: list[str] = field(default_factory=list)
    unreadable_manifests: list[str] = field(default_factory=list)
    missing_blobs: dict[str, list[str]] = field(default_factory=dict)  # manifest key -> shas
    repaired: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.corrupt_blobs or self.unreadable_manifests or self.missing_blobs)


@dataclass
class GcReport:
    bytes_before: int = 0
    bytes_after: int = 0
    evicted_manifests: list[str] = field(default_factory=list)
    deleted_blobs: int = 0


def info(store: ArtifactStore, key: str) -> ManifestInfo | None:
    manifest = store.get_manifest(key)
    if manifest is None:
        return None
    meta = store._safe_meta(key) or {}
    return ManifestInfo(
        key=key,
        entry=manifest["spec"]["entry"],
        dtype=manifest["spec"]["dtype"],
        targets=tuple(sorted(targets_of(manifest))),
        bytes=int(meta.get("bytes", 0)),
        created=float(meta.get("created", 0.0)),
        last_access=float(meta.get("last_access", 0.0)),
    )


def list_page(store: ArtifactStore, *, after: str | None, limit: int) -> tuple[list[ManifestInfo], str | None]:
    """One page of manifests in key order, and the cursor of the next page.

    A manifest that cannot be read is skipped (and logged, and dropped if damaged).
    """
    keys = sorted(k for k in store.iter_manifest_keys() if after is None or k > after)
    page = []
    for key in keys[:limit]:
        try:
            found = info(store, key)
        except (CorruptEntry, ArtifactError, ValueError, TypeError, KeyError) as exc:
            logger.warning("listing skips manifest %s: %s: %s", key, type(exc).__name__, exc)
            continue
        if found is not None:
            page.append(found)
    return page, (keys[limit - 1] if len(keys) > limit else None)


def stats(store: ArtifactStore) -> dict[str, int]:
    return {
        "kernels": sum(1 for _ in store.iter_manifest_keys()),
        "bytes": sum(store.blob_size(sha) or 0 for sha in store.iter_blobs()),
    }


def _referenced(store: ArtifactStore) -> set[str]:
    refs: set[str] = set()
    for key in list(store.iter_manifest_keys()):
        manifest = store.get_manifest(key)
        if manifest is not None:
            refs.update(referenced_blobs(manifest))
    return refs


def delete_orphans(store: ArtifactStore) -> int:
    """Delete every blob no stored manifest references; how many."""
    refs = _referenced(store)
    orphans = [sha for sha in list(store.iter_blobs()) if sha not in refs]
    for sha in orphans:
        store.delete_blob(sha)
    return len(orphans)


def delete_kernel(store: ArtifactStore, key: str) -> bool:
    if not store.delete_manifest(key):
        return False
    delete_orphans(store)
    return True


def gc(store: ArtifactStore, max_bytes: int) -> GcReport:
    """Evict least recently used kernels (manifest + unshared blobs) until bytes <= max_bytes.

    Every manifest is read once (reference counts of the blobs), so evicting k of
    n kernels costs n manifest reads, not k * n: the service's size limit runs
    this after every build once the store is full.
    """
    report = GcReport(bytes_before=stats(store)["bytes"])
    report.deleted_blobs += delete_orphans(store)
    sizes = {sha: store.blob_size(sha) or 0 for sha in store.iter_blobs()}
    total = sum(sizes.values())
    refs: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    for key in list(store.iter_manifest_keys()):
        manifest = store.get_manifest(key)
        if manifest is not None:
            refs[key] = sorted(set(referenced_blobs(manifest)))
            for sha in refs[key]:
                counts[sha] = counts.get(sha, 0) + 1
    by_age = sorted(((store._safe_meta(key) or {}).get("last_access", 0.0), key) for key in refs)
    for _, key in by_age:
        if total <= max_bytes:
            break
        store.delete_manifest(key)
        report.evicted_manifests.append(key)
        for sha in refs[key]:
            counts[sha] -= 1
            if counts[sha] == 0:
                store.delete_blob(sha)
                report.deleted_blobs += 1
                total -= sizes.pop(sha, 0)
    report.bytes_after = stats(store)["bytes"]
    return report


def verify(store: ArtifactStore, *, repair: bool = False) -> VerifyReport:
    """Re-hash every blob; check every manifest (its digest, JSON, structure) and that its blobs exist.

    Reports without changing anything, unless ``repair``: then corrupt blobs,
    damaged manifests and the manifests that lose a blob are deleted.
    """
    report = VerifyReport()
    for sha in list(store.iter_blobs()):
        report.blobs_checked += 1
        try:
            data = store._read_blob_bytes(sha)
        except CorruptEntry:
            data = None
        if data is None or hashlib.sha256(data).hexdigest() != sha:
            report.corrupt_blobs.append(sha)
            if repair:
                store.delete_blob(sha)
                report.repaired.append(f"blob {sha}")
    for key in list(store.iter_manifest_keys()):
        report.manifests_checked += 1
        try:
            stored = store._read_manifest_text(key)
            if stored is None:
                continue
            manifest = parse_manifest_text(key, stored)
        except CorruptEntry:
            report.unreadable_manifests.append(key)
            if repair:
                store.delete_manifest(key)
                report.repaired.append(f"manifest {key}")
            continue
        missing = [sha for sha in referenced_blobs(manifest) if not store.has_blob(sha)]
        if missing:
            report.missing_blobs[key] = missing
            if repair:
                store.delete_manifest(key)
                report.repaired.append(f"manifest {key}")
    return report
