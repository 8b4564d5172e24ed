"""/v1/builds/{id}: the state of a build, wherever it runs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path

from ...schemas import BuildStatus
from ..deps import AUTH_ERRORS, Ctx, ReadScope, errors

router = APIRouter(prefix="/v1/builds", tags=["builds"])


@router.get("/{build_id}", response_model=BuildStatus, responses=errors(*AUTH_ERRORS, 404, 422),
            summary="State, progress, error and log tail of a build")
async def get_build(
    build_id: Annotated[str, Path(max_length=64, description="from POST /v1/kernels")], ctx: Ctx, _auth: ReadScope
) -> BuildStatus:
    """Answered by any HTTP worker or replica on the store: from this process's record of the build,
    else from the record its process published to the store (builds/shared_records.py)."""
    status = await ctx.builds.status(build_id)
    if status is None:
        raise HTTPException(
            404, f"no build {build_id!r} (finished builds are kept for an hour; a build whose service process "
                 "stopped, or that never existed, is not known: POST its spec again)")
    return BuildStatus(**status)
