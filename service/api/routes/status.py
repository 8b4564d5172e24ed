"""/v1/stats, /metrics and /healthz."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, HTTPException, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ...schemas import Health, Stats
from ...store import StoreError
from ..deps import AUTH_ERRORS, Ctx, ReadScope, errors

router = APIRouter(tags=["status"])


@router.get("/v1/stats", response_model=Stats, responses=errors(*AUTH_ERRORS, 503), summary="Cache hits and misses, builds, store size")
async def get_stats(ctx: Ctx, _auth: ReadScope) -> Stats:
    m = ctx.metrics
    size = await asyncio.to_thread(ctx.store.stats)
    return Stats(
        hits=m.value("flexsn_cache_hits"),
        misses=m.value("flexsn_cache_misses"),
        builds_started=m.value("flexsn_builds_started"),
        builds_succeeded=m.value("flexsn_builds_succeeded"),
        builds_failed=m.value("flexsn_builds_failed"),
        **size,
    )


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"},
                       **errors(*AUTH_ERRORS)})
async def get_metrics(ctx: Ctx, _auth: ReadScope) -> Response:
    data = await asyncio.to_thread(generate_latest, ctx.metrics.registry)
    return Response(data, media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz", response_model=Health, responses=errors(503),
            summary="Liveness and a store read/write check (no token needed)")
async def healthz(ctx: Ctx) -> Health:
    try:
        await asyncio.to_thread(ctx.store.check)
    except StoreError as exc:
        raise HTTPException(503, f"store check failed: {exc}") from None
    return Health(status="ok", store="ok", auth="tokens" if ctx.tokens.enabled else "localhost-only")
