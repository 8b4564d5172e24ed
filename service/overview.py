"""What the service is doing, in one place: read by ``GET /v1/stats`` and the status page.

Everything here is read-only. The store is a blocking API: callers run
:func:`gather` in a worker thread, after reading the build records
(``BuildManager.activity``: this process's on the event loop, every other
worker's and replica's from the shared records). Counters and the chart are
every HTTP worker's of this ``serve`` (``metrics.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .builds.manager import BuildActivity
from .metrics import MinuteCount
from .store import ManifestInfo, Store
from .versions import versions

__all__ = ["Overview", "KernelCensus", "TargetSummary", "census", "gather", "store_kind", "CENSUS_MAX_KERNELS"]

#: The most kernels one census reads (each is a manifest read); a larger store is counted in part, and says so.
CENSUS_MAX_KERNELS = 10_000
_PAGE = 500


@dataclass(frozen=True)
class TargetSummary:
    target: str
    kernels: int
    last_use: float | None


@dataclass(frozen=True)
class KernelCensus:
    #: most recently used first
    kernels: list[ManifestInfo]
    by_target: list[TargetSummary]
    #: False when the store held more than CENSUS_MAX_KERNELS (the rest were not read)
    complete: bool


@dataclass
class Overview:
    hits: int
    misses: int
    builds_started: int
    builds_succeeded: int
    builds_failed: int
    kernels: int
    bytes: int
    max_bytes: int | None
    store: str
    started: float
    builds: BuildActivity
    census: KernelCensus
    history: list[MinuteCount]
    versions: dict[str, str] = field(default_factory=versions)

    @property
    def hit_rate(self) -> float | None:
        total = self.hits + self.misses
        return self.hits / total if total else None


def store_kind(url: str) -> str:
    """``disk`` or ``redis``: the scheme only, never the URL (a Redis URL may carry a password)."""
    scheme = url.partition(":")[0].lower()
    return {"disk": "disk", "redis": "redis", "rediss": "redis"}.get(scheme, "other")


def census(store: Store, max_kernels: int = CENSUS_MAX_KERNELS) -> KernelCensus:
    """Stored kernels (at most ``max_kernels``, in key order), and per target their count and last use."""
    infos: list[ManifestInfo] = []
    cursor: str | None = None
    while len(infos) < max_kernels:
        page, cursor = store.list(after=cursor, limit=min(_PAGE, max_kernels - len(infos)))
        infos += page
        if cursor is None:
            break
    targets: dict[str, tuple[int, float]] = {}
    for info in infos:
        for target in info.targets:
            count, last = targets.get(target, (0, 0.0))
            targets[target] = (count + 1, max(last, info.last_access))
    by_target = [TargetSummary(t, n, last or None) for t, (n, last) in sorted(targets.items())]
    infos.sort(key=lambda i: i.last_access, reverse=True)
    return KernelCensus(infos, by_target, complete=cursor is None)


def gather(ctx: Any, builds: BuildActivity) -> Overview:
    """The overview of a running service (``ctx``: its ServiceContext). Blocking: run it in a thread.

    ``builds`` is read by the caller on the event loop, which is where build records change.
    """
    m = ctx.metrics
    size = ctx.store.stats()
    counts = m.values("flexsn_cache_hits", "flexsn_cache_misses", "flexsn_builds_started",
                      "flexsn_builds_succeeded", "flexsn_builds_failed")
    return Overview(
        hits=counts["flexsn_cache_hits"],
        misses=counts["flexsn_cache_misses"],
        builds_started=counts["flexsn_builds_started"],
        builds_succeeded=counts["flexsn_builds_succeeded"],
        builds_failed=counts["flexsn_builds_failed"],
        kernels=size["kernels"],
        bytes=size["bytes"],
        # the LRU size limit arrives with the scale-out work (FLEXSN_SERVICE_MAX_BYTES); until then: none
        max_bytes=getattr(ctx.settings, "max_bytes", None),
        store=store_kind(ctx.settings.store),
        started=m.first_started(),
        builds=builds,
        census=census(ctx.store),
        history=m.series(),
    )
