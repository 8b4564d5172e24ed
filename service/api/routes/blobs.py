"""/v1/blobs/{sha256}: immutable content-addressed bytes."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import StreamingResponse

from ..deps import BlobSha, Ctx, ReadScope

router = APIRouter(prefix="/v1/blobs", tags=["blobs"])

_IMMUTABLE = "public, max-age=31536000, immutable"


@router.get(
    "/{sha256}",
    summary="Blob bytes (the client re-hashes them)",
    responses={200: {"content": {"application/octet-stream": {}}}, 304: {"description": "ETag matched"}, 404: {}},
)
async def get_blob(sha256: BlobSha, request: Request, ctx: Ctx, _auth: ReadScope) -> Response:
    etag = f'"{sha256}"'
    headers = {"ETag": etag, "Cache-Control": _IMMUTABLE}
    if request.headers.get("if-none-match") in (etag, "*"):
        if await asyncio.to_thread(ctx.store.has_blob, sha256):
            return Response(status_code=304, headers=headers)
    opened = await asyncio.to_thread(ctx.store.open_blob, sha256)
    if opened is None:
        raise HTTPException(404, f"no blob {sha256}")
    if isinstance(opened, bytes):
        return Response(opened, media_type="application/octet-stream", headers=headers)
    size = opened.seek(0, 2)
    opened.seek(0)
    headers["Content-Length"] = str(size)

    def chunks():  # noqa: ANN202
        with opened:
            while chunk := opened.read(1 << 20):
                yield chunk

    return StreamingResponse(chunks(), media_type="application/octet-stream", headers=headers)
