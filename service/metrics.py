"""Prometheus metrics of one service instance (its own registry), and hits/misses per minute.

The per-minute history feeds the status page's chart; Prometheus keeps the
long-term series. Both count this instance only (each replica its own).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ServiceMetrics", "MinuteHistory", "MinuteCount"]


@dataclass(frozen=True)
class MinuteCount:
    #: start of the minute (epoch seconds, a multiple of 60)
    minute: int
    hits: int
    misses: int


class MinuteHistory:
    """Hits and misses per wall-clock minute, for the last ``minutes`` minutes (a ring buffer)."""

    def __init__(self, minutes: int = 60, clock: Callable[[], float] = time.time) -> None:
        self.minutes = minutes
        self._clock = clock
        self._lock = threading.Lock()  # counted on the event loop, read from worker threads
        self._ring: deque[list[int]] = deque(maxlen=minutes)  # [minute, hits, misses], oldest first

    def _bucket(self, now: float) -> list[int]:
        minute = int(now // 60) * 60
        if not self._ring or self._ring[-1][0] != minute:
            self._ring.append([minute, 0, 0])
        return self._ring[-1]

    def add(self, *, hits: int = 0, misses: int = 0) -> None:
        with self._lock:
            bucket = self._bucket(self._clock())
            bucket[1] += hits
            bucket[2] += misses

    def series(self) -> list[MinuteCount]:
        """One entry per minute of the window, oldest first, ending with the current minute (zeros filled in)."""
        with self._lock:
            seen = {b[0]: (b[1], b[2]) for b in self._ring}
            now = int(self._clock() // 60) * 60
        first = now - 60 * (self.minutes - 1)
        return [MinuteCount(m, *seen.get(m, (0, 0))) for m in range(first, now + 1, 60)]


class _CountedInHistory:
    """A Prometheus counter whose increments also land in the per-minute history."""

    def __init__(self, counter: Counter, add: Callable[[int], None]) -> None:
        self._counter = counter
        self._add = add

    def inc(self, amount: int = 1) -> None:
        self._counter.inc(amount)
        self._add(amount)


class ServiceMetrics:
    def __init__(self, history_minutes: int = 60) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        #: when this instance started counting (the counters are since then)
        self.started = time.time()
        self.history = MinuteHistory(history_minutes)
        self.hits = _CountedInHistory(
            Counter("flexsn_cache_hits", "Kernel requests answered from the store", registry=r),
            lambda n: self.history.add(hits=n),
        )
        self.misses = _CountedInHistory(
            Counter("flexsn_cache_misses", "Kernel requests that needed a build", registry=r),
            lambda n: self.history.add(misses=n),
        )
        self.builds_started = Counter("flexsn_builds_started", "Builds started", registry=r)
        self.builds_succeeded = Counter("flexsn_builds_succeeded", "Builds that stored an artifact", registry=r)
        self.builds_failed = Counter("flexsn_builds_failed", "Builds that failed", registry=r)
        self.build_seconds = Histogram(
            "flexsn_build_seconds", "Wall time of a build", registry=r,
            buckets=(1, 2, 5, 10, 20, 40, 80, 160, 320),
        )
        self.requests = Counter(
            "flexsn_http_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.fast_reads = Counter(
            "flexsn_http_fast_reads", "Reads answered by the fast path (memory), also in flexsn_http_requests",
            ["route", "status"], registry=r,
        )
        #: fast-path answers not yet in the two counters above, by (route, status); event loop only
        self._fast_pending: dict[tuple[str, int], int] = {}
        self.kernels = Gauge("flexsn_store_kernels", "Manifests in the store", registry=r)
        self.bytes = Gauge("flexsn_store_bytes", "Blob bytes in the store", registry=r)

    def count_fast_read(self, route: str, status: int) -> None:
        """One answer of the read fast path, as a plain integer (a Prometheus increment takes a lock and
        costs a tenth of the whole fast path): ``fold_fast_reads`` adds them up before a scrape.
        On the event loop only, like ``fold_fast_reads``, so no count is lost between them."""
        key = (route, status)
        self._fast_pending[key] = self._fast_pending.get(key, 0) + 1

    def fold_fast_reads(self) -> None:
        """Add the fast path's answers to ``flexsn_http_requests`` and ``flexsn_http_fast_reads`` (event loop)."""
        pending, self._fast_pending = self._fast_pending, {}
        for (route, status), count in pending.items():
            self.requests.labels(route, str(status)).inc(count)
            self.fast_reads.labels(route, str(status)).inc(count)

    def watch_store(self, stats: Callable[[], dict[str, int]]) -> None:
        """Read the store's size when metrics are scraped."""
        self.kernels.set_function(lambda: stats()["kernels"])
        self.bytes.set_function(lambda: stats()["bytes"])

    def value(self, name: str) -> int:
        sample = self.registry.get_sample_value(f"{name}_total")
        return int(sample or 0)
