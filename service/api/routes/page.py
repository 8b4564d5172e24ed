"""The status page at ``/`` (HTML for people; ``/v1/stats`` has the same numbers as JSON).

Who sees what. A browser cannot easily send a bearer token, and the page's
aggregate numbers are no secret, so:

* no tokens configured: the service's usual rule -- loopback clients see
  everything, anyone else gets 403;
* tokens configured: anyone who reaches the service sees the aggregate page
  (versions, store kind and size, hit rate, build counts, kernels per target,
  the chart). Kernel entry names, build details and keys -- data about users'
  cores -- need a token with the ``read`` scope, sent as
  ``Authorization: Bearer TOKEN`` or, from a browser, by HTTP Basic auth with
  the token as the password (``/?auth=1`` asks the browser for it). Basic is
  accepted on this page only, never on the API.

The page never shows the store's address (a Redis URL may carry a password),
paths, tokens or token names, or build error texts (they quote user code;
``GET /v1/builds/{id}`` has them, with the read scope).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse

from ...auth import AuthFailure
from ...overview import gather
from ...status_page import CONTENT_SECURITY_POLICY, render_status_page
from ..deps import Ctx, gate

router = APIRouter(include_in_schema=False)

_REALM = 'Basic realm="flexsn-cache status: any user name, a read token as the password", charset="UTF-8"'
_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def bearer_from(header: str | None) -> str | None:
    """``Bearer T`` as is; ``Basic base64(user:T)`` as ``Bearer T``; anything else unchanged."""
    if not header:
        return None
    kind, _, value = header.partition(" ")
    if kind.lower() != "basic":
        return header
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    token = decoded.partition(":")[2] if ":" in decoded else decoded
    return f"Bearer {token}" if token else None


def _access(request: Request, ctx: Ctx) -> tuple[bool, str | None]:
    """(details, note): whether this request may see kernel names and build details."""
    header = request.headers.get("authorization")
    if not ctx.tokens.enabled:
        failure = gate(ctx.tokens, request.client.host if request.client else None, header)
        if failure is not None:
            raise HTTPException(failure.status, failure.message)
        return True, None
    if header is None:
        return False, None
    try:
        ctx.tokens.authorize(bearer_from(header), "read")
    except AuthFailure as exc:
        return False, f"Showing aggregate numbers only: {exc.message}."
    return True, None


@router.get("/", response_class=HTMLResponse)
async def status_page(
    request: Request,
    ctx: Ctx,
    auth: Annotated[bool, Query(description="ask the browser for a token (HTTP Basic)")] = False,
) -> HTMLResponse:
    details, note = _access(request, ctx)
    if auth and not details:
        return HTMLResponse(
            '<!DOCTYPE html><title>flexsn-cache: sign in</title><p>Kernel names and build details need a token '
            'with the read scope (as the password; any user name). <a href="/">Back to the status page</a>.</p>',
            status_code=401, headers={**_HEADERS, "WWW-Authenticate": _REALM},
        )
    activity = await ctx.builds.activity()  # every worker's and replica's builds (shared records)
    overview = await asyncio.to_thread(gather, ctx, activity)
    html = render_status_page(overview, details=details, auth="tokens" if ctx.tokens.enabled else "localhost-only",
                              note=note)
    return HTMLResponse(html, headers=_HEADERS)
