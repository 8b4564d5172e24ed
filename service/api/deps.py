"""Dependencies shared by the routes: the service context and auth by scope."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request

from ..auth import AuthFailure, Token, TokenTable
from ..builds.manager import BuildManager
from ..config import Settings
from ..metrics import ServiceMetrics
from ..store import Store

__all__ = ["ServiceContext", "Ctx", "ReadScope", "BuildScope", "AdminScope", "SpecKey", "BlobSha"]

_LOOPBACK = {"127.0.0.1", "::1", "localhost", "testclient"}
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


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


def get_ctx(request: Request) -> ServiceContext:
    return request.app.state.ctx


Ctx = Annotated[ServiceContext, Depends(get_ctx)]


def _require(scope: str):  # noqa: ANN202
    def check(request: Request, ctx: Ctx) -> Token | None:
        if not ctx.tokens.enabled:
            host = request.client.host if request.client else None
            if host not in _LOOPBACK:
                raise HTTPException(403, "this service has no tokens configured and serves localhost only")
            return None
        try:
            return ctx.tokens.authorize(request.headers.get("authorization"), scope)
        except AuthFailure as exc:
            headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
            raise HTTPException(exc.status, exc.message, headers=headers) from None

    return Depends(check)


ReadScope = Annotated[Token | None, _require("read")]
BuildScope = Annotated[Token | None, _require("build")]
AdminScope = Annotated[Token | None, _require("admin")]


def _hex64(value: str, what: str) -> str:
    if not _HEX64.match(value):
        raise HTTPException(422, f"{what} must be 64 lowercase hex digits (a sha256), got {value[:80]!r}")
    return value


def spec_key(key: Annotated[str, Path(description="the spec key (sha256)")]) -> str:
    return _hex64(key, "the kernel key")


def blob_sha(sha256: Annotated[str, Path(description="the blob's sha256")]) -> str:
    return _hex64(sha256, "the blob sha256")


SpecKey = Annotated[str, Depends(spec_key)]
BlobSha = Annotated[str, Depends(blob_sha)]
