"""The store interface: content-addressed blobs and manifests by spec key.

Rules every implementation keeps:

* a blob is stored under the sha256 of its bytes, checked on the way in;
* a manifest is stored only after every blob it names (blobs first, manifest
  last), so a reader never sees a manifest whose blobs are missing;
* only bytes and JSON text are stored, never pickled objects (a pickle read
  from a shared store is code execution);
* manifests carry an access time for least-recently-used garbage collection.

The store heals instead of serving damage (disks rot, copies get cut short):

* a blob is re-hashed on every read (:meth:`Store.read_blob`); one whose
  bytes do not match its name is deleted and reads as absent;
* a manifest is stored with the sha256 of its text, in the same value (so the
  two cannot drift apart under concurrent writers); one whose text does not
  match, does not parse, fails validation or names another key is deleted and
  reads as absent (:meth:`Store.get_manifest`);
* :meth:`Store.get_intact_manifest` also checks that every blob the manifest
  names is present and intact, and drops the manifest otherwise: a damaged
  kernel is a miss, so the service rebuilds it;
* listing skips (and logs) what it cannot read.
"""

from __future__ import annotations

import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from flexsn_core.artifacts import referenced_blobs, sha256_hex, validate_manifest
from flexsn_core.errors import ArtifactError, IntegrityError

__all__ = ["Store", "ManifestInfo", "VerifyReport", "GcReport", "StoreError", "CorruptEntry"]

logger = logging.getLogger("flexsn_service.store")

#: Stored manifest text: this prefix, the sha256 of the JSON, a newline, the JSON.
_DIGEST_PREFIX = "sha256:"


class StoreError(RuntimeError):
    """The store cannot be reached or is inconsistent."""


class CorruptEntry(StoreError):
    """One stored value is damaged (the rest of the store is fine)."""


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


def _envelope(text: str) -> str:
    return f"{_DIGEST_PREFIX}{sha256_hex(text.encode())}\n{text}"


def parse_manifest_text(key: str, stored: object) -> dict[str, Any]:
    """The manifest in a stored value; CorruptEntry (saying why) if it is damaged."""
    if not isinstance(stored, str):
        raise CorruptEntry(f"manifest {key[:16]}… is stored as {type(stored).__name__}, not text")
    text = stored
    if stored.startswith(_DIGEST_PREFIX):
        digest, _, text = stored[len(_DIGEST_PREFIX) :].partition("\n")
        if sha256_hex(text.encode()) != digest:
            raise CorruptEntry(f"manifest {key[:16]}… does not match the sha256 stored with it")
    # else: written before manifests carried a digest; the checks below still apply
    try:
        manifest = json.loads(text)
        if not isinstance(manifest, dict):
            raise ArtifactError("not a JSON object")
        validate_manifest(manifest)
    except (ValueError, ArtifactError) as exc:
        raise CorruptEntry(f"manifest {key[:16]}… is unreadable: {exc}") from None
    if manifest.get("key") != key:
        raise CorruptEntry(f"manifest stored under {key[:16]}… names another key")
    return manifest


