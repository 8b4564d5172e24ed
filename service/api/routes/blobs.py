"""/v1/blobs/{sha256}: immutable content-addressed bytes."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, HTTPException, Request, Response

from ...store.reads import BLOB_CACHE_CONTROL
from ..deps import AUTH_ERRORS, BlobSha, Ctx, ReadScope, errors, etag_matches

router = APIRouter(prefix="/v1/blobs", tags=["blobs"])


# HEAD is the same answer without the body (the server drops it); a route of its own keeps it out of
# the OpenAPI document (one operation id per route). Blobs in memory are answered before FastAPI, by
# api/fast_reads.py, with the same status, headers and body.
@router.head("/{sha256}", include_in_schema=False, name="head_blob")
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
    """Each blob is re-hashed when it is first read from the store and served from memory after
    that (store/reads.py); a blob whose bytes no longer match its name is dropped and answers 404."""
    etag = f'"{sha256}"'
    headers = {"ETag": etag, "Cache-Control": BLOB_CACHE_CONTROL}
    data = ctx.reads.cached_blob(sha256)
    if etag_matches(request.headers.get("if-none-match"), etag):
        if data is not None or await asyncio.to_thread(ctx.store.has_blob, sha256):
            return Response(status_code=304, headers=headers)
    if data is None:
        data = await asyncio.to_thread(ctx.reads.blob, sha256)
    if data is None:
        raise HTTPException(404, f"no blob {sha256}")
    return Response(data, media_type="application/octet-stream", headers=headers)
