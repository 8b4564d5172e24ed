"""/v1/stats, /v1/version, /metrics and /healthz."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, HTTPException, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ...overview import Overview, gather
from ...schemas import Health, Stats, TargetStats, Versions
from ...store import StoreError
from ...versions import versions
from ..deps import AUTH_ERRORS, Ctx, ReadScope, errors

router = APIRouter(tags=["status"])


def stats_of(overview: Overview) -> Stats:
    return Stats(
        hits=overview.hits,
        misses=overview.misses,
        hit_rate=overview.hit_rate,
        builds_started=overview.builds_started,
        builds_succeeded=overview.builds_succeeded,
        builds_failed=overview.builds_failed,
        builds_in_flight=len(overview.builds.in_flight),
        builds_failed_last_hour=overview.builds.failures_in_window,
        kernels=overview.kernels,
        bytes=overview.bytes,
        max_bytes=overview.max_bytes,
        store=overview.store,
        by_target={t.target: TargetStats(kernels=t.kernels, last_use=t.last_use) for t in overview.census.by_target},
        by_target_complete=overview.census.complete,
        started=overview.started,
        versions=Versions(**overview.versions),
    )


@router.get("/v1/stats", response_model=Stats, responses=errors(*AUTH_ERRORS, 503),
            summary="Hits, misses and hit rate, builds, store size and limit, kernels per target, versions")
async def get_stats(ctx: Ctx, _auth: ReadScope) -> Stats:
    activity = await ctx.builds.activity()  # every worker's and replica's builds (shared records)
    return stats_of(await asyncio.to_thread(gather, ctx, activity))


@router.get("/v1/version", response_model=Versions,
            summary="Package, API, codegen, IR, Triton, torch and Python versions (no token needed)")
async def get_version() -> Versions:
    # Open like /healthz: a client compares versions (keys depend on codegen and Triton) and
    # recognises a flexsn-cache server before it has a token. Versions are not secrets.
    return Versions(**versions())


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"},
                       **errors(*AUTH_ERRORS)})
async def get_metrics(ctx: Ctx, _auth: ReadScope) -> Response:
    ctx.metrics.fold_fast_reads()  # on the event loop, where the fast path counts
    data = await asyncio.to_thread(ctx.metrics.exposition)  # every worker's counters, the store's size
    return Response(data, media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz", response_model=Health, responses=errors(503),
            summary="Liveness, a store read/write check and the versions (no token needed)")
async def healthz(ctx: Ctx) -> Health:
    try:
        await asyncio.to_thread(ctx.store.check)
    except StoreError as exc:
        raise HTTPException(503, f"store check failed: {exc}") from None
    return Health(status="ok", store="ok", auth="tokens" if ctx.tokens.enabled else "localhost-only",
                  versions=Versions(**versions()))
