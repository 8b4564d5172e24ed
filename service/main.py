"""The FastAPI application: ``create_app(settings)``."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.types import Receive, Scope, Send

from flexsn_core.compile import canonical_target

from .api.deps import ServiceContext
from .api.docs import ASSETS_URL, add_docs
from .api.fast_reads import FastReads
from .api.middleware import AuthGateMiddleware, BodyLimitMiddleware
from .api.routes import blobs, builds, kernels, page, status
from .auth import load_tokens
from .builds.cgroup import CgroupUnavailable, Cgroups
from .builds.cgroup import detect as detect_cgroups
from .builds.jail import Jail, JailLimits, JailUnavailable
from .builds.leases import leases_for
from .builds.manager import BuildManager
from .builds.records import keep_window
from .builds.shared_records import shared_records_for
from .builds.slots import BuildSlots
from .builds.source_check_pool import SourceCheckPool
from .config import Settings, get_settings
from .logs import RequestContextMiddleware, configure_logging
from .metrics import ServiceMetrics
from .store import StoreError, open_store
from .store.limit import SizeLimit
from .store.reads import ReadCache

__all__ = ["create_app", "local_gpu_target"]

logger = logging.getLogger("flexsn_service")


def local_gpu_target() -> str | None:
    """``cuda:XY`` of this host's GPU, or None (also when Triton cannot compile for it)."""
    import torch

    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(0)
    try:
        return canonical_target(f"cuda:{major * 10 + minor}")
    except ValueError as exc:
        logger.warning("not building for this host's GPU: %s", exc)
        return None


def _check_processes() -> int:
    """Source-check processes: one on small hosts (serving reads keeps the other cores)."""
    return 1 if (os.cpu_count() or 1) <= 4 else 2


def spare_workers(settings: Settings) -> int:
    """Warmed-up jail (and compile) workers each HTTP worker keeps: its share of the build slots."""
    return max(1, math.ceil(settings.workers / settings.http_workers))


def start_jail(settings: Settings) -> Jail:
    """The build jail, checked by running it once; raises JailUnavailable (the service must not start)."""
    cgroups: Cgroups | None = None
    if settings.jail_cgroups != "off":
        try:
            cgroups = detect_cgroups()
        except CgroupUnavailable as exc:
            if settings.jail_cgroups == "require":
                raise JailUnavailable(f"FLEXSN_SERVICE_JAIL_CGROUPS=require, but {exc}") from exc
            logger.warning(
                "BUILD LIMITS ARE WEAKER: no cgroup for builds (%s). Each build is bounded by rlimits only: "
                "%d MB of address space per process x %d processes. Give the service a writable (delegated) "
                "cgroup, or set FLEXSN_SERVICE_JAIL_CGROUPS=require to refuse to start without one.",
                exc, settings.build_memory_mb, settings.build_pids,
            )
    limits = JailLimits(
        memory_bytes=settings.build_memory_mb << 20,
        pids=settings.build_pids,
        scratch_bytes=settings.build_scratch_mb << 20,
        cpu_seconds=int(settings.build_timeout_s) + 30,
        # jails at once on this host: every HTTP worker's spares, plus the builds of the shared slots
        concurrency=settings.http_workers * spare_workers(settings) + settings.workers + 2,
    )
    try:
        jail = Jail(bwrap=settings.jail_bwrap, limits=limits, cgroups=cgroups, jail_uid=settings.jail_uid)
        jail.self_test()
    except BaseException:
        if cgroups is not None:
            cgroups.close()
        raise
    logger.info("build jail: %s", jail.describe())
    if not settings.source_check:
        logger.warning("FLEXSN_SERVICE_SOURCE_CHECK=0: the source check is OFF (a setting for tests only)")
    return jail


def _flush_once(reads: ReadCache) -> None:
    try:
        reads.flush()
    except Exception as exc:  # noqa: BLE001 - access times only steer eviction: try again next time
        logger.warning("writing access times failed: %s", exc)


async def _flush_reads(reads: ReadCache, every_s: float) -> None:
    """Write the access times of what was read, in one batch every ``every_s`` (reads write nothing)."""
    while True:
        await asyncio.sleep(every_s)
        await asyncio.to_thread(_flush_once, reads)


def _save_history(metrics: ServiceMetrics) -> None:
    try:
        metrics.save_history()
    except OSError as exc:  # the chart misses this worker's last second: try again next time
        logger.warning("writing this worker's hits per minute failed: %s", exc)


async def _share_metrics(metrics: ServiceMetrics, every_s: float = 1.0) -> None:
    """With several HTTP workers: fold the fast path's counts into the shared counters and write the
    per-minute history every ``every_s``, so a scrape answered by another worker is at most that old."""
    while True:
        await asyncio.sleep(every_s)
        metrics.fold_fast_reads()  # on the event loop, where the fast path counts
        await asyncio.to_thread(_save_history, metrics)


def _route_id(route: APIRoute) -> str:
    """Stable OpenAPI operation ids: the route function's name."""
    return route.name


