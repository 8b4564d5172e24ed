"""Build status shared by every HTTP worker and replica on a store (issue #12).

A build's record lives in the process that runs it (``records.py``). So that
``GET /v1/builds/{id}``, ``/v1/stats`` and the status page answer the same on
every worker and replica, each process also publishes its records' public
state here -- what ``BuildRecord.to_dict()`` gives (the ``BuildStatus``
schema), plus the core's entry name -- on every state change, its progress at
most twice a second, and a heartbeat while the build runs
(``BuildManager._publish``). Kept for the records' keep window (1 h).

Where it lives is where the build leases live (``leases.py``):

* :class:`RedisSharedRecords` (the Redis store): ``<prefix>:status:<id>`` with
  a time to live, and two sorted sets indexing the builds in flight (by
  heartbeat) and the failures (by end time), pruned on every write;
* :class:`FileSharedRecords` (the embedded store): ``<leases>/status/records/<id>.json``,
  written atomically (a temporary file, then ``os.replace``), and empty marker
  files in ``inflight/`` (mtime: heartbeat) and ``failed/`` (mtime: end time);
  expired files are pruned on write, at most once a minute per process.

Trust: a shared record is data written by another process that shares the
store -- JSON, never code, a pickle or a path. Build ids are checked (32 hex
digits) before they name a file or key; a record is read with a size bound,
validated against :class:`SharedBuild` (``BuildStatus`` inside) and must carry
the id it was asked for. Anything unreadable, damaged or expired reads as
absent (a 404, never a 500). What a record holds is bounded when it is
published (``bounded_status``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..schemas import BuildStatus

if TYPE_CHECKING:
    from ..store import Store
    from ..store.redis_store import RedisStore

__all__ = [
    "SharedBuild", "SharedRecords", "FileSharedRecords", "RedisSharedRecords", "shared_records_for",
    "bounded_status", "is_build_id", "MAX_RECORD_BYTES",
]

logger = logging.getLogger("flexsn_service.builds")

#: The most one shared record may take (a full log tail is about 25 kB); larger reads as damaged.
MAX_RECORD_BYTES = 64 << 10
#: How many ids one listing reads at most (in flight; failures are counted in full, listed up to ``limit``).
MAX_LISTED = 500
_BUILD_ID = re.compile(r"[0-9a-f]{32}")
_MAX_ERROR_CHARS = 4000
_MAX_STAGE_CHARS = 200
_MAX_LINE_CHARS = 500


def is_build_id(text: str) -> bool:
    """Our build ids are ``uuid4().hex``; anything else never names a file or a Redis key."""
    return _BUILD_ID.fullmatch(text) is not None


class SharedBuild(BaseModel):
    """One published record: the public status and what the status page needs beside it."""

    model_config = ConfigDict(extra="forbid")

    v: Literal[1] = 1
    status: BuildStatus
    #: the core's entry name (a Python identifier, checked by the spec)
    entry: str = Field(max_length=256)
    #: the record follows another replica's build (its own failure or progress is that build's)
    joined: bool
    #: when it was published last (a build in flight is published at least every heartbeat)
    beat: float
    #: when it expires
    until: float

    @property
    def build_id(self) -> str:
        return self.status.build_id

    @property
    def in_flight(self) -> bool:
        return self.status.state in ("queued", "running")


def bounded_status(status: dict[str, Any]) -> dict[str, Any]:
    """``BuildRecord.to_dict()`` with every field cut to a known size (progress comes from the jail)."""
    progress = status.get("progress") or {}

    def count(value: Any) -> int:
        return value if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 1 << 53 else 0

    error = status.get("error")
    return {
        **status,
        "progress": {"stage": str(progress.get("stage", ""))[:_MAX_STAGE_CHARS],
                     "done": count(progress.get("done")), "total": count(progress.get("total"))},
        "error": error[:_MAX_ERROR_CHARS] if isinstance(error, str) else None,
        "log_tail": [str(line)[:_MAX_LINE_CHARS] for line in status.get("log_tail") or []],
    }


def _parse(data: bytes | None, build_id: str) -> SharedBuild | None:
    """A validated record of ``build_id``, or None for anything else (absent, damaged, expired)."""
    if not data or len(data) > MAX_RECORD_BYTES:
        return None
    try:
        found = SharedBuild.model_validate_json(data)
    except ValidationError:
        return None
    if found.build_id != build_id or found.until < time.time():
        return None
    return found


class SharedRecords(ABC):
    """Published build records of every process on one store."""

    def __init__(self, keep_s: float) -> None:
        self.keep_s = keep_s

    def record(self, status: dict[str, Any], *, entry: str, joined: bool) -> SharedBuild:
        """The record to publish for ``status`` (a ``BuildRecord.to_dict()``), now."""
        now = time.time()
        return SharedBuild(status=BuildStatus(**bounded_status(status)), entry=entry[:256], joined=joined,
                           beat=now, until=now + self.keep_s)

    @abstractmethod
    def publish(self, record: SharedBuild) -> None:
        """Write (or replace) ``record``; blocking. Raises OSError/RedisError when the backend fails."""

    @abstractmethod
    def get(self, build_id: str) -> SharedBuild | None:
        """The record of ``build_id`` if one is published, intact and not expired."""

    @abstractmethod
    def in_flight(self, stale_s: float) -> list[SharedBuild]:
        """Builds queued or running (not records following another's build), published within ``stale_s``."""

    @abstractmethod
    def failures(self, window_s: float, limit: int) -> tuple[int, list[SharedBuild]]:
        """How many builds failed within ``window_s`` (not counting records that followed another's build),
        and the newest ``limit`` of them, newest first."""

    @staticmethod
    def _indexed_as_failure(record: SharedBuild) -> bool:
        return record.status.state == "failed" and not record.joined

    @staticmethod
    def _indexed_in_flight(record: SharedBuild) -> bool:
        return record.in_flight and not record.joined


# ------------------------------------------------------------------ files
class FileSharedRecords(SharedRecords):
    """Records as files in a folder every process on the store folder shares (one host)."""

    PRUNE_EVERY_S = 60.0

    def __init__(self, folder: Path, keep_s: float) -> None:
        super().__init__(keep_s)
        self.records = folder / "records"
        self.inflight_dir = folder / "inflight"
        self.failed_dir = folder / "failed"
        for path in (self.records, self.inflight_dir, self.failed_dir):
            path.mkdir(parents=True, exist_ok=True)
        self._pruned = 0.0

    def _path(self, build_id: str) -> Path:
        if not is_build_id(build_id):
            raise ValueError(f"not a build id: {build_id!r}")
        return self.records / f"{build_id}.json"

    def publish(self, record: SharedBuild) -> None:
        build_id = record.build_id
        path = self._path(build_id)
        tmp = self.records / f".{build_id}.{uuid.uuid4().hex}.tmp"
        try:
            tmp.write_text(record.model_dump_json())
            os.replace(tmp, path)  # readers see the old record or the new one, never a part
        finally:
            tmp.unlink(missing_ok=True)
        marker = self.inflight_dir / build_id
        if self._indexed_in_flight(record):
            marker.touch()
            os.utime(marker, (record.beat, record.beat))
        else:
            marker.unlink(missing_ok=True)
        if self._indexed_as_failure(record):
            failed = self.failed_dir / build_id
            failed.touch()
            end = record.status.finished or record.beat
            os.utime(failed, (end, end))
        self._prune()

    def get(self, build_id: str) -> SharedBuild | None:
        if not is_build_id(build_id):
            return None
        try:
            with open(self._path(build_id), "rb") as fh:
                data = fh.read(MAX_RECORD_BYTES + 1)
        except OSError:
            return None
        return _parse(data, build_id)

    def _markers(self, folder: Path, since: float) -> list[tuple[float, str]]:
        """(mtime, id) of the markers in ``folder`` touched at or after ``since``."""
        found = []
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return []
        for entry in entries:
            if not is_build_id(entry.name):
                continue
            try:
                mtime = entry.stat().st_mtime
            except OSError:
                continue  # removed meanwhile
            if mtime >= since:
                found.append((mtime, entry.name))
        return found

    def in_flight(self, stale_s: float) -> list[SharedBuild]:
        markers = sorted(self._markers(self.inflight_dir, time.time() - stale_s))[:MAX_LISTED]
        records = (self.get(build_id) for _, build_id in markers)
        return [r for r in records if r is not None and self._indexed_in_flight(r)]

    def failures(self, window_s: float, limit: int) -> tuple[int, list[SharedBuild]]:
        markers = sorted(self._markers(self.failed_dir, time.time() - window_s), reverse=True)
        records = (self.get(build_id) for _, build_id in markers[:limit])
        return len(markers), [r for r in records if r is not None and self._indexed_as_failure(r)]

    def _prune(self) -> None:
        """Remove expired records and markers (and temporary files left by a crash); once a minute."""
        now = time.time()
        if now - self._pruned < self.PRUNE_EVERY_S:
            return
        self._pruned = now
        for folder in (self.records, self.inflight_dir, self.failed_dir):
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue
            for entry in entries:
                try:
                    if entry.stat().st_mtime < now - self.keep_s:
                        os.unlink(entry.path)
                except OSError:
                    continue


# ------------------------------------------------------------------ Redis
class RedisSharedRecords(SharedRecords):
    """Records in the Redis store's database, beside the build leases (several hosts)."""

    def __init__(self, store: RedisStore, keep_s: float) -> None:
        super().__init__(keep_s)
        self.store = store
        self.inflight_index = store.name("status-index", "inflight")
        self.failed_index = store.name("status-index", "failed")

    def _key(self, build_id: str) -> str:
        if not is_build_id(build_id):
            raise ValueError(f"not a build id: {build_id!r}")
        return self.store.name("status", build_id)

    def publish(self, record: SharedBuild) -> None:
        build_id = record.build_id
        expired = record.beat - self.keep_s
        with self.store.client.pipeline(transaction=True) as pipe:
            pipe.set(self._key(build_id), record.model_dump_json(), px=max(1, int(self.keep_s * 1000)))
            if self._indexed_in_flight(record):
                pipe.zadd(self.inflight_index, {build_id: record.beat})
            else:
                pipe.zrem(self.inflight_index, build_id)
            if self._indexed_as_failure(record):
                pipe.zadd(self.failed_index, {build_id: record.status.finished or record.beat})
            pipe.zremrangebyscore(self.inflight_index, "-inf", expired)
            pipe.zremrangebyscore(self.failed_index, "-inf", expired)
            pipe.execute()

    def get(self, build_id: str) -> SharedBuild | None:
        if not is_build_id(build_id):
            return None
        return _parse(self.store.client.get(self._key(build_id)), build_id)

    def _records(self, ids: list[bytes]) -> list[SharedBuild]:
        names = [i.decode(errors="replace") for i in ids]
        names = [n for n in names if is_build_id(n)]
        if not names:
            return []
        values = self.store.client.mget([self._key(n) for n in names])
        return [r for r in (_parse(v, n) for n, v in zip(names, values)) if r is not None]

    def in_flight(self, stale_s: float) -> list[SharedBuild]:
        ids = self.store.client.zrangebyscore(self.inflight_index, time.time() - stale_s, "+inf", start=0,
                                              num=MAX_LISTED)
        return [r for r in self._records(ids) if self._indexed_in_flight(r)]

    def failures(self, window_s: float, limit: int) -> tuple[int, list[SharedBuild]]:
        since = time.time() - window_s
        count = int(self.store.client.zcount(self.failed_index, since, "+inf"))
        ids = self.store.client.zrevrangebyscore(self.failed_index, "+inf", since, start=0, num=limit)
        return count, [r for r in self._records(ids) if self._indexed_as_failure(r)]


def shared_records_for(store: Store, *, folder: Path, keep_s: float) -> SharedRecords:
    """The shared records that go with ``store``: in Redis for the Redis store, else files in ``folder``."""
    try:
        from ..store.redis_store import RedisStore
    except ImportError:  # an install without redis-py serves the embedded store only
        RedisStore = ()  # type: ignore[assignment,misc]  # noqa: N806

    if isinstance(store, RedisStore):
        return RedisSharedRecords(store, keep_s)
    return FileSharedRecords(folder, keep_s)
