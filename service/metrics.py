"""Prometheus metrics of one service instance (its own registry)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ServiceMetrics"]


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.hits = Counter("flexsn_cache_hits", "Kernel requests answered from the store", registry=r)
        self.misses = Counter("flexsn_cache_misses", "Kernel requests that needed a build", registry=r)
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
        self.kernels = Gauge("flexsn_store_kernels", "Manifests in the store", registry=r)
        self.bytes = Gauge("flexsn_store_bytes", "Blob bytes in the store", registry=r)

    def watch_store(self, stats: Callable[[], dict[str, int]]) -> None:
        """Read the store's size when metrics are scraped."""
        self.kernels.set_function(lambda: stats()["kernels"])
        self.bytes.set_function(lambda: stats()["bytes"])

    def value(self, name: str) -> int:
        sample = self.registry.get_sample_value(f"{name}_total")
        return int(sample or 0)
