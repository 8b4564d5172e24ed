"""ASGI middlewares that answer before a request's body is read.

* :class:`AuthGateMiddleware`: a request without a known bearer token gets 401
  (403 from a remote host when no tokens are configured) before the app reads
  a byte of its body, so an anonymous client cannot make the service receive,
  parse or check anything. The scope check (403 for a read token that tries
  to build) stays in the route dependencies.
* :class:`BodyLimitMiddleware`: a body over the limit gets 413, whether its
  size is declared (``Content-Length``) or it is streamed (chunked): the
  count is kept while the app reads, and reading stops at the limit.

Both answer with the same ``{"detail": ...}`` body as every other error.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastapi import HTTPException
from fastapi.responses import JSONResponse

from ..auth import AuthFailure
from .deps import gate

__all__ = ["AuthGateMiddleware", "BodyLimitMiddleware", "auth_failure_response"]

Scope = dict[str, Any]


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> tuple[int, list[Any], bytes]:
    """(status, raw headers, body) of the ``{"detail": ...}`` answer every error has."""
    response = JSONResponse({"detail": detail}, status_code=status, headers=headers)
    return status, response.raw_headers, bytes(response.body)


def auth_failure_response(failure: AuthFailure) -> tuple[int, list[Any], bytes]:
    """The answer to a refused request: 401 (with ``WWW-Authenticate``) or 403, as the routes give it."""
    headers = {"WWW-Authenticate": "Bearer"} if failure.status == 401 else None
    return _error(failure.status, failure.message, headers)


async def _answer(send: Any, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    status, raw_headers, body = _error(status, detail, headers)
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or []:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class AuthGateMiddleware:
    def __init__(self, app: Any, public_paths: Iterable[str], public_prefixes: Iterable[str] = ()) -> None:
        self.app = app
        self.public_paths = frozenset(p for p in public_paths if p)
        #: folders of static files (each ends with "/" and is a mount: nothing else is routed below it)
        self.public_prefixes = tuple(p for p in public_prefixes if p)

    def _public(self, path: str) -> bool:
        return path in self.public_paths or path.startswith(self.public_prefixes)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not self._public(scope.get("path", "")):
            ctx = getattr(scope["app"].state, "ctx", None)
            if ctx is not None:  # None only before start-up finished
                client = scope.get("client")
                failure = gate(ctx.tokens, client[0] if client else None, _header(scope, b"authorization"))
                if failure is not None:
                    status, headers, body = auth_failure_response(failure)
                    await send({"type": "http.response.start", "status": status, "headers": headers})
                    await send({"type": "http.response.body", "body": body})
                    return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _detail(self) -> str:
        return f"request body over the {self.max_bytes}-byte limit"

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.max_bytes:
            await _answer(send, 413, self._detail())
            return
        seen = 0
        started = False

        async def limited_receive() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # FastAPI passes an HTTPException raised while reading the body on to
                    # its handler (any other exception would become a 400).
                    raise HTTPException(413, self._detail())
            return message

        async def tracking_send(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except HTTPException as exc:  # read outside FastAPI's body handling
            if started or exc.status_code != 413:
                raise
            await _answer(send, 413, self._detail())
