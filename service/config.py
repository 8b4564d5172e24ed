"""Service configuration, from ``FLEXSN_SERVICE_*`` environment variables."""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from flexsn_core.compile import KernelConfig, parse_target

__all__ = ["Settings", "get_settings", "parse_configs", "parse_size", "default_http_workers", "usable_cpus"]


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``1500``, ``10M``, ``2.5G``, ``1GiB`` -> bytes (powers of 1024); ValueError otherwise."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (try 500M or 2G)")
    return int(float(match.group(1)) * 1024 ** " kmgt".index(match.group(2).lower() or " "))


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which taskset and cpusets narrow)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def default_http_workers() -> int:
    """2 (1 on a 1-CPU host): on 2 cores the read target was met with 2 or 3 workers and missed with 1,
    and 3 was no faster than 2 (README "How reads are served"); a second worker on one CPU only
    competes with the first, and every worker adds its own read cache and spare build workers."""
    return min(2, usable_cpus())


def parse_configs(text: str) -> list[KernelConfig]:
    """``"1024x4,512x4x2"`` -> configs (block x warps [x stages]), each aligned and unaligned."""
    configs = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        fields = item.lower().split("x")
        if len(fields) not in (2, 3) or not all(f.isdigit() for f in fields):
            raise ValueError(f"config {item!r} must look like 1024x4 or 1024x4x2 (block x warps [x stages])")
        block, warps, stages = int(fields[0]), int(fields[1]), int(fields[2]) if len(fields) == 3 else 1
        if block & (block - 1) or not 16 <= block <= 16384 or warps not in (1, 2, 4, 8, 16, 32):
            raise ValueError(f"config {item!r}: block must be a power of two in 16..16384, warps 1..32")
        configs += [KernelConfig(block, warps, stages, True), KernelConfig(block, warps, stages, False)]
    return configs