class ServiceApp(FastAPI):
    """The service's FastAPI app behind the read fast path (api/fast_reads.py), which answers first:
    in front of FastAPI's own per-request work too (its middleware stack, and the check whether
    OpenTelemetry is configured), not only in front of ours."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._front = FastReads(super().__call__, state=self.state)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._front(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging()
    metrics = ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            jail = await asyncio.to_thread(start_jail, settings)
        except JailUnavailable as exc:
            logger.critical("refusing to start: builds run user code and need the jail. %s", exc)
            raise
        store = open_store(settings.store)
        tokens = load_tokens(settings.tokens)
        gpu_target = local_gpu_target() if settings.use_gpu else None
        targets = [gpu_target] if gpu_target else sorted({canonical_target(t) for t in settings.target_list})
        work_root = settings.work_root
        # One build per (key, targets) across the replicas and workers sharing the store.
        replica = f"{socket.gethostname()}-{os.getpid()}"
        leases = leases_for(store, replica=replica, lease_s=settings.build_lease_s,
                            folder=work_root / "leases")  # beside the replicas' work folders, shared by them
        # Build status every worker and replica answers from (Redis, or files beside the leases).
        shared = shared_records_for(store, folder=work_root / "leases" / "status",
                                    keep_s=keep_window(settings.failed_build_ttl_s))
        limit = SizeLimit(store, settings.max_bytes, leases) if settings.max_bytes else None
        manager = BuildManager(
            store,
            work_root,
            jail=jail,
            workers=settings.workers,
            timeout_s=settings.build_timeout_s,
            memory_bytes=settings.build_memory_mb << 20,
            max_source_bytes=settings.max_source_bytes,
            tune_on_gpu=gpu_target is not None,
            metrics=metrics,
            configs=settings.config_list,
            source_check=settings.source_check,
            failure_ttl_s=settings.failed_build_ttl_s,
            max_ir_bytes=settings.max_ir_bytes,
            leases=leases,
            after_store=limit.enforce if limit is not None else None,
            shared=shared,
            # at most `workers` builds at once among every process on this host's work folder
            slots=BuildSlots(work_root / "slots", settings.workers),
            spares=spare_workers(settings),
        )
        manager.start()
        reads = ReadCache(store, max_bytes=settings.read_cache_mb << 20, ttl_s=settings.manifest_ttl_s)
        flusher = asyncio.get_running_loop().create_task(_flush_reads(reads, settings.touch_flush_s))
        sharer = asyncio.get_running_loop().create_task(_share_metrics(metrics)) if metrics.multiprocess else None
        if limit is not None:
            await asyncio.to_thread(manager._enforce_limit)  # a lowered limit applies at once
        metrics.watch_store(store.stats)
        checks = SourceCheckPool(processes=_check_processes())
        app.state.ctx = ServiceContext(settings, store, tokens, manager, metrics, targets, gpu_target, checks, reads)
        if tokens.enabled:
            logger.info("auth: %d bearer token(s) loaded from %s", len(tokens.tokens), settings.tokens)
        else:
            logger.warning(
                "auth: no tokens configured (FLEXSN_SERVICE_TOKENS); serving localhost clients only, without auth"
            )
        logger.info(
            "store %s%s; builds for %s%s; %d build slot(s) on this host, %gs / %d MB per build",
            settings.store if "@" not in settings.store else settings.store.split("://")[0] + "://***",
            f" (size limit {settings.max_bytes} bytes)" if settings.max_bytes else "", ",".join(targets), " (autotuned on this GPU)" if gpu_target else " (cross-compiled)",
            settings.workers, settings.build_timeout_s, settings.build_memory_mb,
        )
        try:
            yield
        finally:
            for task in (flusher, sharer):
                if task is not None:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            metrics.fold_fast_reads()
            await asyncio.to_thread(_save_history, metrics)
            await asyncio.to_thread(_flush_once, reads)
            await manager.shutdown()
            await checks.close()
            store.close()

    app = ServiceApp(
        title="flexsn-cache",
        version="1",
        description="Builds FlexSN spiking-neuron kernels once and serves them to every training job. "
                    "Status page: [/](/). Versions: `GET /v1/version`.",
        lifespan=lifespan,
        generate_unique_id_function=_route_id,
        docs_url=None,  # FastAPI's pages load from a CDN; add_docs serves them from package assets
        redoc_url=None,
    )
    for module in (kernels, blobs, builds, status, page):
        app.include_router(module.router)
    docs_paths = add_docs(app)

    @app.exception_handler(StoreError)
    async def _store_error(_request: Request, exc: StoreError) -> JSONResponse:
        logger.error("store error: %s", exc)
        return JSONResponse({"detail": f"the store is unavailable: {exc}"}, status_code=503)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            f"{'.'.join(str(p) for p in err.get('loc', ()) if p != 'body')}: {err.get('msg')}" for err in exc.errors()
        ]
        return JSONResponse({"detail": "invalid request: " + "; ".join(problems)}, status_code=422)

    def count(request: Request, code: int) -> None:
        route = request.scope.get("route")
        metrics.requests.labels(getattr(route, "path", "unmatched"), str(code)).inc()

    # Outermost last: request ids and logs for every answer, then auth, then the body limit,
    # so an anonymous request is refused (401) before its body is read or measured.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    # Open without a token: health and versions, the API docs and their assets, and the status page
    # (which decides itself what an anonymous visitor sees: api/routes/page.py).
    public = ("/", "/healthz", "/v1/version", *docs_paths)
    app.add_middleware(AuthGateMiddleware, public_paths=public, public_prefixes=(ASSETS_URL + "/",))
    app.add_middleware(RequestContextMiddleware, on_response=count)
    return app
