"""/v1/kernels: request (build) kernels, read, list, delete, report tuning."""

from __future__ import annotations

import asyncio
import io
import tarfile
import time
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse

from flexsn_core.compile import canonical_target
from flexsn_core.manifest import Manifest, TuningChoice, TuningError, targets_of
from flexsn_core.spec import KernelSpec

from ...builds.source_check import SourceRejected
from ...builds.source_check_pool import CheckUnavailable
from ...schemas import (
    BuildAccepted,
    BuildFailed,
    BuildRequest,
    ErrorMessage,
    KernelPage,
    KernelSummary,
    TuningReport,
    TuningResult,
)
from ...store.reads import MANIFEST_CACHE_CONTROL
from ..deps import AUTH_ERRORS, AdminScope, BuildScope, Ctx, ReadScope, SpecKey, errors, etag_matches

router = APIRouter(prefix="/v1/kernels", tags=["kernels"])

#: How long ``wait=true`` may wait beyond the build's own time limit (queueing, tuning, storing)
#: before it answers 202 and leaves the rest to polling: a request never hangs on a build.
WAIT_MARGIN_S = 60.0

_MANIFEST = {"model": Manifest, "description": "the manifest (spec, kernels, binaries by sha256, tuning)"}
_FAILED_BUILD = {"model": ErrorMessage | BuildFailed}


async def _spec(body: BuildRequest, ctx: Ctx) -> KernelSpec:
    data = body.model_dump(exclude={"targets"})
    try:
        spec = KernelSpec.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise HTTPException(422, f"invalid spec: {exc}") from None
    # FLEXSN_SERVICE_SOURCE_CHECK=0 is a test-only setting that skips the check so that the jail
    # alone is tested: the check is a courtesy, the jail is the boundary.
    if ctx.settings.source_check:
        try:
            await ctx.checks.check(spec, max_bytes=ctx.settings.max_source_bytes)
        except SourceRejected as exc:
            raise HTTPException(422, f"the core source was rejected: {exc}") from None
        except CheckUnavailable as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": "5"}) from None
    return spec


def _targets(requested: list[str] | None, ctx: Ctx) -> list[str]:
    """Canonical targets (``cuda:090`` is ``cuda:90``); 422 for one Triton cannot compile for."""
    try:
        return sorted({canonical_target(t) for t in requested or ctx.targets})
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None


def _has_targets(manifest: dict[str, Any], targets: list[str]) -> bool:
    return set(targets) <= targets_of(manifest)


def _failure_detail(record: Any) -> dict[str, Any]:
    return {
        "message": f"the build failed: {record.error}",
        "build_id": record.id,
        "error_type": record.error_type,
        "error_op": record.error_op,
        "error_line": record.error_line,
        "log_tail": list(record.log)[-10:],
    }


def _accepted(record: Any, key: str) -> JSONResponse:
    body = BuildAccepted(build_id=record.id, key=key, state=record.state, status_url=f"/v1/builds/{record.id}")
    return JSONResponse(body.model_dump(), status_code=202)


@router.post(
    "",
    status_code=200,
    response_model=Manifest,
    responses={
        200: _MANIFEST,
        202: {"model": BuildAccepted, "description": "not cached: a build was started or joined (poll status_url)"},
        **errors(*AUTH_ERRORS, 413, 422, 503),
        422: {**_FAILED_BUILD, "description": "invalid spec, source or target; or (wait=true) the build failed"},
        503: {**_FAILED_BUILD, "description": "store or source check unavailable; or (wait=true) the build "
                                              "failed for a reason of the service's own"},
    },
    summary="Get the manifest of a spec, building it if needed",
)
async def request_kernels(
    body: BuildRequest,
    ctx: Ctx,
    _auth: BuildScope,
    wait: Annotated[bool, Query(description="block until the build finishes (bounded; else 202)")] = False,
) -> Any:
    targets = _targets(body.targets, ctx)
    spec = await _spec(body, ctx)
    cached = ctx.reads.cached_manifest(spec.key) or await asyncio.to_thread(ctx.reads.manifest, spec.key)
    manifest = cached.manifest if cached is not None else None
    if cached is not None and _has_targets(cached.manifest, targets):
        ctx.metrics.hits.inc()
        return Response(cached.body, media_type="application/json", headers={"ETag": cached.etag})
    ctx.metrics.misses.inc()
    have = targets_of(manifest) if manifest else set()
    record, _ = await ctx.builds.request(spec, [t for t in targets if t not in have])
    if not wait:
        return _accepted(record, spec.key)
    try:
        await asyncio.wait_for(record.done.wait(), timeout=ctx.settings.build_timeout_s + WAIT_MARGIN_S)
    except TimeoutError:
        return _accepted(record, spec.key)  # still queued or running: poll it
    if record.state != "succeeded":
        raise HTTPException(422 if record.user_error else 503, _failure_detail(record))
    manifest = await asyncio.to_thread(ctx.store.get_intact_manifest, spec.key)
    if manifest is None:
        raise HTTPException(503, "the build succeeded but its kernel is gone from the store; retry the request")
    return JSONResponse(manifest)


@router.get("", response_model=KernelPage, responses=errors(*AUTH_ERRORS, 422, 503),
            summary="List stored kernels, in key order")
