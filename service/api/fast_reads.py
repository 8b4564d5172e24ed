"""The read fast path: cached manifests and blobs answered before FastAPI.

``GET``/``HEAD /v1/kernels/{key}`` and ``GET``/``HEAD /v1/blobs/{sha256}`` are
most of a busy service's traffic (every training job's start-up reads them),
and the answer is usually in the replica's read cache (``store/reads.py``).
Through FastAPI such a read costs about 300 us of routing, dependency
injection (sync dependencies run in a thread pool), four middlewares and a
logged JSON line; this pure ASGI middleware, placed outermost, answers it in a
few microseconds of Python with header lists built when the entry was cached.

It answers only what it can answer exactly as the FastAPI routes would, and
passes everything else through unchanged:

* another method or path, or a name that is not 64 lowercase hex digits (so a
  bad key or sha keeps FastAPI's 422);
* a blob not in memory, or a manifest absent from the store: FastAPI reads the
  store (verifying what it caches) and answers 200, 404 or 503 as it does;
* ``FLEXSN_SERVICE_FAST_READS=0``.

A manifest not checked against the store within ``manifest_ttl_s`` is checked
here first (its stored digest; a full, verified load if it changed), one check
per key at a time, so a manifest tuned or deleted on any replica is seen here
within the TTL (this replica's own tuning reports and deletions drop the entry
at once), and the requests that arrive while the TTL runs out under load wait
for one store read instead of each making its own.

It answers with the routes' semantics: the same auth (a token with the read
scope; with no tokens configured, loopback clients only) and the same 401/403
bodies, ``If-None-Match`` -> 304, the caller's ``X-Request-ID`` (or a new one),
the manifest's access time noted for the next batch (``ReadCache.flush``), and
``flexsn_http_requests`` counted as for any request (plus
``flexsn_http_fast_reads``). Its access log is opt-in
(``FLEXSN_SERVICE_LOG_FAST_READS=1``): refusals and slow answers are logged
always.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from ..auth import AuthFailure
from ..logs import request_id
from ..store.reads import CachedManifest, ReadCache
from .deps import etag_matches, gate, is_hex64
from .middleware import auth_failure_response

__all__ = ["FastReads", "KERNEL_ROUTE", "BLOB_ROUTE", "SLOW_MS"]

#: route labels, as FastAPI's routes name them in metrics
KERNEL_ROUTE = "/v1/kernels/{key}"
BLOB_ROUTE = "/v1/blobs/{sha256}"
_KERNELS = "/v1/kernels/"
_BLOBS = "/v1/blobs/"
#: a fast-path answer slower than this is logged even when its access log is off
SLOW_MS = 100.0

Scope = dict[str, Any]


@dataclass
class _Check:
    reads: ReadCache  # the cache it fills (tests swap a context's cache)
    task: asyncio.Future[CachedManifest | None]


def _new_request_id() -> str:
    return os.urandom(8).hex()  # the format of RequestContextMiddleware's ids (16 hex digits), cheaper


class FastReads:
    def __init__(self, app: Any, state: Any) -> None:
        self.app = app
        #: the FastAPI app's state: ``state.ctx`` appears when start-up finished (and tests may swap its parts)
        self.state = state
        self.log = logging.getLogger("flexsn_service.http")
        #: manifest checks against the store under way, by key
        self._checks: dict[str, _Check] = {}

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
            return await self.app(scope, receive, send)
        path: str = scope["path"]
        if path.startswith(_BLOBS):
            name, route = path[len(_BLOBS):], BLOB_ROUTE
        elif path.startswith(_KERNELS):
            name, route = path[len(_KERNELS):], KERNEL_ROUTE
        else:
            return await self.app(scope, receive, send)
        ctx = getattr(self.state, "ctx", None)
        if not is_hex64(name) or ctx is None or not ctx.settings.fast_reads:
            return await self.app(scope, receive, send)

        started = time.perf_counter()
        authorization = if_none_match = rid = None
        for key, value in scope["headers"]:
            if key == b"authorization":
                authorization = authorization or value  # the first, as Starlette's headers.get
            elif key == b"if-none-match":
                if_none_match = if_none_match or value
            elif key == b"x-request-id":
                rid = value  # the last, as RequestContextMiddleware
        rid_text = (rid.decode(errors="ignore")[:64] if rid else "") or _new_request_id()
        rid_header = (b"x-request-id", rid_text.encode())

        failure = self._refusal(ctx, scope, authorization)
        if failure is not None:
            status, headers, body = auth_failure_response(failure)
            await self._send(send, status, [*headers, rid_header], body)
            self._done(ctx, scope, route, status, started, rid_text)
            return None

        if route is BLOB_ROUTE:
            entry = ctx.reads.cached_blob_entry(name)
        else:  # also notes the read for the access-time batch
            entry = ctx.reads.cached_manifest(name) or await self._checked_manifest(ctx.reads, name)
        if entry is None:  # not in memory, absent, or the store failed: FastAPI answers (200, 404 or 503)
            return await self.app(scope, receive, send)
        if if_none_match is not None and etag_matches(if_none_match.decode("latin-1"), entry.etag):
            status, headers, body = 304, entry.not_modified_headers, b""
        else:
            status, headers = 200, entry.ok_headers
            body = b"" if scope["method"] == "HEAD" else entry.data if route is BLOB_ROUTE else entry.body
        await self._send(send, status, [*headers, rid_header], body)
        self._done(ctx, scope, route, status, started, rid_text)
        return None

    async def _checked_manifest(self, reads: ReadCache, key: str) -> CachedManifest | None:
        """The manifest after its check against the store (``ReadCache.manifest``: the digest, or a full
        load), one check per key at a time: when an entry's TTL runs out under load, the requests that
        arrive meanwhile wait for that one check instead of each reading the store. None on any failure
        (FastAPI then reads the store itself and answers as it does)."""
        check = self._checks.get(key)
        if check is None or check.reads is not reads:
            task = asyncio.ensure_future(asyncio.to_thread(reads.manifest, key))
            check = self._checks[key] = _Check(reads, task)

            def finished(done: asyncio.Future[Any], check: _Check = check) -> None:
                if self._checks.get(key) is check:
                    del self._checks[key]
                if not done.cancelled():
                    done.exception()  # retrieved here: every waiter may have gone (clients hung up)

            task.add_done_callback(finished)
        try:
            return await asyncio.shield(check.task)
        except Exception:  # noqa: BLE001 - the store failed: FastAPI's route meets the error and answers 503
            return None

    @staticmethod
    def _refusal(ctx: Any, scope: Scope, authorization: bytes | None) -> AuthFailure | None:
        """What the auth gate and the routes' read-scope check would refuse (the same status and message)."""
        header = authorization.decode("latin-1") if authorization is not None else None
        if ctx.tokens.enabled:
            try:
                ctx.tokens.authorize(header, "read")
            except AuthFailure as exc:
                return exc
            return None
        client = scope.get("client")
        return gate(ctx.tokens, client[0] if client else None, header)

    @staticmethod
    async def _send(send: Any, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _done(self, ctx: Any, scope: Scope, route: str, status: int, started: float, rid: str) -> None:
        ctx.metrics.count_fast_read(route, status)
        ms = (time.perf_counter() - started) * 1000
        if status >= 400 or ms > SLOW_MS or ctx.settings.log_fast_reads:
            client = scope.get("client")
            token = request_id.set(rid)
            try:
                self.log.info("request", extra={"method": scope["method"], "path": scope["path"], "status": status,
                                                "ms": round(ms, 2), "client": client[0] if client else None})
            finally:
                request_id.reset(token)