class Settings(BaseSettings):
    """Every setting of the service; environment variables override the defaults.

    ``FLEXSN_SERVICE_STORE``        ``disk:PATH`` (embedded diskcache) or ``redis://HOST:PORT/DB`` (shared by replicas)
    ``FLEXSN_SERVICE_TOKENS``       a tokens file (``TOKEN SCOPES [NAME]`` per line); unset: localhost only, no auth
    ``FLEXSN_SERVICE_TARGETS``      archs to cross-compile on a host without a GPU
    ``FLEXSN_SERVICE_BUILD_TIMEOUT_S``, ``FLEXSN_SERVICE_BUILD_MEMORY_MB``: limits of one build
    ``FLEXSN_SERVICE_WORKERS``      builds running at once
    ``FLEXSN_SERVICE_CONFIGS``      kernel configs to build, e.g. ``1024x4,2048x8``
    ``FLEXSN_SERVICE_BUILD_PIDS``, ``FLEXSN_SERVICE_BUILD_SCRATCH_MB``: more limits of one build's jail
    ``FLEXSN_SERVICE_JAIL_BWRAP``   the bubblewrap binary (name on PATH or a path)
    ``FLEXSN_SERVICE_JAIL_UID``     host uid the jail runs as when the service runs as root
    ``FLEXSN_SERVICE_JAIL_CGROUPS`` ``auto`` (use cgroups if writable, else warn and fall back to
                                    rlimits), ``require`` (refuse to start without), ``off``
    ``FLEXSN_SERVICE_FAILED_BUILD_TTL_S``: how long a failed build is answered from memory
    ``FLEXSN_SERVICE_MAX_IR_BYTES`` the most a jail may print (its IR)
    ``FLEXSN_SERVICE_MAX_BYTES``    the store's size limit (``500M``, ``20G``; unset: none): LRU kernels are evicted
    ``FLEXSN_SERVICE_HTTP_WORKERS`` uvicorn worker processes (default: 2, or 1 on a 1-CPU host); build status,
                                    stats and metrics are shared by them, builds stay one per spec
    ``FLEXSN_SERVICE_BUILD_LEASE_S``: how long a dead replica's build blocks the others before one takes it over
    ``FLEXSN_SERVICE_READ_CACHE_MB``: verified blobs and manifests kept in memory (per worker)
    ``FLEXSN_SERVICE_MANIFEST_TTL_S``: how long a manifest is served from memory before its digest is checked
    ``FLEXSN_SERVICE_TOUCH_FLUSH_S``: access times of reads are written in batches this often
    ``FLEXSN_SERVICE_FAST_READS``   ``1`` (default): manifests and blobs in memory are answered before FastAPI
                                    (api/fast_reads.py); ``0`` sends every read through FastAPI
    ``FLEXSN_SERVICE_LOG_FAST_READS``: ``1`` logs every fast-path answer too (default: only refusals and
                                    answers slower than 100 ms; the rest are counted in /metrics)
    ``FLEXSN_SERVICE_SOURCE_CHECK`` TEST ONLY: ``0`` switches the source check off, so that tests
                                    exercise the jail alone. Never in production.
    """

    model_config = SettingsConfigDict(env_prefix="FLEXSN_SERVICE_", extra="ignore")

    store: str = "disk:./flexsn-store"
    tokens: Path | None = None
    targets: str = "cuda:80,cuda:90"
    build_timeout_s: float = Field(default=300.0, gt=0)
    build_memory_mb: int = Field(default=4096, gt=0)
    workers: int = Field(default=2, ge=1)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    max_request_bytes: int = Field(default=1 << 20, gt=0)
    max_source_bytes: int = Field(default=200_000, gt=0)
    #: Use the local GPU (build for its arch and autotune) when there is one.
    use_gpu: bool = True
    #: Kernel configs to build, "BLOCKxWARPS[xSTAGES],..." (each aligned and not); empty: flexsn_core's defaults.
    configs: str = ""
    #: Processes (and threads) of one build, all together.
    build_pids: int = Field(default=32, ge=4, le=4096)
    #: The jail's writable /tmp (a tmpfs; also the largest file a build may write).
    build_scratch_mb: int = Field(default=256, ge=1)
    jail_bwrap: str = "bwrap"
    jail_uid: int = Field(default=65534, ge=1)
    jail_cgroups: Literal["auto", "require", "off"] = "auto"
    failed_build_ttl_s: float = Field(default=600.0, ge=0)
    max_ir_bytes: int = Field(default=16 << 20, ge=1 << 16)
    #: The store's size limit in bytes (``500M``, ``20G`` accepted); None: no limit.
    max_bytes: int | None = None
    #: uvicorn worker processes (default_http_workers). Build status, /v1/stats, the status page and
    #: /metrics answer the same on every worker (shared records, prometheus multiprocess files).
    http_workers: int = Field(default_factory=default_http_workers, ge=1, le=64)
    build_lease_s: float = Field(default=15.0, ge=1.0)
    read_cache_mb: int = Field(default=256, ge=0)
    manifest_ttl_s: float = Field(default=1.0, ge=0)
    touch_flush_s: float = Field(default=5.0, gt=0)
    fast_reads: bool = True
    log_fast_reads: bool = False
    #: TEST ONLY: False skips the source check (in the API and the worker) so tests reach the jail.
    source_check: bool = True

    @field_validator("store")
    @classmethod
    def _store_url(cls, value: str) -> str:
        from .store import store_kind  # checked here, so a bad URL is a one-line settings error, not a traceback

        store_kind(value)
        return value

    @field_validator("max_bytes", mode="before")
    @classmethod
    def _size(cls, value: object) -> object:
        if isinstance(value, str):
            return parse_size(value) if value.strip() else None
        return value

    @field_validator("configs")
    @classmethod
    def _valid_configs(cls, value: str) -> str:
        parse_configs(value)
        return value

    @property
    def config_list(self) -> list[KernelConfig] | None:
        return parse_configs(self.configs) or None

    @field_validator("targets")
    @classmethod
    def _valid_targets(cls, value: str) -> str:
        targets = [t.strip() for t in value.split(",") if t.strip()]
        if not targets:
            raise ValueError("FLEXSN_SERVICE_TARGETS must name at least one target, e.g. cuda:90")
        for target in targets:
            parse_target(target)
        return ",".join(targets)

    @property
    def target_list(self) -> list[str]:
        return self.targets.split(",")

    @property
    def store_directory(self) -> Path | None:
        scheme, _, rest = self.store.partition(":")
        return Path(rest) if scheme == "disk" else None

    @property
    def work_root(self) -> Path:
        """Where the service writes besides the store: ``<store>/work`` (``./flexsn-work/work`` beside a
        Redis store): each process's work folder, the file leases and shared records, the build slots,
        and the metrics folder of several HTTP workers."""
        return ((self.store_directory or Path("flexsn-work")) / "work").resolve()


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
