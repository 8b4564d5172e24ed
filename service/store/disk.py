"""The embedded store: diskcache in a local directory.

diskcache pickles any value that is not ``bytes``, ``str``, ``int`` or
``float`` and unpickles on read; :class:`BytesOnlyDisk` refuses both
directions, so a tampered cache file can never execute code in the service.
Large values live as files (diskcache writes the file before the row that
points to it), small ones in SQLite. A value that cannot be read back (a
pickle, text that is not UTF-8) is reported as :class:`CorruptEntry`, so the
store drops that one entry; SQLite or file-system failures become
:class:`StoreError` (the service answers 503).
"""

from __future__ import annotations

import functools
import json
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, TypeVar

import diskcache

from .base import CorruptEntry, Store, StoreError

__all__ = ["DiskStore", "BytesOnlyDisk"]

_BLOB = "blob:"
_MANIFEST = "manifest:"
_META = "meta:"

F = TypeVar("F", bound=Callable[..., Any])


def _store_errors(method: F) -> F:
    """SQLite and file-system failures are the store being unavailable, not a bug (503, not 500)."""

    @functools.wraps(method)
    def wrapper(self: DiskStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except UnicodeDecodeError as exc:  # a text value whose file is damaged
            raise CorruptEntry(f"a stored text value is not UTF-8: {exc}") from None
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"store at {self.directory} failed: {type(exc).__name__}: {exc}") from exc

    return wrapper  # type: ignore[return-value]


_PICKLED_KEY = object()


class BytesOnlyDisk(diskcache.Disk):
    """A diskcache Disk that stores and returns only bytes, text and numbers."""

    def put(self, key: Any) -> Any:
        if not isinstance(key, str):
            raise TypeError("store keys must be str")
        return super().put(key)

    def get(self, key: Any, raw: bool) -> Any:
        if not raw:
            # A pickled key (tampered cache?) is never unpickled; listings skip it (not a str).
            return _PICKLED_KEY
        return super().get(key, raw)

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> Any:
        if not (read or type(value) in (bytes, str, int, float)):
            raise TypeError(f"the store keeps bytes and JSON text only, not {type(value).__name__}")
        return super().store(value, read, key=key)

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:
        if mode == diskcache.core.MODE_PICKLE:
            raise CorruptEntry("refusing to unpickle a value from the store (tampered cache?)")
        return super().fetch(mode, filename, value, read)


class DiskStore(Store):
    """Blobs, manifests and access times in one diskcache directory."""

    def __repr__(self) -> str:
        return f"DiskStore({str(self.directory)!r})"

    #: what makes a folder a store: diskcache's database, which the constructor creates
    MARKER = Path("db") / "cache.db"

    @classmethod
    def why_not_a_store(cls, directory: str | Path) -> str | None:
        """None if ``directory`` holds a store, else why not: ``gc`` and ``verify`` must not make one."""
        directory = Path(directory).absolute()
        if not directory.exists():
            return f"no store at {directory}: the folder does not exist"
        if not directory.is_dir():
            return f"{directory} is a file, not a store folder"
        if (directory / cls.MARKER).is_file():
            return None
        if (directory / "manifests").is_dir() or (directory / "blobs").is_dir():
            return f"{directory} is a client's mirror (manifests/, blobs/), not the service's store"
        return f"{directory} is not a flexsn-cache store (it has no {cls.MARKER})"

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
    @_store_errors
    def has_blob(self, sha: str) -> bool:
        return (_BLOB + sha) in self._cache

    @_store_errors
    def blob_size(self, sha: str) -> int | None:
        data = self._cache.get(_BLOB + sha, read=True)
        if data is None:
            return None
        if isinstance(data, (bytes, str)):
            return len(data)
        with data:
            data.seek(0, 2)
            return data.tell()

    @_store_errors
    def _write_blob(self, sha: str, data: bytes) -> None:
        self._cache.set(_BLOB + sha, bytes(data))

    @_store_errors
    def _read_blob_bytes(self, sha: str) -> bytes | None:
        value = self._cache.get(_BLOB + sha)
        if value is None:
            return None
        if not isinstance(value, bytes):
            raise CorruptEntry(f"blob {sha[:16]}… is stored as {type(value).__name__}, not bytes")
        return value

    @_store_errors
    def delete_blob(self, sha: str) -> None:
        self._cache.delete(_BLOB + sha)

    @_store_errors
    def iter_blobs(self) -> Iterator[str]:
        return iter([key[len(_BLOB) :] for key in self._keys(_BLOB)])

    def _keys(self, prefix: str) -> list[str]:
        return [k for k in self._cache.iterkeys() if isinstance(k, str) and k.startswith(prefix)]

    # --------------------------------------------------------- manifests
    @_store_errors
    def _read_manifest_text(self, key: str) -> str | None:
        return self._cache.get(_MANIFEST + key)

    @_store_errors
    def _write_manifest_text(self, key: str, text: str, meta: dict[str, Any]) -> None:
        with self._cache.transact():
            self._cache.set(_META + key, json.dumps(meta))
            self._cache.set(_MANIFEST + key, text)

    @_store_errors
    def _read_meta(self, key: str) -> dict[str, Any] | None:
        text = self._cache.get(_META + key)
        return None if text is None else json.loads(text)

    @_store_errors
    def _write_meta(self, key: str, meta: dict[str, Any]) -> None:
        self._cache.set(_META + key, json.dumps(meta))

    @_store_errors
    def delete_manifest(self, key: str) -> bool:
        with self._cache.transact():
            existed = self._cache.delete(_MANIFEST + key)
            self._cache.delete(_META + key)
        return bool(existed)

    @_store_errors
    def iter_manifest_keys(self) -> Iterator[str]:
        return iter([key[len(_MANIFEST) :] for key in self._keys(_MANIFEST)])

    def _key_lock(self, key: str) -> AbstractContextManager[Any]:
        # One SQLite write transaction (BEGIN IMMEDIATE): exclusive between the threads and
        # processes sharing the directory, reentrant in one thread. Coarser than one key,
        # and held for milliseconds (a manifest read, merge and write).
        return self._cache.transact()

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
