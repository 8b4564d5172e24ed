"""The shared store of several replicas: Redis (``FLEXSN_SERVICE_STORE=redis://HOST:PORT/DB``).

Layout (every name under a prefix, ``flexsn`` unless the URL says ``?prefix=NAME``)::

    PREFIX:blob:<sha>        the bytes
    PREFIX:blobs             set of every stored blob's sha
    PREFIX:bytes             the sum of the stored blobs' sizes (kept by the same script that writes them)
    PREFIX:manifest:<key>    digest line + manifest JSON (flexsn_core.store.envelope)
    PREFIX:meta:<key>        JSON: created, bytes
    PREFIX:manifests         sorted set: every stored key, scored by its last access (LRU order)
    PREFIX:lock:<key>        a key's lease lock (read-modify-write of its manifest: merges, tuning)

Every multi-key change is one Lua script (atomic in Redis), so the blob set, the
byte counter and the LRU index never drift from the values. The key lock is a
lease (``SET NX PX`` with a random token, compare-and-delete release): a
replica that dies while holding it blocks that key for the lease time at most.
A manifest is written only while its writer still holds the key's lease (the
write script checks the token: a writer that stalled past its lease fails
instead of overwriting a newer manifest), so tuning reports and merges from
several replicas are never lost.
"""

from __future__ import annotations

import functools
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis

from .base import CorruptEntry, Store, StoreError

__all__ = ["RedisStore", "LOCK_LEASE_S", "LOCK_WAIT_S"]

#: How long a key's lock lives without its holder (a read-modify-write takes milliseconds).
LOCK_LEASE_S = 30.0
#: How long a writer waits for a key's lock before the store reports an error.
LOCK_WAIT_S = 60.0

F = TypeVar("F", bound=Callable[..., Any])


