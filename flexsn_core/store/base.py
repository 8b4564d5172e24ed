"""The artifact store interface: content-addressed blobs and manifests by spec key.

Every implementation (the client's mirror :class:`~flexsn_core.store.files.FileStore`,
the service's diskcache ``DiskStore``, a Redis store) subclasses
:class:`ArtifactStore`, writes the storage primitives (the abstract methods)
and inherits the rules, which ``tests/store_contract.py`` checks on each:

* a blob is stored under the sha256 of its bytes, checked on the way in;
* a manifest is stored only after every blob it names (blobs first, manifest
  last), so a reader never sees a manifest whose blobs are missing;
* only bytes and JSON text are stored, never pickled objects (a pickle read
  from a shared store is code execution);
* every manifest is valid (:func:`flexsn_core.manifest.validate_manifest`), and
  changes of a stored one (merging binaries, recording tuned choices) are a
  read-modify-write under that key's lock (:meth:`ArtifactStore._key_lock`), so
  concurrent writers never lose each other's update;
* manifests carry access times and sizes for least-recently-used eviction.

The store heals instead of serving damage (disks rot, copies get cut short):

* a blob is re-hashed on every read (:meth:`read_blob`); one whose bytes do
  not match its name is deleted and reads as absent;
* a manifest is stored with the sha256 of its text (:mod:`.envelope`); one whose
  text does not match, does not parse, fails validation or names another key
  is deleted and reads as absent (:meth:`get_manifest`);
* :meth:`get_intact_manifest` also checks that every blob the manifest names is
  present and intact, and drops the manifest otherwise: a damaged kernel is a
  miss, so it gets rebuilt (or fetched again);
* listing skips (and logs) what it cannot read.
"""

from __future__ import annotations

import hashlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from ..errors import ArtifactError, IntegrityError
from ..manifest import check_choice, merge_manifests, record_tuning, referenced_blobs, validate_manifest
from . import maintenance
from .envelope import envelope, parse_manifest_text
from .errors import CorruptEntry

if TYPE_CHECKING:
    from ..artifacts import Artifact
    from ..manifest import TuningChoice
    from .maintenance import GcReport, ManifestInfo, VerifyReport

__all__ = ["ArtifactStore", "sha256_hex"]

logger = logging.getLogger("flexsn_core.store")


def sha256_hex(data: bytes) -> str:
    """A blob's name: the hex sha256 of its bytes."""
    return hashlib.sha256(data).hexdigest()


