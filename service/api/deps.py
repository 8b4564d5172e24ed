"""Dependencies shared by the routes: the service context, auth by scope, path checks."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Path, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..auth import AuthFailure, Token, TokenTable
from ..builds.manager import BuildManager
from ..builds.source_check_pool import SourceCheckPool
from ..config import Settings
from ..metrics import ServiceMetrics
from ..schemas import ErrorMessage
from ..store import Store
from ..store.reads import ReadCache

__all__ = [
    "ServiceContext", "Ctx", "ReadScope", "BuildScope", "AdminScope", "SpecKey", "BlobSha", "gate", "errors",
    "is_hex64", "etag_matches", "AUTH_ERRORS",
]

_LOOPBACK = {"127.0.0.1", "::1", "localhost", "testclient"}
_HEX64 = re.compile(r"[0-9a-f]{64}")
#: Declares the bearer scheme in OpenAPI (the Authorize button of /docs); the checks are ours.
_bearer = HTTPBearer(auto_error=False, description="a token from the service's tokens file")


@dataclass
class ServiceContext:
    settings: Settings
    store: Store
    tokens: TokenTable
    builds: BuildManager
    metrics: ServiceMetrics
    #: targets built when a request names none
    targets: list[str]
    #: this host's GPU arch (built and autotuned here), or None
    gpu_target: str | None
    #: runs the source check off the event loop
    checks: SourceCheckPool
    #: verified blobs and manifests in memory; reads' access times in batches
    reads: ReadCache


def get_ctx(request: Request) -> ServiceContext:
    return request.app.state.ctx


Ctx = Annotated[ServiceContext, Depends(get_ctx)]


def gate(tokens: TokenTable, client_host: str | None, authorization: str | None) -> AuthFailure | None:
    """Who may send a request at all (before its body is read): a known token, or loopback without tokens."""
    if not tokens.enabled:
        if client_host not in _LOOPBACK:
            return AuthFailure(403, "this service has no tokens configured and serves localhost only")
        return None
    try:
        tokens.authenticate(authorization)
    except AuthFailure as exc:
        return exc
    return None


BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]


def _require(scope: str):  # noqa: ANN202
    """The token's scope (the middleware already refused unknown tokens before the body was read)."""

    def check(request: Request, ctx: Ctx, _credentials: BearerCredentials) -> Token | None:
        header = request.headers.get("authorization")
        try:
            if ctx.tokens.enabled:
                return ctx.tokens.authorize(header, scope)
            failure = gate(ctx.tokens, request.client.host if request.client else None, header)
            if failure is not None:
                raise failure
            return None
        except AuthFailure as exc:
            headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
            raise HTTPException(exc.status, exc.message, headers=headers) from None

    return Depends(check)


ReadScope = Annotated[Token | None, _require("read")]
BuildScope = Annotated[Token | None, _require("build")]
AdminScope = Annotated[Token | None, _require("admin")]


def is_hex64(value: str) -> bool:
    """Exactly 64 lowercase hex digits (``fullmatch``: a trailing newline does not pass)."""
    return _HEX64.fullmatch(value) is not None


def etag_matches(header: str | None, etag: str) -> bool:
    """``If-None-Match`` names ``etag`` (strong comparison; ``*`` matches anything stored)."""
    return header is not None and (header.strip() == "*" or etag in (t.strip() for t in header.split(",")))


def _hex64(value: str, what: str) -> str:
    if not is_hex64(value):
        raise HTTPException(422, f"{what} must be 64 lowercase hex digits (a sha256), got {value[:80]!r}")
    return value


def spec_key(key: Annotated[str, Path(description="the spec key (sha256)")]) -> str:
    return _hex64(key, "the kernel key")


def blob_sha(sha256: Annotated[str, Path(description="the blob's sha256")]) -> str:
    return _hex64(sha256, "the blob sha256")


SpecKey = Annotated[str, Depends(spec_key)]
BlobSha = Annotated[str, Depends(blob_sha)]


_ERROR_WHY = {
    401: "missing, malformed or unknown bearer token",
    403: "the token lacks the scope (or: no tokens configured and the client is not on this host)",
    404: "not stored",
    413: "request body over FLEXSN_SERVICE_MAX_REQUEST_BYTES",
    422: "invalid request: the detail says what and where",
    503: "the store or the build machinery is unavailable; retry later",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for error codes, each with the ErrorMessage body every error has."""
    return {code: {"model": ErrorMessage, "description": _ERROR_WHY[code]} for code in codes}


#: The errors of every authenticated route.
AUTH_ERRORS = (401, 403)