def _store_errors(method: F) -> F:
    """Connection and server failures are the store being unavailable (503), not a bug."""

    @functools.wraps(method)
    def wrapper(self: RedisStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except redis.RedisError as exc:
            raise StoreError(f"Redis store {self.safe_url} failed: {type(exc).__name__}: {exc}") from exc

    return wrapper  # type: ignore[return-value]


# KEYS: blob, blobs set, bytes counter; ARGV: data, sha
_PUT_BLOB = """
local old = redis.call('STRLEN', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('INCRBY', KEYS[3], string.len(ARGV[1]) - old)
return 1
"""
# KEYS: blob, blobs set, bytes counter; ARGV: sha
_DELETE_BLOB = """
local old = redis.call('STRLEN', KEYS[1])
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
if old > 0 then redis.call('INCRBY', KEYS[3], -old) end
return old
"""
# KEYS: manifest, meta, index, lock; ARGV: text, meta JSON, last access, key, lock token ('' = none held)
_PUT_MANIFEST = """
if ARGV[5] ~= '' and redis.call('GET', KEYS[4]) ~= ARGV[5] then
  return redis.error_reply('LEASE_LOST')
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
return 1
"""
# KEYS: manifest, meta, index; ARGV: key
_DELETE_MANIFEST = """
local existed = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
return existed
"""
# KEYS: meta, index; ARGV: meta JSON, last access, key -- only for a stored manifest
_PUT_META = """
if redis.call('ZSCORE', KEYS[2], ARGV[3]) == false then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
return 1
"""
# KEYS: lock; ARGV: token, lease ms
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def parse_url(url: str) -> tuple[str, str]:
    """``redis://host:port/db?prefix=NAME`` -> (the URL for redis-py, the prefix)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = next((v for k, v in query if k == "prefix"), "flexsn")
    if not prefix or any(c in prefix for c in " \n\r:"):
        raise ValueError(f"prefix {prefix!r} in {url!r}: a name without spaces or ':'")
    rest = urlencode([(k, v) for k, v in query if k != "prefix"])
    return urlunsplit(parts._replace(query=rest)), prefix


class RedisStore(Store):
    """Blobs, manifests and access times in one Redis database, shared by every replica."""

    def __init__(self, url: str, *, client: redis.Redis | None = None) -> None:
        redis_url, self.prefix = parse_url(url)
        self.safe_url = _without_password(redis_url)
        self.client = client or redis.Redis.from_url(
            redis_url, socket_timeout=30, socket_connect_timeout=10, health_check_interval=30
        )
        p = self.prefix
        self._blobs_set, self._bytes, self._index = f"{p}:blobs", f"{p}:bytes", f"{p}:manifests"
        self._put_blob = self.client.register_script(_PUT_BLOB)
        self._del_blob = self.client.register_script(_DELETE_BLOB)
        self._put_manifest = self.client.register_script(_PUT_MANIFEST)
        self._del_manifest = self.client.register_script(_DELETE_MANIFEST)
        self._put_meta = self.client.register_script(_PUT_META)
        self.renew_script = self.client.register_script(_RENEW)
        self.release_script = self.client.register_script(_RELEASE)
        #: this thread's held key locks: key -> [token, depth] (the lock is reentrant in a thread)
        self._held = threading.local()

    def __repr__(self) -> str:
        return f"RedisStore({self.safe_url!r}, prefix={self.prefix!r})"

    def name(self, *parts: str) -> str:
        """A Redis key under this store's prefix (for other shared state: build leases, failures)."""
        return ":".join((self.prefix, *parts))

    # ------------------------------------------------------------- blobs
    @_store_errors
    def has_blob(self, sha: str) -> bool:
        return bool(self.client.exists(self.name("blob", sha)))

    @_store_errors
    def blob_size(self, sha: str) -> int | None:
        size = self.client.strlen(self.name("blob", sha))
        return size if size or self.has_blob(sha) else None

    @_store_errors
    def _write_blob(self, sha: str, data: bytes) -> None:
        self._put_blob(keys=[self.name("blob", sha), self._blobs_set, self._bytes], args=[bytes(data), sha])

    @_store_errors
    def _read_blob_bytes(self, sha: str) -> bytes | None:
        return self.client.get(self.name("blob", sha))

    @_store_errors
    def delete_blob(self, sha: str) -> None:
        self._del_blob(keys=[self.name("blob", sha), self._blobs_set, self._bytes], args=[sha])

    @_store_errors
    def iter_blobs(self) -> Iterator[str]:
        return iter(sorted(sha.decode() for sha in self.client.smembers(self._blobs_set)))

    # --------------------------------------------------------- manifests
    @_store_errors
    def _read_manifest_text(self, key: str) -> str | None:
        data = self.client.get(self.name("manifest", key))
        if data is None:
            return None
        try:
            return data.decode()
        except UnicodeDecodeError as exc:
            raise CorruptEntry(f"manifest {key[:16]}… is not UTF-8 text: {exc}") from None

    @_store_errors
    def read_manifest_digest(self, key: str) -> str | None:
        """The digest line of the stored manifest (71 bytes read, not the whole text)."""
        head = self.client.getrange(self.name("manifest", key), 0, 70)
        return head.decode(errors="replace") if head else None

    @_store_errors
    def _write_manifest_text(self, key: str, text: str, meta: dict[str, Any]) -> None:
        held = self._held_lock(key)
        try:
            self._put_manifest(
                keys=[self.name("manifest", key), self.name("meta", key), self._index, self.name("lock", key)],
                args=[text, json.dumps(_static(meta)), float(meta.get("last_access", time.time())), key,
                      held[0] if held else ""],
            )
        except redis.ResponseError as exc:
            if "LEASE_LOST" in str(exc):
                raise StoreError(f"the lock of {key[:16]}… expired while it was held (a stalled writer); "
                                 "nothing was written") from None
            raise

    @_store_errors
    def _read_meta(self, key: str) -> dict[str, Any] | None:
        with self.client.pipeline(transaction=True) as pipe:
            text, score = pipe.get(self.name("meta", key)).zscore(self._index, key).execute()
        if text is None:
            return None
        meta = json.loads(text)
        if isinstance(meta, dict) and score is not None:
            meta["last_access"] = float(score)
        return meta

    @_store_errors
    def _write_meta(self, key: str, meta: dict[str, Any]) -> None:
        self._put_meta(keys=[self.name("meta", key), self._index],
                       args=[json.dumps(_static(meta)), float(meta.get("last_access", time.time())), key])

    @_store_errors
    def touch(self, key: str, now: float | None = None) -> None:
        """One command: the LRU index's score (only for a stored key: ``ZADD XX``)."""
        self.client.zadd(self._index, {key: time.time() if now is None else now}, xx=True)

    @_store_errors
    def touch_many(self, keys: Iterable[str], now: float | None = None) -> None:
        """Access times of many keys in one round trip (the service batches reads' touches)."""
        stamp = time.time() if now is None else now
        mapping = {key: stamp for key in keys}
        if mapping:
            self.client.zadd(self._index, mapping, xx=True)

    @_store_errors
    def delete_manifest(self, key: str) -> bool:
        existed = self._del_manifest(keys=[self.name("manifest", key), self.name("meta", key), self._index],
                                     args=[key])
        return bool(existed)

    @_store_errors
    def iter_manifest_keys(self) -> Iterator[str]:
        return iter(sorted(k.decode() for k in self.client.zrange(self._index, 0, -1)))

    @_store_errors
    def lru_keys(self) -> list[str]:
        """Every stored key, least recently used first."""
        return [k.decode() for k in self.client.zrange(self._index, 0, -1)]

    @_store_errors
    def stats(self) -> dict[str, int]:
        """From the index and the byte counter: O(1), not a scan."""
        with self.client.pipeline(transaction=True) as pipe:
            kernels, total = pipe.zcard(self._index).get(self._bytes).execute()
        return {"kernels": int(kernels), "bytes": int(total or 0)}

    # ------------------------------------------------------------- locks
    def _held_lock(self, key: str) -> list[Any] | None:
        held: dict[str, list[Any]] = getattr(self._held, "locks", None) or {}
        return held.get(key)

    def _key_lock(self, key: str) -> AbstractContextManager[Any]:
        return _KeyLease(self, key)

    @_store_errors
    def check(self) -> None:
        probe = self.name("probe", uuid.uuid4().hex)
        self.client.set(probe, b"ok", px=10_000)
        if self.client.get(probe) != b"ok":
            raise StoreError(f"Redis store {self.safe_url} read back a different value")
        self.client.delete(probe)

    def close(self) -> None:
        self.client.close()


class _KeyLease(AbstractContextManager[Any]):
    """A key's lease lock, reentrant in one thread; waiting past LOCK_WAIT_S raises StoreError."""

    def __init__(self, store: RedisStore, key: str) -> None:
        self.store, self.key, self.name = store, key, store.name("lock", key)

    def __enter__(self) -> Any:
        locks = getattr(self.store._held, "locks", None)
        if locks is None:
            locks = self.store._held.locks = {}
        if self.key in locks:
            locks[self.key][1] += 1
            return self
        token = uuid.uuid4().hex
        deadline = time.monotonic() + LOCK_WAIT_S
        delay = 0.002
        try:
            while not self.store.client.set(self.name, token, nx=True, px=int(LOCK_LEASE_S * 1000)):
                if time.monotonic() > deadline:
                    raise StoreError(f"the lock of {self.key[:16]}… stayed taken for {LOCK_WAIT_S:g} s")
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
        except redis.RedisError as exc:
            raise StoreError(f"Redis store {self.store.safe_url} failed: {exc}") from exc
        locks[self.key] = [token.encode(), 1]
        return self

    def __exit__(self, *exc: object) -> None:
        locks = self.store._held.locks
        entry = locks[self.key]
        entry[1] -= 1
        if entry[1] == 0:
            del locks[self.key]
            try:
                self.store.release_script(keys=[self.name], args=[entry[0]])
            except redis.RedisError:  # the lease expires on its own
                pass


def _static(meta: dict[str, Any]) -> dict[str, Any]:
    """The metadata that is stored as JSON (the last access lives in the LRU index)."""
    return {k: v for k, v in meta.items() if k != "last_access"}


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        host = parts.hostname or ""
        netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url
