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
    """Each blob is re-hashed when it is first read from the store and served from memory after
    that (store/reads.py); a blob whose bytes no longer match its name is dropped and answers 404."""
    etag = f'"{sha256}"'
    headers = {"ETag": etag, "Cache-Control": _IMMUTABLE}
    data = ctx.reads.cached_blob(sha256)
    match = request.headers.get("if-none-match")
    if match is not None and (match.strip() == "*" or etag in (t.strip() for t in match.split(","))):
        if data is not None or await asyncio.to_thread(ctx.store.has_blob, sha256):
            return Response(status_code=304, headers=headers)
    if data is None:
        data = await asyncio.to_thread(ctx.reads.blob, sha256)
    if data is None:
        raise HTTPException(404, f"no blob {sha256}")
    return Response(data, media_type="application/octet-stream", headers=headers)