class Store(ABC):
    """Blobs by sha256 and manifests by key."""

    # --------------------------------------------------- implementations
    @abstractmethod
    def has_blob(self, sha: str) -> bool: ...

    @abstractmethod
    def blob_size(self, sha: str) -> int | None: ...

    @abstractmethod
    def _write_blob(self, sha: str, data: bytes) -> None: ...

    @abstractmethod
    def _read_blob_bytes(self, sha: str) -> bytes | None:
        """The stored bytes as they are (not checked); CorruptEntry if unreadable."""

    @abstractmethod
    def delete_blob(self, sha: str) -> None: ...

    @abstractmethod
    def iter_blobs(self) -> Iterator[str]: ...

    @abstractmethod
    def _read_manifest_text(self, key: str) -> str | None:
        """The stored value (digest line + JSON); CorruptEntry if unreadable."""

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

    def _transaction(self) -> AbstractContextManager[Any]:
        """A block no other writer interleaves with (where the backend has one)."""
        return nullcontext()

    # ------------------------------------------------------------- blobs
    def put_blob(self, sha: str, data: bytes) -> None:
        if sha256_hex(data) != sha:
            raise IntegrityError(f"refusing blob {sha[:16]}…: its bytes hash to something else")
        if not self.blob_intact(sha):  # absent, or damaged and just dropped: write it (again)
            self._write_blob(sha, data)

    def read_blob(self, sha: str) -> bytes | None:
        """The blob's bytes, checked against its name; None if absent or damaged (then dropped)."""
        try:
            data = self._read_blob_bytes(sha)
        except CorruptEntry as exc:
            self._drop_blob(sha, str(exc))
            return None
        if data is None:
            return None
        if sha256_hex(data) != sha:
            self._drop_blob(sha, "its bytes do not match its sha256")
            return None
        return data

    def blob_intact(self, sha: str) -> bool:
        """True if the blob is stored and its bytes match its name (a damaged one is dropped)."""
        return self.read_blob(sha) is not None

    def _drop_blob(self, sha: str, why: str) -> None:
        logger.warning("dropping blob %s: %s", sha, why)
        self.delete_blob(sha)

    # --------------------------------------------------------- manifests
    def get_manifest(self, key: str, *, touch: bool = False) -> dict[str, Any] | None:
        """The manifest of ``key``; None if absent or damaged (a damaged one is dropped)."""
        _, manifest = self._load(key)
        if manifest is not None and touch:
            self.touch(key)
        return manifest

    def get_intact_manifest(self, key: str, *, touch: bool = False) -> dict[str, Any] | None:
        """Like :meth:`get_manifest`, and every blob it names is present and intact.

        A manifest that lost a blob is dropped: the kernel is a miss and gets rebuilt.
        """
        stored, manifest = self._load(key)
        if manifest is None:
            return None
        for sha in sorted(set(referenced_blobs(manifest))):
            if not self.blob_intact(sha):
                self._drop_manifest(key, stored, f"its blob {sha} is missing or damaged")
                return None
        if touch:
            self.touch(key)
        return manifest

    def _load(self, key: str) -> tuple[str | None, dict[str, Any] | None]:
        """The stored text and the manifest in it; (None, None) if absent or damaged (then dropped)."""
        try:
            stored = self._read_manifest_text(key)
        except CorruptEntry as exc:
            self._drop_manifest(key, None, str(exc))
            return None, None
        if stored is None:
            return None, None
        try:
            return stored, parse_manifest_text(key, stored)
        except CorruptEntry as exc:
            self._drop_manifest(key, stored, str(exc))
            return None, None

    def _safe_read_text(self, key: str) -> str | None:
        try:
            return self._read_manifest_text(key)
        except CorruptEntry:
            return None

    def _drop_manifest(self, key: str, expected: str | None, why: str) -> None:
        """Delete a damaged manifest, unless a writer replaced it meanwhile (then keep the new one)."""
        with self._transaction():
            if expected is not None and self._safe_read_text(key) != expected:
                return
            logger.warning("dropping manifest %s: %s", key, why)
            self.delete_manifest(key)

    def put_manifest(self, manifest: dict[str, Any], *, now: float) -> None:
        """Store a manifest whose blobs are all present (checked)."""
        validate_manifest(manifest)
        shas = referenced_blobs(manifest)
        missing = [sha for sha in shas if not self.has_blob(sha)]
        if missing:
            raise ArtifactError(f"refusing a manifest whose {len(missing)} blob(s) are not stored")
        size = sum(self.blob_size(sha) or 0 for sha in set(shas))
        old = self._safe_meta(manifest["key"]) or {}
        meta = {"created": old.get("created", now), "last_access": now, "bytes": size}
        self._write_manifest_text(manifest["key"], _envelope(json.dumps(manifest, sort_keys=True)), meta)

    def _safe_meta(self, key: str) -> dict[str, Any] | None:
        """The metadata, or None if absent or unreadable (it is rewritten on the next touch)."""
        try:
            meta = self._read_meta(key)
        except (CorruptEntry, ValueError):
            return None
        return meta if isinstance(meta, dict) else None

    def touch(self, key: str, now: float | None = None) -> None:
        meta = self._safe_meta(key) or {"created": time.time(), "bytes": 0}
        meta["last_access"] = time.time() if now is None else now
        self._write_meta(key, meta)

    def info(self, key: str) -> ManifestInfo | None:
        manifest = self.get_manifest(key)
        if manifest is None:
            return None
        meta = self._safe_meta(key) or {}
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
        """One page of manifests in key order, and the cursor of the next page.

        A manifest that cannot be read is skipped (and logged, and dropped if damaged).
        """
        keys = sorted(k for k in self.iter_manifest_keys() if after is None or k > after)
        page = []
        for key in keys[:limit]:
            try:
                info = self.info(key)
            except (CorruptEntry, ArtifactError, ValueError, TypeError, KeyError) as exc:
                logger.warning("listing skips manifest %s: %s: %s", key, type(exc).__name__, exc)
                continue
            if info is not None:
                page.append(info)
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
            ((self._safe_meta(key) or {}).get("last_access", 0.0), key) for key in list(self.iter_manifest_keys())
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
        """Re-hash every blob; check every manifest (its digest, JSON, structure) and that its blobs exist.

        Reports without changing anything, unless ``repair``: then corrupt
        blobs, damaged manifests and the manifests that lose a blob are deleted.
        """
        report = VerifyReport()
        for sha in list(self.iter_blobs()):
            report.blobs_checked += 1
            try:
                data = self._read_blob_bytes(sha)
            except CorruptEntry:
                data = None
            if data is None or sha256_hex(data) != sha:
                report.corrupt_blobs.append(sha)
                if repair:
                    self.delete_blob(sha)
                    report.repaired.append(f"blob {sha}")
        for key in list(self.iter_manifest_keys()):
            report.manifests_checked += 1
            try:
                stored = self._read_manifest_text(key)
                if stored is None:
                    continue
                manifest = parse_manifest_text(key, stored)
            except CorruptEntry:
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
