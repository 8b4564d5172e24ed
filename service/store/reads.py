"""Fast reads: verified blobs and manifests served from memory, access times written in batches.

Blobs are immutable by name, and so are manifests except for tuning (which
changes their digest), so a replica keeps what it served in a bounded LRU:

* a blob enters the cache only after the store re-hashed it (``read_blob``): a
  damaged blob is never served, from the store or from memory;
* a manifest enters after ``get_intact_manifest`` (every blob it names present
  and intact), with its JSON bytes and digest (the ETag); for ``ttl_s`` it is
  served without asking the store, then its stored digest is compared (a
  71-byte read on Redis) and it is reloaded only if it changed (tuning from any
  replica shows within ``ttl_s``; this replica's own tuning reports drop the
  entry at once);
* reads write nothing: the keys read are collected and their access times
  written in one batch every few seconds (``flush``, called by the service's
  timer), instead of one store write per GET.

Each entry carries its response headers, built once when it enters the cache,
so the read fast path (``api/fast_reads.py``) sends them without building
anything per request.

Thread-safe: the event loop reads the memory, worker threads fill it.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from flexsn_core.manifest import referenced_blobs

from .base import Store

__all__ = ["ReadCache", "CachedManifest", "CachedBlob", "BLOB_CACHE_CONTROL", "MANIFEST_CACHE_CONTROL"]

#: blobs never change under their name
BLOB_CACHE_CONTROL = "public, max-age=31536000, immutable"
#: a manifest may be tuned: clients revalidate (cheaply, with If-None-Match)
MANIFEST_CACHE_CONTROL = "no-cache"

Headers = list[tuple[bytes, bytes]]


def _response_headers(etag: str, cache_control: str, size: int, media_type: str) -> tuple[Headers, Headers]:
    """(200 headers, 304 headers) as raw ASGI pairs, in the order Starlette's ``Response`` sends them."""
    not_modified = [(b"etag", etag.encode()), (b"cache-control", cache_control.encode())]
    return [*not_modified, (b"content-length", str(size).encode()), (b"content-type", media_type.encode())], not_modified


@dataclass
class CachedBlob:
    sha: str
    #: the bytes, re-hashed by the store when they were read
    data: bytes
    ok_headers: Headers = field(init=False, repr=False)
    not_modified_headers: Headers = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.ok_headers, self.not_modified_headers = _response_headers(
            self.etag, BLOB_CACHE_CONTROL, len(self.data), "application/octet-stream")

    @property
    def etag(self) -> str:
        return f'"{self.sha}"'

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass
class CachedManifest:
    key: str
    manifest: dict[str, Any]
    #: the JSON (keys sorted), exactly what the store holds after its digest line
    body: bytes
    #: sha256 of ``body``: the stored digest, and the strong ETag
    digest: str
    checked: float
    ok_headers: Headers = field(init=False, repr=False)
    not_modified_headers: Headers = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.ok_headers, self.not_modified_headers = _response_headers(
            self.etag, MANIFEST_CACHE_CONTROL, len(self.body), "application/json")

    @property
    def etag(self) -> str:
        return f'"{self.digest}"'

    @property
    def size(self) -> int:
        return len(self.body)


class ReadCache:
    def __init__(self, store: Store, *, max_bytes: int, ttl_s: float) -> None:
        self.store = store
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, str], CachedBlob | CachedManifest] = OrderedDict()
        self._bytes = 0
        self._touched: set[str] = set()

    # ------------------------------------------------------------ memory only (the event loop)
    def cached_blob(self, sha: str) -> bytes | None:
        entry = self.cached_blob_entry(sha)
        return entry.data if entry is not None else None

    def cached_blob_entry(self, sha: str) -> CachedBlob | None:
        """The verified blob with its response headers, if it is in memory (no store access)."""
        with self._lock:
            entry = self._entries.get(("b", sha))
            if entry is not None:
                self._entries.move_to_end(("b", sha))
        return entry if isinstance(entry, CachedBlob) else None

    def cached_manifest(self, key: str, now: float | None = None) -> CachedManifest | None:
        """The manifest if it was checked within ``ttl_s`` (no store access); its read is noted for LRU."""
        now = time.monotonic() if now is None else now
        with self._lock:
            entry = self._entries.get(("m", key))
            if not isinstance(entry, CachedManifest) or now - entry.checked > self.ttl_s:
                return None
            self._entries.move_to_end(("m", key))
            self._touched.add(key)
        return entry

    # ------------------------------------------------------------ through the store (worker threads)
    def blob(self, sha: str) -> bytes | None:
        """The blob's bytes, from memory or from the store (re-hashed there); None if absent or damaged."""
        data = self.cached_blob(sha)
        if data is None:
            data = self.store.read_blob(sha)
            if data is not None:
                self._add(("b", sha), CachedBlob(sha, data))
        return data

    def manifest(self, key: str) -> CachedManifest | None:
        """The manifest from memory if its stored digest is unchanged, else from the store (intact); None if absent."""
        cached = self.cached_manifest(key)
        if cached is not None:
            return cached
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(("m", key))
        if isinstance(entry, CachedManifest) and self.store.read_manifest_digest(key) == f"sha256:{entry.digest}":
            entry.checked = now
            with self._lock:
                self._touched.add(key)
            return entry
        manifest = self.store.get_intact_manifest(key)
        if manifest is None:
            self.forget(key)
            return None
        body = json.dumps(manifest, sort_keys=True).encode()
        entry = CachedManifest(key, manifest, body, hashlib.sha256(body).hexdigest(), now)
        self._add(("m", key), entry)
        with self._lock:
            self._touched.add(key)
        return entry

    def forget(self, key: str, *, blobs: bool = False) -> None:
        """Drop a manifest (tuned, deleted here); ``blobs``: and the blobs it named."""
        with self._lock:
            entry = self._entries.pop(("m", key), None)
            if isinstance(entry, CachedManifest):
                self._bytes -= entry.size
                if blobs:
                    for sha in set(referenced_blobs(entry.manifest)):
                        blob = self._entries.pop(("b", sha), None)
                        if blob is not None:
                            self._bytes -= blob.size

    def note_read(self, key: str) -> None:
        with self._lock:
            self._touched.add(key)

    def flush(self) -> int:
        """Write the access times of the manifests read since the last flush (one batch); how many."""
        with self._lock:
            keys, self._touched = self._touched, set()
        if keys:
            try:
                self.store.touch_many(sorted(keys))
            except Exception:
                with self._lock:  # try again next time
                    self._touched |= keys
                raise
        return len(keys)

    def _add(self, name: tuple[str, str], value: CachedBlob | CachedManifest) -> None:
        if value.size > self.max_bytes // 4:  # one huge value would push everything else out: serve it uncached
            return
        with self._lock:
            old = self._entries.pop(name, None)
            if old is not None:
                self._bytes -= old.size
            self._entries[name] = value
            self._bytes += value.size
            while self._bytes > self.max_bytes and self._entries:
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= dropped.size
