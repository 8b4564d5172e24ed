"""/v1/blobs/{sha256}: immutable content-addressed bytes."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, HTTPException, Request, Response

from ..deps import AUTH_ERRORS, BlobSha, Ctx, ReadScope, errors

router = APIRouter(prefix="/v1/blobs", tags=["blobs"])

_IMMUTABLE = "public, max-age=31536000, immutable"


@router.get(
    "/{sha256}",
    response_class=Response,
    summary="Blob bytes (the client re-hashes them)",
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "the bytes, checked against the sha256"},
        304: {"description": "ETag matched"},
        **errors(*AUTH_ERRORS, 404, 422, 503),
    },
)
async def get_blob(sha256: BlobSha, request: Request, ctx: Ctx, _auth: ReadScope) -> Response:
    """Blobs are small (kernel binaries): each read is re-hashed before it is served, and a
    blob whose bytes no longer match its name is dropped and answers 404."""
    etag = f'"{sha256}"'
    headers = {"ETag": etag, "Cache-Control": _IMMUTABLE}
    if request.headers.get("if-none-match") in (etag, "*"):
        if await asyncio.to_thread(ctx.store.has_blob, sha256):
            return Response(status_code=304, headers=headers)
    data = await asyncio.to_thread(ctx.store.read_blob, sha256)
    if data is None:
        raise HTTPException(404, f"no blob {sha256}")
    return Response(data, media_type="application/octet-stream", headers=headers)
