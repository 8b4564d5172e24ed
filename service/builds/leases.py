"""Build leases: one build per (key, targets) across every replica and uvicorn worker sharing a store.

A replica builds a spec only while it holds that spec's lease; the others wait
for the manifest to appear in the store (or for the lease to come free, then
take the build over). Failed builds are remembered here too, so a spec that
just failed on one replica fails at once on every other instead of being rebuilt.

* :class:`RedisLeases` (the Redis store, several hosts): ``SET NX PX`` with a
  token naming the holder, renewed while the build runs (token-checked
  ``PEXPIRE``), released by compare-and-delete. A holder that dies stops
  renewing; its lease expires after ``lease_s`` and another replica takes over.
  Failures: a value with a time to live.
* :class:`FileLeases` (the embedded store, one host): an ``fcntl.flock`` on a
  file in the store folder, which the kernel releases when the holder dies, so
  there is nothing to renew or expire. Failures: small JSON files with an end time.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import time
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..store import Store
    from ..store.redis_store import RedisStore

__all__ = ["Lease", "Leases", "RedisLeases", "FileLeases", "leases_for", "lease_name"]

logger = logging.getLogger("flexsn_service.builds")


def lease_name(key: str, targets: list[str]) -> str:
    """A file- and Redis-safe name of one (key, targets) build."""
    return hashlib.sha256(f"{key}|{','.join(sorted(targets))}".encode()).hexdigest()


class Lease(ABC):
    """One build's lease; not reentrant, used from one task."""

    @abstractmethod
    def try_acquire(self) -> bool:
        """Take the lease if it is free (never blocks); True if this replica holds it now."""

    @abstractmethod
    def renew(self) -> bool:
        """Extend a held lease; False if it was lost (expired and taken by another replica)."""

    @abstractmethod
    def release(self) -> None:
        """Give the lease up (no error if it is not held)."""

    @abstractmethod
    def holder(self) -> str | None:
        """Who holds it (a replica id), if anyone."""


class Leases(ABC):
    def __init__(self, replica: str, lease_s: float) -> None:
        self.replica = replica
        self.lease_s = lease_s

    @abstractmethod
    def lease(self, name: str) -> Lease: ...

    @abstractmethod
    def remember_failure(self, name: str, failure: dict[str, Any], ttl_s: float) -> None:
        """Publish a failed build (``BuildRecord.to_dict()``) to every replica for ``ttl_s``."""

    @abstractmethod
    def failure(self, name: str) -> dict[str, Any] | None:
        """A failure of this build still remembered, if any."""


# ------------------------------------------------------------------ Redis
class _RedisLease(Lease):
    def __init__(self, leases: RedisLeases, name: str) -> None:
        self.leases, self.key = leases, leases.store.name("build", name)
        self.token = f"{leases.replica}/{uuid.uuid4().hex}".encode()

    def try_acquire(self) -> bool:
        client = self.leases.store.client
        return bool(client.set(self.key, self.token, nx=True, px=int(self.leases.lease_s * 1000)))

    def renew(self) -> bool:
        return bool(self.leases.store.renew_script(keys=[self.key], args=[self.token, int(self.leases.lease_s * 1000)]))

    def release(self) -> None:
        self.leases.store.release_script(keys=[self.key], args=[self.token])

    def holder(self) -> str | None:
        value = self.leases.store.client.get(self.key)
        return value.decode(errors="replace").rsplit("/", 1)[0] if value else None


class RedisLeases(Leases):
    def __init__(self, store: RedisStore, replica: str, lease_s: float) -> None:
        super().__init__(replica, lease_s)
        self.store = store

    def lease(self, name: str) -> Lease:
        return _RedisLease(self, name)

    def remember_failure(self, name: str, failure: dict[str, Any], ttl_s: float) -> None:
        if ttl_s > 0:
            self.store.client.set(self.store.name("failed", name), json.dumps(failure), px=max(1, int(ttl_s * 1000)))

    def failure(self, name: str) -> dict[str, Any] | None:
        value = self.store.client.get(self.store.name("failed", name))
        return _parse_failure(value)


# ------------------------------------------------------------------ files
class _FileLease(Lease):
    def __init__(self, leases: FileLeases, name: str) -> None:
        self.leases, self.path = leases, leases.folder / f"{name}.lock"
        self.fd: int | None = None

    def try_acquire(self) -> bool:
        if self.fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, self.leases.replica.encode(), 0)
        self.fd = fd
        return True

    def renew(self) -> bool:
        return self.fd is not None  # the kernel holds it until the process ends

    def release(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.ftruncate(fd, 0)
            os.close(fd)  # closing the descriptor releases the flock

    def holder(self) -> str | None:
        try:
            return self.path.read_text() or None
        except OSError:
            return None


class FileLeases(Leases):
    def __init__(self, folder: Path, replica: str, lease_s: float) -> None:
        super().__init__(replica, lease_s)
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "failed").mkdir(exist_ok=True)

    def lease(self, name: str) -> Lease:
        return _FileLease(self, name)

    def remember_failure(self, name: str, failure: dict[str, Any], ttl_s: float) -> None:
        if ttl_s <= 0:
            return
        path = self.folder / "failed" / f"{name}.json"
        tmp = path.with_name(f".{name}.{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps({**failure, "_until": time.time() + ttl_s}))
        os.replace(tmp, path)

    def failure(self, name: str) -> dict[str, Any] | None:
        path = self.folder / "failed" / f"{name}.json"
        try:
            found = _parse_failure(path.read_bytes())
        except OSError:
            return None
        if found is None or float(found.get("_until", 0)) < time.time():
            path.unlink(missing_ok=True)
            return None
        return found


def _parse_failure(value: bytes | None) -> dict[str, Any] | None:
    if not value:
        return None
    try:
        found = json.loads(value)
    except ValueError:
        return None
    return found if isinstance(found, dict) and isinstance(found.get("error"), str) else None


def leases_for(store: Store, *, replica: str, lease_s: float, folder: Path) -> Leases:
    """The leases that go with ``store``: in Redis for the Redis store, else file locks in ``folder``."""
    try:
        from ..store.redis_store import RedisStore
    except ImportError:  # an install without redis-py serves the embedded store only
        RedisStore = ()  # type: ignore[assignment,misc]  # noqa: N806

    if isinstance(store, RedisStore):
        return RedisLeases(store, replica, lease_s)
    return FileLeases(folder, replica, lease_s)