class ArtifactStore(ABC):
    """Blobs by sha256 and manifests by key."""

    # ------------------------------------------------ storage primitives (per implementation)
    @abstractmethod
    def has_blob(self, sha: str) -> bool:
        """True if a value is stored under ``sha`` (not checked: see :meth:`blob_intact`)."""

    @abstractmethod
    def blob_size(self, sha: str) -> int | None:
        """The stored blob's size in bytes; None if absent."""

    @abstractmethod
    def _write_blob(self, sha: str, data: bytes) -> None:
        """Store bytes under a name as they are (atomically; the caller checked them)."""

    @abstractmethod
    def _read_blob_bytes(self, sha: str) -> bytes | None:
        """The stored bytes as they are (not checked); None if absent, CorruptEntry if unreadable."""

    @abstractmethod
    def delete_blob(self, sha: str) -> None:
        """Remove a blob (no error if absent)."""

    @abstractmethod
    def iter_blobs(self) -> Iterator[str]:
        """The names of every stored blob."""

    @abstractmethod
    def _read_manifest_text(self, key: str) -> str | None:
        """The stored value (digest line + JSON); None if absent, CorruptEntry if unreadable."""

    @abstractmethod
    def _write_manifest_text(self, key: str, text: str, meta: dict[str, Any]) -> None:
        """Store a manifest's value and its metadata (``created``, ``last_access``, ``bytes``)."""

    @abstractmethod
    def _read_meta(self, key: str) -> dict[str, Any] | None:
        """A manifest's metadata; None if absent (ValueError or CorruptEntry if unreadable)."""

    @abstractmethod
    def _write_meta(self, key: str, meta: dict[str, Any]) -> None: ...

    @abstractmethod
    def delete_manifest(self, key: str) -> bool:
        """Remove a manifest and its metadata (not its blobs); False if absent."""

    @abstractmethod
    def iter_manifest_keys(self) -> Iterator[str]:
        """The keys of every stored manifest."""

    @abstractmethod
    def _key_lock(self, key: str) -> AbstractContextManager[Any]:
        """A lock on one key, held across a read-modify-write of its manifest.

        Reentrant in one thread; exclusive between threads and between the
        processes sharing the store (a file lock, a database transaction, a
        lease). A timeout raises StoreError.
        """

    @abstractmethod
    def check(self) -> None:
        """Raise StoreError if the store cannot be read and written."""

    def close(self) -> None:  # noqa: B027 - optional
        """Release connections and handles."""

    # ------------------------------------------------------------- blobs
    def put_blob(self, sha: str, data: bytes) -> None:
        """Store ``data`` under ``sha``; IntegrityError if the bytes hash to something else."""
        if sha256_hex(data) != sha:
            raise IntegrityError(f"refusing blob {sha[:16]}…: its bytes hash to something else")
        if not self.blob_intact(sha):  # absent, or damaged and just dropped: write it (again)
            self._write_blob(sha, bytes(data))

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

    def get_blob(self, sha: str) -> bytes:
        """Like :meth:`read_blob`, but ArtifactError if the blob is absent or was damaged."""
        data = self.read_blob(sha)
        if data is None:
            raise ArtifactError(f"blob {sha[:16]}… is not in the store {self} (or was damaged and dropped)")
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
        with self._key_lock(key):
            if expected is not None and self._safe_read_text(key) != expected:
                return
            logger.warning("dropping manifest %s: %s", key, why)
            self.delete_manifest(key)

    def put_manifest(self, manifest: dict[str, Any], *, now: float | None = None) -> None:
        """Store (or replace) a valid manifest whose blobs are all present (checked)."""
        validate_manifest(manifest)
        key = manifest["key"]
        shas = set(referenced_blobs(manifest))
        missing = [sha for sha in shas if not self.has_blob(sha)]
        if missing:
            raise ArtifactError(f"refusing a manifest whose {len(missing)} blob(s) are not stored")
        size = sum(self.blob_size(sha) or 0 for sha in shas)
        now = time.time() if now is None else now
        with self._key_lock(key):
            old = self._safe_meta(key) or {}
            meta = {"created": old.get("created", now), "last_access": now, "bytes": size}
            self._write_manifest_text(key, envelope(manifest), meta)

    def merge_manifest(self, manifest: dict[str, Any], *, now: float | None = None) -> dict[str, Any]:
        """Store ``manifest`` merged with the stored one of its key (binaries and tuning); the result.

        A read-modify-write under the key's lock: two writers adding different
        targets both end up in the stored manifest. Its blobs must be stored first.
        """
        with self._key_lock(manifest["key"]):
            existing = self.get_manifest(manifest["key"])
            merged = manifest if existing is None else merge_manifests(existing, manifest)
            self.put_manifest(merged, now=now)
        return merged

    def record_tuning(
        self, key: str, choices: Sequence[TuningChoice], *, now: float | None = None
    ) -> tuple[int, dict[str, Any]] | None:
        """Record tuned choices in a stored manifest, atomically: ``(accepted, manifest after)``.

        The first choice per (target, kind, bucket, variant) wins (later ones
        count as not accepted). None if the kernel is not stored; TuningError,
        and nothing recorded, if any choice does not fit its binaries.
        """
        with self._key_lock(key):
            manifest = self.get_manifest(key)
            if manifest is None:
                return None
            for choice in choices:
                check_choice(manifest, choice)
            accepted = sum(record_tuning(manifest, choice) for choice in choices)
            if accepted:
                self.put_manifest(manifest, now=now)
        return accepted, manifest

    def put(self, artifact: Artifact, *, now: float | None = None) -> dict[str, Any]:
        """Store an artifact: its blobs (checked), then its manifest merged with the stored one."""
        artifact.verify()
        for sha, data in artifact.blobs.items():
            self.put_blob(sha, data)
        return self.merge_manifest(artifact.manifest, now=now)

    # ------------------------------------------------ access times, sizes, maintenance
    def _safe_meta(self, key: str) -> dict[str, Any] | None:
        """The metadata, or None if absent or unreadable (it is rewritten on the next touch)."""
        try:
            meta = self._read_meta(key)
        except (CorruptEntry, ValueError):
            return None
        return meta if isinstance(meta, dict) else None

    def touch(self, key: str, now: float | None = None) -> None:
        """Set a manifest's last access time (for LRU eviction)."""
        meta = self._safe_meta(key) or {"created": time.time(), "bytes": 0}
        meta["last_access"] = time.time() if now is None else now
        self._write_meta(key, meta)

    def touch_many(self, keys: Sequence[str], now: float | None = None) -> None:
        """Set the last access time of several stored manifests (absent ones are skipped).

        The service batches its reads' access times into one call every few
        seconds; a store may override this with one round trip.
        """
        for key in keys:
            if self._safe_meta(key) is not None:
                self.touch(key, now)

    def read_manifest_digest(self, key: str) -> str | None:
        """The stored manifest's digest line (``sha256:<hex>``), to tell a cached copy is current; None if absent.

        Not a check of the manifest: a reader that finds it changed loads it (and checks it) again.
        """
        text = self._safe_read_text(key)
        return None if text is None else text.partition("\n")[0]

    def info(self, key: str) -> ManifestInfo | None:
        """What a listing shows of one kernel; None if absent or damaged."""
        return maintenance.info(self, key)

    def list(self, *, after: str | None = None, limit: int = 100) -> tuple[list[ManifestInfo], str | None]:
        """One page of manifests in key order, and the cursor of the next page (see maintenance.list_page)."""
        return maintenance.list_page(self, after=after, limit=limit)

    def stats(self) -> dict[str, int]:
        """``kernels`` (manifests stored) and ``bytes`` (the sum of every stored blob's size)."""
        return maintenance.stats(self)

    def delete_kernel(self, key: str) -> bool:
        """Remove a manifest and every blob no other manifest references; False if absent."""
        return maintenance.delete_kernel(self, key)

    def gc(self, max_bytes: int) -> GcReport:
        """Evict least recently used kernels (manifest + unshared blobs) until bytes <= max_bytes."""
        return maintenance.gc(self, max_bytes)

    def verify(self, *, repair: bool = False) -> VerifyReport:
        """Re-hash every blob, check every manifest; change nothing unless ``repair``."""
        return maintenance.verify(self, repair=repair)

    def _delete_orphans(self) -> int:
        return maintenance.delete_orphans(self)
