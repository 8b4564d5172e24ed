"""An artifact store in a plain folder: the client's mirror and the local builds' store.

    ROOT/blobs/<sha[:2]>/<sha>      the bytes
    ROOT/manifests/<key>.json       digest line + manifest JSON (see envelope.py)
    ROOT/meta/<key>.json            created, last access, bytes
    ROOT/locks/<key>.lock           the key's lock file

Every file is written to a temporary name and renamed into place, so a reader
sees the old bytes or the new ones, never half. Blobs are written before the
manifest that names them. A key's lock is a file lock (``filelock``), shared
by the threads and processes of one machine that use the folder; it guards
read-modify-writes of that key's manifest (merging binaries, tuning).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from .base import ArtifactStore
from .errors import CorruptEntry, StoreError

__all__ = ["FileStore"]

_HEX64 = re.compile(r"[0-9a-f]{64}")

#: How long a writer waits for a key's lock before the store reports an error.
LOCK_TIMEOUT_S = 60.0


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _checked(name: str, what: str) -> str:
    """A sha256 or key (64 lowercase hex digits): names are paths here, so nothing else passes."""
    if not isinstance(name, str) or not _HEX64.fullmatch(name):
        raise ValueError(f"not a {what}: {str(name)[:80]!r}")
    return name


class FileStore(ArtifactStore):
    """Blobs, manifests and access times as files under ``root``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r})"

    # ------------------------------------------------------------- paths
    def _blob_path(self, sha: str) -> Path:
        _checked(sha, "sha256")
        return self.root / "blobs" / sha[:2] / sha

    def _manifest_path(self, key: str) -> Path:
        return self.root / "manifests" / f"{_checked(key, 'spec key')}.json"

    def _meta_path(self, key: str) -> Path:
        return self.root / "meta" / f"{_checked(key, 'spec key')}.json"

    # ------------------------------------------------------------- blobs
    def has_blob(self, sha: str) -> bool:
        return self._blob_path(sha).is_file()

    def blob_size(self, sha: str) -> int | None:
        try:
            return self._blob_path(sha).stat().st_size
        except FileNotFoundError:
            return None

    def _write_blob(self, sha: str, data: bytes) -> None:
        _atomic_write(self._blob_path(sha), data)

    def _read_blob_bytes(self, sha: str) -> bytes | None:
        try:
            return self._blob_path(sha).read_bytes()
        except FileNotFoundError:
            return None

    def delete_blob(self, sha: str) -> None:
        self._blob_path(sha).unlink(missing_ok=True)

    def iter_blobs(self) -> Iterator[str]:
        folder = self.root / "blobs"
        if not folder.is_dir():
            return iter(())
        return iter(sorted(p.name for p in folder.glob("??/*") if _HEX64.fullmatch(p.name)))

    # --------------------------------------------------------- manifests
    def _read_manifest_text(self, key: str) -> str | None:
        try:
            data = self._manifest_path(key).read_bytes()
        except FileNotFoundError:
            return None
        try:
            return data.decode()
        except UnicodeDecodeError as exc:
            raise CorruptEntry(f"manifest {key[:16]}… is not UTF-8 text: {exc}") from None

    def _write_manifest_text(self, key: str, text: str, meta: dict[str, Any]) -> None:
        self._write_meta(key, meta)
        _atomic_write(self._manifest_path(key), text.encode())

    def _read_meta(self, key: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._meta_path(key).read_bytes())
        except FileNotFoundError:
            return None

    def _write_meta(self, key: str, meta: dict[str, Any]) -> None:
        _atomic_write(self._meta_path(key), json.dumps(meta).encode())

    def delete_manifest(self, key: str) -> bool:
        path = self._manifest_path(key)
        existed = path.exists()
        path.unlink(missing_ok=True)
        self._meta_path(key).unlink(missing_ok=True)
        return existed

    def iter_manifest_keys(self) -> Iterator[str]:
        folder = self.root / "manifests"
        if not folder.is_dir():
            return iter(())
        return iter(sorted(p.stem for p in folder.glob("*.json") if _HEX64.fullmatch(p.stem)))

    def _key_lock(self, key: str) -> AbstractContextManager[Any]:
        path = self.root / "locks" / f"{_checked(key, 'spec key')}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        # One lock object per path in this process (is_singleton): reentrant in a thread,
        # exclusive between threads (thread_local) and, through flock, between processes.
        lock = FileLock(path, timeout=LOCK_TIMEOUT_S, is_singleton=True, thread_local=True)
        return _LockErrors(lock, key)

    def check(self) -> None:
        probe = self.root / f".probe-{uuid.uuid4().hex}"
        try:
            _atomic_write(probe, b"ok")
            if probe.read_bytes() != b"ok":
                raise StoreError(f"store at {self.root} read back a different value")
            probe.unlink()
        except OSError as exc:
            raise StoreError(f"store at {self.root} is not usable: {exc}") from exc


class _LockErrors(AbstractContextManager[Any]):
    """A file lock whose timeout is a StoreError."""

    def __init__(self, lock: FileLock, key: str) -> None:
        self.lock, self.key = lock, key

    def __enter__(self) -> Any:
        try:
            return self.lock.acquire()
        except Timeout as exc:
            raise StoreError(f"the lock of {self.key[:16]}… stayed taken for {LOCK_TIMEOUT_S:g} s") from exc

    def __exit__(self, *exc: object) -> None:
        self.lock.release()
