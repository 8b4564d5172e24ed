"""Build records: what a build is doing, single flight per (key, targets), and remembered failures.

Single flight: a request joins a build in flight for the same key only when
that build compiles every target the request asks for (issue #11: a request
for ``cuda:90`` that joined an in-flight ``cuda:80`` build got a manifest
without ``cuda:90``). Otherwise it starts its own build for its targets; the
two builds' binaries are merged when they are stored.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from flexsn_core.spec import KernelSpec

__all__ = ["BuildRecord", "BuildView", "BuildFailure", "RecordBook", "LOG_TAIL_LINES", "WAITING_STAGE", "keep_window"]

LOG_TAIL_LINES = 40
#: the progress stage of a record that waits for another replica's (or worker's) build of its spec
WAITING_STAGE = "waiting for another replica"


@dataclass(frozen=True)
class BuildView:
    """What the status page and /v1/stats show of a build: from this process's record or a shared one."""

    id: str
    key: str
    entry: str
    targets: list[str]
    state: str
    stage: str
    created: float
    finished: float | None
    error_type: str | None


@dataclass
class BuildRecord:
    id: str
    key: str
    spec: KernelSpec
    targets: list[str]
    state: str = "queued"  # queued | running | succeeded | failed
    progress: dict[str, Any] = field(default_factory=lambda: {"stage": "queued", "done": 0, "total": 0})
    error: str | None = None
    error_type: str | None = None
    user_error: bool = False
    #: for an UnsupportedOpError: the aten op and the line of the core source (the client raises the same error)
    error_op: str | None = None
    error_line: int | None = None
    log: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_TAIL_LINES))
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    #: True while this record follows another replica's build of its spec (and after, if it ended with
    #: that build's result): not a build of its own, so not listed as one (shared_records.py)
    joined: bool = False

    def view(self) -> BuildView:
        return BuildView(self.id, self.key, self.spec.entry, list(self.targets), self.state,
                         str(self.progress.get("stage", "")), self.created, self.finished, self.error_type)

    def to_dict(self) -> dict[str, Any]:
        return {
            "build_id": self.id,
            "key": self.key,
            "state": self.state,
            "targets": self.targets,
            "progress": self.progress,
            "error": self.error,
            "error_type": self.error_type,
            "user_error": self.user_error,
            "error_op": self.error_op,
            "error_line": self.error_line,
            "log_tail": list(self.log),
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
        }


def keep_window(failure_ttl_s: float) -> float:
    """How long finished records are kept (here and in the shared records): an hour, or the failure TTL."""
    return max(3600.0, failure_ttl_s)


class BuildFailure(Exception):
    """A build ended without an artifact.

    ``user_error``: caused by the core (422 to a waiting client), not by the
    service (503). ``remember``: the same spec and targets fail again at once
    for a while instead of being rebuilt (not for failures of the service
    itself, such as a store error or a shutdown).
    """

    def __init__(
        self,
        message: str,
        error_type: str,
        user_error: bool,
        *,
        remember: bool = True,
        op: str | None = None,
        line: int | None = None,
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.user_error = user_error
        self.remember = remember
        self.op = op
        self.line = line


class RecordBook:
    """Every build's record (finished ones kept for ``keep_s``), the ones in flight, and recent failures."""

    def __init__(self, *, failure_ttl_s: float, keep_s: float = 3600.0, max_records: int = 10_000) -> None:
        self.failure_ttl_s = failure_ttl_s
        self.keep_s = keep_s
        self.max_records = max_records
        self.records: OrderedDict[str, BuildRecord] = OrderedDict()
        #: builds in flight by key: a key may have several, for different targets
        self.inflight: dict[str, list[BuildRecord]] = {}
        self._failures: dict[tuple[str, tuple[str, ...]], BuildRecord] = {}

    def get(self, build_id: str) -> BuildRecord | None:
        return self.records.get(build_id)

    def current(self, key: str, targets: list[str]) -> BuildRecord | None:
        """A build in flight for ``key`` that covers ``targets``, or a failure of these targets still remembered."""
        wanted = set(targets)
        for record in self.inflight.get(key, ()):
            if wanted <= set(record.targets):
                return record
        failed = self._failures.get((key, tuple(sorted(targets))))
        if failed is not None and failed.finished is not None and time.time() - failed.finished < self.failure_ttl_s:
            return failed
        return None

    def add(self, record: BuildRecord) -> None:
        self._prune()
        self.records[record.id] = record
        self.inflight.setdefault(record.key, []).append(record)

    def finish(self, record: BuildRecord, *, remember_failure: bool) -> None:
        if record.finished is None:  # the manager sets it before it publishes the final state
            record.finished = time.time()
        running = [r for r in self.inflight.get(record.key, ()) if r is not record]
        if running:
            self.inflight[record.key] = running
        else:
            self.inflight.pop(record.key, None)
        if record.state == "failed" and remember_failure and self.failure_ttl_s > 0:
            self._failures[(record.key, tuple(sorted(record.targets)))] = record
        record.done.set()

    def _prune(self) -> None:
        now = time.time()
        while self.records:
            oldest = next(iter(self.records.values()))
            expired = oldest.finished is not None and now - oldest.finished > self.keep_s
            if not expired and len(self.records) < self.max_records:
                break
            if oldest.finished is None:  # over the count but still running: keep it, stop pruning
                break
            self.records.popitem(last=False)
        for failure_key, failed in list(self._failures.items()):
            if failed.finished is not None and now - failed.finished >= self.failure_ttl_s:
                del self._failures[failure_key]
