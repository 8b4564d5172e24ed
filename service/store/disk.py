"""The embedded store: diskcache in a local directory.

diskcache pickles any value that is not ``bytes``, ``str``, ``int`` or
``float`` and unpickles on read; :class:`BytesOnlyDisk` refuses both
directions, so a tampered cache file can never execute code in the service.
Large blobs live as files (diskcache writes the file before the row that
points to it), which also lets ``GET /v1/blobs`` stream them.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import diskcache

from .base import Store, StoreError

__all__ = ["DiskStore", "BytesOnlyDisk"]

_BLOB = "blob:"
_MANIFEST = "manifest:"
_META = "meta:"


class BytesOnlyDisk(diskcache.Disk):
    """A diskcache Disk that stores and returns only bytes, text and numbers."""

    def put(self, key: Any) -> Any:
        if not isinstance(key, str):
            raise TypeError("store keys must be str")
        return super().put(key)

    def get(self, key: Any, raw: bool) -> Any:
        if not raw:
            raise StoreError("refusing a pickled key in the store (tampered cache?)")
        return super().get(key, raw)

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> Any:
        if not (read or type(value) in (bytes, str, int, float)):
            raise TypeError(f"the store keeps bytes and JSON text only, not {type(value).__name__}")
        return super().store(value, read, key=key)

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:
        if mode == diskcache.core.MODE_PICKLE:
            raise StoreError("refusing to unpickle a value from the store (tampered cache?)")
        return super().fetch(mode, filename, value, read)


class DiskStore(Store):
    """Blobs, manifests and access times in one diskcache directory."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        # No size limit or eviction of its own: gc() evicts whole kernels, LRU.
        self._cache = diskcache.Cache(
            str(self.directory / "db"),
            disk=BytesOnlyDisk,
            eviction_policy="none",
            size_limit=2**62,
            statistics=False,
        )

    # ------------------------------------------------------------- blobs
    def has_blob(self, sha: str) -> bool:
        return (_BLOB + sha) in self._cache

    def blob_size(self, sha: str) -> int | None:
        data = self._cache.get(_BLOB + sha, read=True)
        if data is None:
            return None
        if isinstance(data, bytes):
            return len(data)
        with data:
            data.seek(0, 2)
            return data.tell()

    def _write_blob(self, sha: str, data: bytes) -> None:
        self._cache.set(_BLOB + sha, bytes(data))

    def read_blob(self, sha: str) -> bytes | None:
        value = self._cache.get(_BLOB + sha)
        return None if value is None else bytes(value)

    def open_blob(self, sha: str) -> BinaryIO | bytes | None:
        return self._cache.get(_BLOB + sha, read=True)

    def delete_blob(self, sha: str) -> None:
        self._cache.delete(_BLOB + sha)

    def iter_blobs(self) -> Iterator[str]:
        for key in self._cache.iterkeys():
            if isinstance(key, str) and key.startswith(_BLOB):
                yield key[len(_BLOB) :]

    # --------------------------------------------------------- manifests
    def _read_manifest_text(self, key: str) -> str | None:
        return self._cache.get(_MANIFEST + key)

    def _write_manifest_text(self, key: str, text: str, meta: dict[str, Any]) -> None:
        with self._cache.transact():
            self._cache.set(_META + key, json.dumps(meta))
            self._cache.set(_MANIFEST + key, text)

    def _read_meta(self, key: str) -> dict[str, Any] | None:
        text = self._cache.get(_META + key)
        return None if text is None else json.loads(text)

    def _write_meta(self, key: str, meta: dict[str, Any]) -> None:
        self._cache.set(_META + key, json.dumps(meta))

    def delete_manifest(self, key: str) -> bool:
        with self._cache.transact():
            existed = self._cache.delete(_MANIFEST + key)
            self._cache.delete(_META + key)
        return bool(existed)

    def iter_manifest_keys(self) -> Iterator[str]:
        for key in self._cache.iterkeys():
            if isinstance(key, str) and key.startswith(_MANIFEST):
                yield key[len(_MANIFEST) :]

    def check(self) -> None:
        probe = f"probe:{uuid.uuid4().hex}"
        try:
            self._cache.set(probe, "ok")
            if self._cache.get(probe) != "ok":
                raise StoreError("store read back a different value")
            self._cache.delete(probe)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"store at {self.directory} is not usable: {exc}") from exc

    def close(self) -> None:
        self._cache.close()
