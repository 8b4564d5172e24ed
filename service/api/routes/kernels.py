"""/v1/kernels: request (build) kernels, read, list, delete, report tuning."""

from __future__ import annotations

import asyncio
import io
import tarfile
import time
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Response
from fastapi.responses import JSONResponse

from flexsn_core.compile import parse_target
from flexsn_core.spec import KernelSpec

from ...builds.sandbox import SourceRejected, check_source
from ...schemas import BuildAccepted, BuildRequest, KernelPage, KernelSummary, TuningReport
from ..deps import AdminScope, BuildScope, Ctx, ReadScope, SpecKey

router = APIRouter(prefix="/v1/kernels", tags=["kernels"])

_tuning_locks: dict[str, asyncio.Lock] = {}


def _spec(body: BuildRequest, ctx: Ctx) -> KernelSpec:
    data = body.model_dump(exclude={"targets"})
    try:
        spec = KernelSpec.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise HTTPException(422, f"invalid spec: {exc}") from None
    if not ctx.settings.source_check:  # a test-only setting: tests of the jail itself
        return spec
    try:
        check_source(spec, max_bytes=ctx.settings.max_source_bytes)
    except SourceRejected as exc:
        raise HTTPException(422, f"the core source was rejected: {exc}") from None
    return spec


def _targets(body: BuildRequest, ctx: Ctx) -> list[str]:
    targets = body.targets or ctx.targets
    for target in targets:
        try:
            parse_target(target)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
    return sorted(set(targets))


def _has_targets(manifest: dict[str, Any], targets: list[str]) -> bool:
    have = {b["target"] for b in manifest["binaries"]}
    return all(t in have for t in targets)


def _failure_detail(record: Any) -> dict[str, Any]:
    return {
        "message": f"the build failed: {record.error}",
        "build_id": record.id,
        "error_type": record.error_type,
        "log_tail": list(record.log)[-10:],
    }


@router.post(
    "",
    status_code=200,
    responses={202: {"model": BuildAccepted, "description": "not cached: a build was started or joined"},
               422: {"description": "invalid spec or source, or (with wait=true) a failed build"}},
    summary="Get the manifest of a spec, building it if needed",
)
async def request_kernels(
    body: BuildRequest,
    ctx: Ctx,
    _auth: BuildScope,
    wait: Annotated[bool, Query(description="block until the build finishes")] = False,
) -> Any:
    spec = _spec(body, ctx)
    targets = _targets(body, ctx)
    manifest = await asyncio.to_thread(ctx.store.get_manifest, spec.key, touch=True)
    if manifest is not None and _has_targets(manifest, targets):
        ctx.metrics.hits.inc()
        return JSONResponse(manifest)
    ctx.metrics.misses.inc()
    have = {b["target"] for b in manifest["binaries"]} if manifest else set()
    record, _ = ctx.builds.request(spec, [t for t in targets if t not in have])
    if not wait:
        accepted = BuildAccepted(
            build_id=record.id, key=spec.key, state=record.state, status_url=f"/v1/builds/{record.id}"
        )
        return JSONResponse(accepted.model_dump(), status_code=202)
    await record.done.wait()
    if record.state != "succeeded":
        status = 422 if record.user_error else 503
        raise HTTPException(status, _failure_detail(record))
    manifest = await asyncio.to_thread(ctx.store.get_manifest, spec.key)
    return JSONResponse(manifest)


@router.get("", response_model=KernelPage, summary="List stored kernels, in key order")
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


@router.get("/{key}", summary="The manifest of a stored kernel", responses={404: {"description": "not stored"}})
async def get_kernel(key: SpecKey, ctx: Ctx, _auth: ReadScope) -> Any:
    manifest = await asyncio.to_thread(ctx.store.get_manifest, key, touch=True)
    if manifest is None:
        raise HTTPException(404, f"no kernel with key {key}; POST its spec to /v1/kernels to build it")
    return JSONResponse(manifest)


@router.get(
    "/{key}/bundle",
    summary="The source and binaries of a kernel (for some targets) in one tar archive",
    responses={200: {"content": {"application/x-tar": {}}}, 404: {"description": "not stored"}},
)
async def get_bundle(
    key: SpecKey,
    ctx: Ctx,
    _auth: ReadScope,
    target: Annotated[list[str] | None, Query(description="only binaries for these targets")] = None,
) -> Response:
    """Members are named by their sha256; the client re-hashes each (one round trip instead of one per blob)."""
    manifest = await asyncio.to_thread(ctx.store.get_manifest, key, touch=True)
    if manifest is None:
        raise HTTPException(404, f"no kernel with key {key}")
    shas = {manifest["source"]["sha256"]} | {
        b["sha256"] for b in manifest["binaries"] if not target or b["target"] in target
    }
    data = await asyncio.to_thread(_tar, ctx, sorted(shas))
    return Response(data, media_type="application/x-tar")


def _tar(ctx: Ctx, shas: list[str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for sha in shas:
            blob = ctx.store.read_blob(sha)
            if blob is None:
                continue  # the client notices and fetches it on its own
            info = tarfile.TarInfo(sha)
            info.size = len(blob)
            archive.addfile(info, io.BytesIO(blob))
    return buffer.getvalue()


@router.delete("/{key}", status_code=204, summary="Delete a kernel and its unshared blobs (admin)")
async def delete_kernel(key: SpecKey, ctx: Ctx, _auth: AdminScope) -> Response:
    if not await asyncio.to_thread(ctx.store.delete_kernel, key):
        raise HTTPException(404, f"no kernel with key {key}")
    return Response(status_code=204)


@router.post("/{key}/tuning", summary="Report tuned config choices a GPU client measured")
async def report_tuning(key: SpecKey, body: TuningReport, ctx: Ctx, _auth: BuildScope) -> dict[str, Any]:
    try:
        parse_target(body.target)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    lock = _tuning_locks.setdefault(key, asyncio.Lock())
    async with lock:
        manifest = await asyncio.to_thread(ctx.store.get_manifest, key)
        if manifest is None:
            raise HTTPException(404, f"no kernel with key {key}")
        available = {(b["kind"], b["config_id"]) for b in manifest["binaries"] if b["target"] == body.target}
        if not available:
            raise HTTPException(422, f"the kernel has no binaries for {body.target}")
        for choice in body.choices:
            if (choice.kind, choice.config_id) not in available:
                raise HTTPException(422, f"unknown config {choice.config_id!r} for the {choice.kind} kernel on {body.target}")
        table = manifest.setdefault("tuning", {}).setdefault(body.target, {})
        accepted = 0
        for choice in body.choices:
            bucket = table.setdefault(choice.kind, {}).setdefault(str(choice.bucket), {})
            if choice.variant not in bucket:  # the first measurement of a bucket wins
                bucket[choice.variant] = choice.config_id
                accepted += 1
        if accepted:
            await asyncio.to_thread(ctx.store.put_manifest, manifest, now=time.time())
    return {"accepted": accepted, "tuning": manifest["tuning"].get(body.target, {})}
