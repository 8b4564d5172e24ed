"""Prometheus metrics of one service instance, and hits/misses per minute.

One instance is one ``serve``: with several HTTP workers (``serve
--http-workers N``) every worker counts into prometheus_client's multiprocess
files (``PROMETHEUS_MULTIPROC_DIR``, a fresh folder ``serve`` makes below the
service's work folder and removes), and ``/metrics``, ``/v1/stats`` and the status page read the sums of
all workers, whichever worker answers. Counters and the build-time histogram
add up across workers honestly. The store's size is read from the (shared)
store when scraped, by the worker that answers, never stored per worker. The
per-minute history (the status page's chart) is written by each worker to a
small JSON file in the same folder every second and summed on reading. Each
replica (another ``serve``) counts its own; Prometheus adds replicas up.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

__all__ = ["ServiceMetrics", "MinuteHistory", "MinuteCount", "multiprocess_dir", "MULTIPROC_ENV"]

#: the variable prometheus_client reads, when it is imported, to count into files shared by processes
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_HISTORY_PREFIX = "history_"


def multiprocess_dir() -> Path | None:
    """The multiprocess folder, if this process counts into one (set before prometheus_client was imported)."""
    folder = os.environ.get(MULTIPROC_ENV)
    if not folder or not getattr(values.ValueClass, "_multiprocess", False) or not os.path.isdir(folder):
        return None
    return Path(folder)


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

    def buckets(self) -> list[list[int]]:
        """[minute, hits, misses] of the minutes with counts, oldest first (a copy)."""
        with self._lock:
            return [list(b) for b in self._ring]

    def series(self, others: Iterable[list[Any]] = ()) -> list[MinuteCount]:
        """One entry per minute of the window, oldest first, ending with the current minute (zeros filled in);
        ``others``: more [minute, hits, misses] buckets (other workers') added in."""
        seen: dict[int, list[int]] = {}
        for minute, hits, misses in [*self.buckets(), *others]:
            bucket = seen.setdefault(int(minute), [0, 0])
            bucket[0] += int(hits)
            bucket[1] += int(misses)
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


class _Scrape:
    """What /metrics shows: the counters (this process's, or every worker's) and the store's size."""

    def __init__(self, counters: CollectorRegistry, store: Callable[[], Iterator[Metric]]) -> None:
        self.counters = counters
        self.store = store

    def collect(self) -> Iterator[Metric]:
        yield from self.counters.collect()
        yield from self.store()


class ServiceMetrics:
    def __init__(self, history_minutes: int = 60, *, folder: Path | None = None) -> None:
        """``folder``: the multiprocess folder (default: :func:`multiprocess_dir`; None: this process only)."""
        self.registry = CollectorRegistry()
        r = self.registry
        self.folder = folder if folder is not None else multiprocess_dir()
        #: when this instance started counting (the counters are since then)
        self.started = time.time()
        self.history = MinuteHistory(history_minutes)
        self._saved_history: str | None = None
        # Read back: this process's registry, or the sums of every worker's files.
        if self.folder is None:
            self.counters = self.registry
        else:
            self.counters = CollectorRegistry()
            MultiProcessCollector(self.counters, path=str(self.folder))
        self._store_stats: Callable[[], dict[str, int]] | None = None
        self.scrape = CollectorRegistry(auto_describe=False)
        self.scrape.register(_Scrape(self.counters, self._store_metrics))
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

    @property
    def multiprocess(self) -> bool:
        return self.folder is not None

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
        """Read the store's size when metrics are scraped (the store is shared: one reading, not a sum)."""
        self._store_stats = stats

    def _store_metrics(self) -> Iterator[Metric]:
        if self._store_stats is None:
            return
        size = self._store_stats()
        yield GaugeMetricFamily("flexsn_store_kernels", "Manifests in the store", value=size["kernels"])
        yield GaugeMetricFamily("flexsn_store_bytes", "Blob bytes in the store", value=size["bytes"])

    def exposition(self) -> bytes:
        """The Prometheus text of every worker (blocking: reads files and the store; fold first)."""
        return generate_latest(self.scrape)

    def value(self, name: str) -> int:
        """A counter's total (every worker's, in multiprocess mode)."""
        return self.values(name)[name]

    def values(self, *names: str) -> dict[str, int]:
        """Several counters' totals from one reading."""
        wanted = {f"{name}_total": name for name in names}
        found = dict.fromkeys(names, 0)
        for metric in self.counters.collect():
            for sample in metric.samples:
                if sample.name in wanted and not sample.labels:
                    found[wanted[sample.name]] += int(sample.value)
        return found

    # ----------------------------------------------------------- several workers
    def save_history(self) -> None:
        """Write this worker's per-minute counts and start time for the others (multiprocess mode; a
        thread). Atomic (temporary file, then rename), and only when they changed."""
        if self.folder is None:
            return
        text = json.dumps({"pid": os.getpid(), "started": self.started, "buckets": self.history.buckets()})
        if text == self._saved_history:
            return
        path = self.folder / f"{_HISTORY_PREFIX}{os.getpid()}.json"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
        self._saved_history = text

    def _peers(self) -> list[dict[str, Any]]:
        """The other workers' saved histories (those of workers that ended too: their counts happened)."""
        if self.folder is None:
            return []
        peers = []
        for path in self.folder.glob(f"{_HISTORY_PREFIX}*.json"):
            if path.name == f"{_HISTORY_PREFIX}{os.getpid()}.json":
                continue
            try:
                saved = json.loads(path.read_text())
                buckets = [[int(m), int(h), int(x)] for m, h, x in saved["buckets"]]
                peers.append({"started": float(saved["started"]), "buckets": buckets})
            except (OSError, ValueError, TypeError, KeyError):
                continue  # being replaced, or not ours: skip it this time
        return peers

    def series(self) -> list[MinuteCount]:
        """Hits and misses per minute of every worker (blocking in multiprocess mode: reads files)."""
        return self.history.series(b for peer in self._peers() for b in peer["buckets"])

    def first_started(self) -> float:
        """When the first worker started counting."""
        return min([self.started, *(peer["started"] for peer in self._peers())])
