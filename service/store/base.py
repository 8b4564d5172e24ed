"""The store interface: content-addressed blobs and manifests by spec key.

Rules every implementation keeps:

* a blob is stored under the sha256 of its bytes, checked on the way in;
* a manifest is stored only after every blob it names (blobs first, manifest
  last), so a reader never sees a manifest whose blobs are missing;
* only bytes and JSON text are stored, never pickled objects (a pickle read
  from a shared store is code execution);
* manifests carry an access time for least-recently-used garbage collection.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from flexsn_core.artifacts import referenced_blobs, sha256_hex, validate_manifest
from flexsn_core.errors import ArtifactError, IntegrityError

__all__ = ["Store", "ManifestInfo", "VerifyReport", "GcReport", "StoreError"]


class StoreError(RuntimeError):
    """The store cannot be reached or is inconsistent."""


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


class Store(ABC):
    """Blobs by sha256 and manifests by key."""

    # ------------------------------------------------------------- blobs
    @abstractmethod
    def has_blob(self, sha: str) -> bool: ...

    @abstractmethod
    def blob_size(self, sha: str) -> int | None: ...

    @abstractmethod
    def _write_blob(self, sha: str, data: bytes) -> None: ...

    @abstractmethod
    def read_blob(self, sha: str) -> bytes | None: ...

    @abstractmethod
    def open_blob(self, sha: str) -> BinaryIO | bytes | None:
        """The blob as an open binary file when stored as one (for streaming), else bytes."""

    @abstractmethod
    def delete_blob(self, sha: str) -> None: ...

    @abstractmethod
    def iter_blobs(self) -> Iterator[str]: ...

    # --------------------------------------------------------- manifests
    @abstractmethod
    def _read_manifest_text(self, key: str) -> str | None: ...

    @abstractmethod
    def _write_manifest_text(self, key: str, text: str, meta: dict[str, Any]) -> None: ...

    @abstractmethod
    def _read_meta(self, key: str) -> dict[str, Any] | None: ...

    @abstractmethod
    def _write_meta(self, key: str, meta: dict[str, Any]) -> None: ...

    @abstractmethod
    def delete_manifest(self, key: str) -> bool:
        """Remove a manifest and its metadata (not its blobs); False if absent."""

    @abstractmethod
    def iter_manifest_keys(self) -> Iterator[str]: ...

    @abstractmethod
    def check(self) -> None:
        """Raise StoreError if the store cannot be read and written."""

    def close(self) -> None:  # noqa: B027 - optional
        """Release connections and handles."""

    # ----------------------------------------------------- shared logic
    def put_blob(self, sha: str, data: bytes) -> None:
        if sha256_hex(data) != sha:
            raise IntegrityError(f"refusing blob {sha[:16]}…: its bytes hash to something else")
        if not self.has_blob(sha):
            self._write_blob(sha, data)

    def get_manifest(self, key: str, *, touch: bool = False) -> dict[str, Any] | None:
        text = self._read_manifest_text(key)
        if text is None:
            return None
        manifest = json.loads(text)
        if touch:
            self.touch(key)
        return manifest

    def put_manifest(self, manifest: dict[str, Any], *, now: float) -> None:
        """Store a manifest whose blobs are all present (checked)."""
        validate_manifest(manifest)
        shas = referenced_blobs(manifest)
        missing = [sha for sha in shas if not self.has_blob(sha)]
        if missing:
            raise ArtifactError(f"refusing a manifest whose {len(missing)} blob(s) are not stored")
        size = sum(self.blob_size(sha) or 0 for sha in set(shas))
        old = self._read_meta(manifest["key"]) or {}
        meta = {"created": old.get("created", now), "last_access": now, "bytes": size}
        self._write_manifest_text(manifest["key"], json.dumps(manifest, sort_keys=True), meta)

    def touch(self, key: str, now: float | None = None) -> None:
        import time

        meta = self._read_meta(key)
        if meta is not None:
            meta["last_access"] = time.time() if now is None else now
            self._write_meta(key, meta)

    def info(self, key: str) -> ManifestInfo | None:
        manifest = self.get_manifest(key)
        meta = self._read_meta(key)
        if manifest is None or meta is None:
            return None
        return ManifestInfo(
            key=key,
            entry=manifest["spec"]["entry"],
            dtype=manifest["spec"]["dtype"],
            targets=tuple(sorted({b["target"] for b in manifest["binaries"]})),
            bytes=int(meta.get("bytes", 0)),
            created=float(meta.get("created", 0.0)),
            last_access=float(meta.get("last_access", 0.0)),
        )

    def list(self, *, after: str | None = None, limit: int = 100) -> tuple[list[ManifestInfo], str | None]:
        """One page of manifests in key order, and the cursor of the next page."""
        keys = sorted(k for k in self.iter_manifest_keys() if after is None or k > after)
        page = [info for k in keys[:limit] if (info := self.info(k)) is not None]
        return page, (keys[limit - 1] if len(keys) > limit else None)

    def stats(self) -> dict[str, int]:
        return {
            "kernels": sum(1 for _ in self.iter_manifest_keys()),
            "bytes": sum(self.blob_size(sha) or 0 for sha in self.iter_blobs()),
        }

    def delete_kernel(self, key: str) -> bool:
        """Remove a manifest and every blob no other manifest references."""
        if not self.delete_manifest(key):
            return False
        self._delete_orphans()
        return True

    def _referenced(self) -> set[str]:
        refs: set[str] = set()
        for key in list(self.iter_manifest_keys()):
            manifest = self.get_manifest(key)
            if manifest is not None:
                refs.update(referenced_blobs(manifest))
        return refs

    def _delete_orphans(self) -> int:
        refs = self._referenced()
        orphans = [sha for sha in list(self.iter_blobs()) if sha not in refs]
        for sha in orphans:
            self.delete_blob(sha)
        return len(orphans)

    def gc(self, max_bytes: int) -> GcReport:
        """Evict least recently used kernels (manifest + unshared blobs) until bytes <= max_bytes."""
        report = GcReport(bytes_before=self.stats()["bytes"])
        report.deleted_blobs += self._delete_orphans()
        total = self.stats()["bytes"]
        by_age = sorted(
            (meta.get("last_access", 0.0), key)
            for key in list(self.iter_manifest_keys())
            if (meta := self._read_meta(key)) is not None
        )
        for _, key in by_age:
            if total <= max_bytes:
                break
            self.delete_manifest(key)
            report.evicted_manifests.append(key)
            report.deleted_blobs += self._delete_orphans()
            total = self.stats()["bytes"]
        report.bytes_after = total
        return report

    def verify(self, *, repair: bool = False) -> VerifyReport:
        """Re-hash every blob; check every manifest parses and its blobs exist.

        With ``repair``: delete corrupt blobs and the manifests that lose a blob.
        """
        report = VerifyReport()
        for sha in list(self.iter_blobs()):
            report.blobs_checked += 1
            data = self.read_blob(sha)
            if data is None or sha256_hex(data) != sha:
                report.corrupt_blobs.append(sha)
                if repair:
                    self.delete_blob(sha)
                    report.repaired.append(f"blob {sha}")
        for key in list(self.iter_manifest_keys()):
            report.manifests_checked += 1
            try:
                manifest = self.get_manifest(key)
                if manifest is None:
                    continue
                validate_manifest(manifest)
            except (ValueError, ArtifactError):
                report.unreadable_manifests.append(key)
                if repair:
                    self.delete_manifest(key)
                    report.repaired.append(f"manifest {key}")
                continue
            missing = [sha for sha in referenced_blobs(manifest) if not self.has_blob(sha)]
            if missing:
                report.missing_blobs[key] = missing
                if repair:
                    self.delete_manifest(key)
                    report.repaired.append(f"manifest {key}")
        return report
