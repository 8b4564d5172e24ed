"""/v1/builds/{id}: the state of a build."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from ...schemas import BuildStatus
from ..deps import Ctx, ReadScope

router = APIRouter(prefix="/v1/builds", tags=["builds"])


@router.get("/{build_id}", response_model=BuildStatus, summary="State, progress, error and log tail of a build")
async def get_build(build_id: str, ctx: Ctx, _auth: ReadScope) -> BuildStatus:
    record = ctx.builds.get(build_id)
    if record is None:
        raise HTTPException(404, f"no build {build_id!r} (builds are kept until the service restarts)")
    return BuildStatus(**record.to_dict())