async def list_kernels(
    ctx: Ctx,
    _auth: ReadScope,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> KernelPage:
    items, next_cursor = await asyncio.to_thread(ctx.store.list, after=cursor, limit=limit)
    return KernelPage(
        items=[KernelSummary(**{**vars(i), "targets": list(i.targets)}) for i in items], next_cursor=next_cursor
    )


# response_model documents the manifest's schema; the stored manifest (validated when it was read)
# is sent as it is, without a second pass through pydantic on every read. A manifest in memory is
# answered before FastAPI by api/fast_reads.py (same status, headers, body); HEAD is the same answer
# without the body, a route of its own so that the OpenAPI document keeps one operation per route.
@router.head("/{key}", include_in_schema=False, name="head_kernel")
@router.get("/{key}", summary="The manifest of a stored kernel", response_model=Manifest,
            responses={200: _MANIFEST, 304: {"description": "ETag matched (the manifest is unchanged)"},
                       **errors(*AUTH_ERRORS, 404, 422, 503)})
async def get_kernel(key: SpecKey, request: Request, ctx: Ctx, _auth: ReadScope) -> Any:
    """Served from memory once verified (store/reads.py). The ETag is the manifest's sha256: it
    changes only when tuned choices are recorded, so ``If-None-Match`` answers 304 until then."""
    cached = ctx.reads.cached_manifest(key) or await asyncio.to_thread(ctx.reads.manifest, key)
    if cached is None:
        raise HTTPException(404, f"no kernel with key {key}; POST its spec to /v1/kernels to build it")
    headers = {"ETag": cached.etag, "Cache-Control": MANIFEST_CACHE_CONTROL}  # may be tuned: revalidate, cheaply
    if etag_matches(request.headers.get("if-none-match"), cached.etag):
        return Response(status_code=304, headers=headers)
    return Response(cached.body, media_type="application/json", headers=headers)


@router.get(
    "/{key}/bundle",
    response_class=Response,
    summary="The source and binaries of a kernel (for some targets) in one tar archive",
    responses={200: {"content": {"application/x-tar": {}}, "description": "members named by sha256"},
               **errors(*AUTH_ERRORS, 404, 422, 503)},
)
async def get_bundle(
    key: SpecKey,
    ctx: Ctx,
    _auth: ReadScope,
    target: Annotated[list[str] | None, Query(description="only binaries for these targets")] = None,
) -> Response:
    """Members are named by their sha256; the client re-hashes each (one round trip instead of one per blob).

    Every blob is checked against its name before it goes in; if one is missing
    or damaged the kernel is dropped and this answers 404 (POST the spec to rebuild).
    """
    targets = _targets(target, ctx) if target else None
    manifest = await asyncio.to_thread(ctx.store.get_manifest, key)
    if manifest is None:
        raise HTTPException(404, f"no kernel with key {key}")
    ctx.reads.note_read(key)
    shas = {manifest["source"]["sha256"]} | {
        b["sha256"] for b in manifest["binaries"] if targets is None or b["target"] in targets
    }
    data = await asyncio.to_thread(_tar, ctx, key, sorted(shas))
    if data is None:
        raise HTTPException(404, f"the kernel {key} was damaged in the store and has been dropped; "
                                 "POST its spec to /v1/kernels to rebuild it")
    return Response(data, media_type="application/x-tar")


def _tar(ctx: Ctx, key: str, shas: list[str]) -> bytes | None:
    """The blobs in a tar; None if one is missing or damaged (then the kernel is dropped)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for sha in shas:
            blob = ctx.store.read_blob(sha)
            if blob is None:
                ctx.store.get_intact_manifest(key)  # finds the gap and drops the manifest
                return None
            info = tarfile.TarInfo(sha)
            info.size = len(blob)
            archive.addfile(info, io.BytesIO(blob))
    return buffer.getvalue()


@router.delete("/{key}", status_code=204, responses=errors(*AUTH_ERRORS, 404, 422, 503),
               summary="Delete a kernel and its unshared blobs (admin)")
async def delete_kernel(key: SpecKey, ctx: Ctx, _auth: AdminScope) -> Response:
    ctx.reads.forget(key, blobs=True)
    if not await asyncio.to_thread(ctx.store.delete_kernel, key):
        raise HTTPException(404, f"no kernel with key {key}")
    return Response(status_code=204)


@router.post("/{key}/tuning", response_model=TuningResult, responses=errors(*AUTH_ERRORS, 404, 413, 422, 503),
             summary="Report tuned config choices a GPU client measured")
async def report_tuning(key: SpecKey, body: TuningReport, ctx: Ctx, _auth: BuildScope) -> TuningResult:
    """Every choice is checked against the kernel's binaries (flexsn_core.manifest): a config it lacks,
    or an aligned-only binary as the ``unaligned`` choice, is a 422 and nothing is recorded. The
    first choice per (target, kind, bucket, variant) wins; concurrent reports merge under the key's lock."""
    [target] = _targets([body.target], ctx)
    choices = [TuningChoice(target=target, **choice.model_dump()) for choice in body.choices]
    try:
        result = await asyncio.to_thread(ctx.store.record_tuning, key, choices, now=time.time())
    except TuningError as exc:
        raise HTTPException(422, f"tuning report refused: {exc}") from None
    ctx.reads.forget(key)  # its digest changed: this replica serves the new one at once (others within the TTL)
    if result is None:
        raise HTTPException(404, f"no kernel with key {key}")
    accepted, manifest = result
    return TuningResult(accepted=accepted, tuning=manifest["tuning"].get(target, {}))
