"""The HTTP API of the cache service, as Python calls (httpx).

Every call has a timeout, and so has every wait for a build; idempotent calls
(GETs, and the POST of a spec, which is idempotent by key) are retried with
exponential backoff on 5xx answers and read errors, once on a refused or
timed-out connection. After a call finally fails for want of the service, the
API marks it unavailable for ``unavailable_s`` (``FLEXSN_CACHE_RETRY_AFTER_S``,
60 s): calls in that window fail at once instead of each paying the retries
(PyTorch's remote caches do the same: cache trouble must not stall a job).
Errors are translated at this boundary:

    connection refused / timeout / 5xx     -> CacheUnavailableError (and the service is marked unavailable)
    a build wait past its limit            -> CacheUnavailableError
    401 / 403                              -> AuthError
    an answer that is not the service's    -> UnexpectedAnswerError (a CacheUnavailableError): a wrong
    (404 from a wrong path, an HTML page,     path in the URL, another server, a proxy's page; its
    JSON without the expected fields)         message is one line, never the page itself
    422 on a build request (spec, source)  -> SpecRejectedError
    a failed build (422 with wait, or the
    build status)                          -> the CoreError it reports (UnsupportedOpError with .op and
                                              .line, CoreTraceError, ...), else BuildFailedError
"""

from __future__ import annotations

import io
import json
import random
import re
import tarfile
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx

from flexsn_core.errors import (
    AuthError,
    BuildFailedError,
    CacheUnavailableError,
    CoreCaptureError,
    CoreError,
    CoreReturnTypeError,
    CoreSignatureError,
    CoreSourceError,
    CoreTraceError,
    FlexSNError,
    UnsupportedOpError,
)

from .errors import BuildUnknownError, SpecRejectedError, UnexpectedAnswerError

if TYPE_CHECKING:  # a spec is only read here (spec.to_dict()); ls and stats must not import torch
    from flexsn_core.spec import KernelSpec

__all__ = [
    "ServiceAPI", "SpecRejectedError", "DEFAULT_TIMEOUT", "DEFAULT_UNAVAILABLE_S", "DEFAULT_BUILD_WAIT_S",
    "build_error", "UnexpectedAnswerError", "BuildUnknownError", "VERSION_FIELDS",
]

DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
#: how long a service that failed a call is skipped (FLEXSN_CACHE_RETRY_AFTER_S)
DEFAULT_UNAVAILABLE_S = 60.0
#: the longest wait for one build (FLEXSN_CACHE_BUILD_WAIT_S): the service's own build limit is 300 s
DEFAULT_BUILD_WAIT_S = 900.0


#: the fields of ``GET /v1/version`` a client relies on (a server without them is not flexsn-cache)
VERSION_FIELDS = ("package", "api", "codegen", "triton", "torch")


#: errors a failed build may report that the client raises as themselves (what a local build raises)
_CORE_ERRORS: dict[str, type[CoreError]] = {
    cls.__name__: cls
    for cls in (CoreSourceError, CoreCaptureError, CoreSignatureError, CoreReturnTypeError, CoreTraceError)
}


def build_error(detail: dict[str, Any], url: str) -> FlexSNError:
    """The error a failed build stands for: the core's own error where the service names one.

    ``detail`` is a build status (``GET /v1/builds/{id}``) or the detail of a
    422 answer to ``POST /v1/kernels?wait=true``. A core that breaks the contract
    raises what ``backend="triton"`` raises for it (same type, same message),
    so a user sees the same error whichever backend built the kernels.
    """
    error_type = str(detail.get("error_type") or "")
    message = str(detail.get("error") or detail.get("message") or "the build failed")
    message = message.removeprefix("the build failed: ")
    if error_type == "UnsupportedOpError":
        line = detail.get("error_line")
        return UnsupportedOpError(
            message, op=str(detail.get("error_op") or "unknown"), line=line if isinstance(line, int) else None
        )
    if error_type in _CORE_ERRORS:
        return _CORE_ERRORS[error_type](message)
    if error_type == "SourceRejected":
        return SpecRejectedError(f"the kernel cache at {url} rejected the core source: {message}")
    tail = tuple(str(line) for line in detail.get("log_tail") or ())
    user = detail.get("user_error")
    return BuildFailedError(
        f"the kernel cache at {url} could not build the kernels ({error_type or 'unknown error'}): {message}"
        + ("\n" + "\n".join(tail[-10:]) if tail else ""),
        build_id=detail.get("build_id"), user_error=bool(user), error_type=error_type or None, log_tail=tail,
    )


_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
#: the longest piece of an answer's body an error message quotes
_QUOTE = 200


def describe_body(response: httpx.Response) -> str:
    """An answer's body in one short line: never a whole HTML page in an error message."""
    text = response.text
    kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "text/html" or text.lstrip()[:15].lower().startswith(("<!doctype html", "<html")):
        title = _TITLE.search(text)
        return f"an HTML page ({' '.join(title.group(1).split())[:_QUOTE]!r})" if title else "an HTML page"
    flat = " ".join(text.split())
    if not flat:
        return "an empty body"
    return flat if len(flat) <= _QUOTE else flat[:_QUOTE] + "…"


def _detail(response: httpx.Response) -> Any:
    """The service's ``detail`` (its error bodies carry one), else the body in one short line."""
    try:
        body = response.json()
    except ValueError:
        return describe_body(response)
    if isinstance(body, dict) and "detail" in body:
        return body["detail"]
    return describe_body(response)


class ServiceAPI:
    """Thin, typed access to ``/v1``; one connection pool per instance."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        retries: int = 3,
        transport: httpx.BaseTransport | None = None,
        unavailable_s: float = DEFAULT_UNAVAILABLE_S,
        build_wait_s: float = DEFAULT_BUILD_WAIT_S,
    ) -> None:
        self.url = url.rstrip("/")
        headers = {"User-Agent": "flexsn-cache-client/1"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.retries = retries
        self.unavailable_s = unavailable_s
        self.build_wait_s = build_wait_s
        self._options = {"headers": headers, "timeout": timeout, "transport": transport}
        self._client: httpx.Client | None = None
        #: how many times the service was marked unavailable (a provider warns once per outage)
        self.outages = 0
        self._down_until = 0.0
        self._down_reason = ""
        self._down_lock = threading.Lock()

    # ------------------------------------------------------------ availability
    def unavailable(self) -> bool:
        """True while the service is skipped after a failure (see the module docstring)."""
        return time.monotonic() < self._down_until

    def _mark_unavailable(self, reason: str) -> None:
        with self._down_lock:
            if not self.unavailable():
                self.outages += 1
            self._down_until = time.monotonic() + self.unavailable_s
            self._down_reason = reason

    def _unavailable_error(self) -> CacheUnavailableError:
        left = max(0.0, self._down_until - time.monotonic())
        return CacheUnavailableError(
            f"the kernel cache at {self.url} is skipped for another {left:.0f} s after a failure "
            f"({self._down_reason}); FLEXSN_CACHE_RETRY_AFTER_S sets how long"
        )

    @property
    def _http(self) -> httpx.Client:
        """The connection pool, made on first use (a node served by its mirror never needs one)."""
        if self._client is None:
            # A plain-http service needs no TLS context (building one loads the CA bundle).
            verify = not self.url.startswith("http://")
            self._client = httpx.Client(base_url=self.url, verify=verify, **self._options)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def __enter__(self) -> ServiceAPI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ plumbing
    def _call(self, method: str, path: str, *, ok: tuple[int, ...] = (200,), **kwargs: Any) -> httpx.Response:
        if self.unavailable():
            raise self._unavailable_error()
        delay = 0.2
        for attempt in range(self.retries + 1):
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                # A refused or timed-out connection is retried once, not `retries` times: a service
                # that is down stays down, and every attempt costs the job time.
                connecting = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))
                if attempt == self.retries or (connecting and attempt >= 1):
                    error = CacheUnavailableError(
                        f"cannot reach the kernel cache at {self.url} ({type(exc).__name__}: {exc}); "
                        "check FLEXSN_CACHE_URL and that the service is running"
                    )
                    self._mark_unavailable(f"{type(exc).__name__}: {exc}")
                    raise error from exc
            else:
                if response.status_code in ok:
                    return response
                if response.status_code in (401, 403):
                    raise AuthError(
                        f"the kernel cache refused the request ({response.status_code}): {_detail(response)}; "
                        "check FLEXSN_CACHE_TOKEN and its scopes"
                    )
                if response.status_code < 500:
                    return response
                if attempt == self.retries:
                    self._mark_unavailable(f"it answered {response.status_code}")
                    raise CacheUnavailableError(
                        f"the kernel cache at {self.url} answered {response.status_code}: {_detail(response)}"
                    )
            time.sleep(delay * (1 + random.random()))
            delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    def _json(self, response: httpx.Response, *fields: str, ok: tuple[int, ...] = (200,)) -> dict[str, Any]:
        """An ``ok`` answer's JSON object with ``fields``; anything else is UnexpectedAnswerError, in one line."""
        where = f"{response.request.method} {response.request.url}"
        if response.status_code not in ok:
            raise UnexpectedAnswerError(
                f"{where} answered {response.status_code} {response.reason_phrase}: {_detail(response)}; "
                f"{self._check_url_hint()}"
            )
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise UnexpectedAnswerError(
                f"{where} answered {describe_body(response)}, not the service's JSON; {self._check_url_hint()}"
            )
        missing = [name for name in fields if name not in body]
        if missing:
            raise UnexpectedAnswerError(
                f"{where} answered JSON without {', '.join(missing)} "
                f"({json.dumps(body)[:_QUOTE]}); {self._check_url_hint()}"
            )
        return body

    def _check_url_hint(self) -> str:
        return (f"is {self.url} a flexsn-cache service? --url / FLEXSN_CACHE_URL is the service's root "
                "(e.g. http://cache-host:8000, no path)")

    # ------------------------------------------------------------ calls
    def request_kernels(
        self, spec: KernelSpec, targets: list[str] | None = None, *, wait: bool = False
    ) -> tuple[int, dict[str, Any]]:
        """POST a spec: ``(200, manifest)`` if cached (or built with ``wait``), ``(202, build)`` otherwise."""
        body = {**spec.to_dict(), "targets": targets}
        # The service answers a waiting request within its build limit + 60 s (then 202): wait a bit longer.
        timeout = httpx.Timeout(self.build_wait_s + 60.0, connect=5.0) if wait else self._http.timeout
        response = self._call(
            "POST", "/v1/kernels", params={"wait": "true" if wait else "false"}, json=body, ok=(200, 202),
            timeout=timeout,
        )
        if response.status_code == 422:
            detail = _detail(response)
            if isinstance(detail, dict) and "build_id" in detail:
                raise build_error({**detail, "user_error": True}, self.url)
            raise SpecRejectedError(f"the kernel cache at {self.url} rejected the spec: {detail}")
        fields = ("key",) if response.status_code == 200 else ("build_id",)
        return response.status_code, self._json(response, *fields, ok=(200, 202))

    def get_manifest(self, key: str) -> dict[str, Any] | None:
        response = self._call("GET", f"/v1/kernels/{key}", ok=(200, 404))
        return self._json(response, "key") if response.status_code == 200 else None

    def get_build(self, build_id: str) -> dict[str, Any]:
        response = self._call("GET", f"/v1/builds/{build_id}", ok=(200, 404))
        if response.status_code == 404:
            raise BuildUnknownError(f"build {build_id} is unknown to the service at {self.url}: {_detail(response)}")
        if response.status_code != 200:
            raise BuildFailedError(f"build {build_id} is unknown to the service: {_detail(response)}")
        return self._json(response, "state")

    def wait_for_build(
        self,
        build_id: str,
        *,
        poll_s: float = 0.5,
        timeout_s: float | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll a build until it ends, for at most ``timeout_s`` (default ``build_wait_s``).

        Returns the final status; a failed build raises :func:`build_error`'s
        error, a build still running at the deadline CacheUnavailableError.
        """
        timeout_s = self.build_wait_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.get_build(build_id)
            if on_progress is not None:
                on_progress(status)
            if status["state"] == "succeeded":
                return status
            if status["state"] == "failed":
                raise build_error(status, self.url)
            if time.monotonic() > deadline:
                raise CacheUnavailableError(
                    f"the kernel cache at {self.url} did not finish build {build_id} within {timeout_s:g} s "
                    f"(still {status['state']}); FLEXSN_CACHE_BUILD_WAIT_S sets the limit"
                )
            time.sleep(poll_s)

    def list_kernels(self, *, cursor: str | None = None, limit: int = 100) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        return self._json(self._call("GET", "/v1/kernels", params=params), "items", "next_cursor")

    def delete_kernel(self, key: str) -> bool:
        return self._call("DELETE", f"/v1/kernels/{key}", ok=(204, 404)).status_code == 204

    def get_blob(self, sha: str) -> bytes:
        response = self._call("GET", f"/v1/blobs/{sha}", ok=(200, 404))
        if response.status_code == 404:
            raise CacheUnavailableError(f"the kernel cache has no blob {sha}")
        return response.content

    def get_bundle(self, key: str, targets: list[str] | None = None) -> dict[str, bytes]:
        """A kernel's source and binaries (for ``targets``) in one request: ``{name: bytes}``.

        The caller must check each blob against its sha256 (its name); members
        are read into memory, never extracted to disk.
        """
        response = self._call("GET", f"/v1/kernels/{key}/bundle", params={"target": targets or []}, ok=(200, 404))
        if response.status_code == 404:
            return {}
        blobs: dict[str, bytes] = {}
        with tarfile.open(fileobj=io.BytesIO(response.content), mode="r|") as archive:
            for member in archive:
                if member.isfile() and len(member.name) == 64:
                    extracted = archive.extractfile(member)
                    if extracted is not None:
                        blobs[member.name] = extracted.read()
        return blobs

    def report_tuning(self, key: str, target: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        response = self._call("POST", f"/v1/kernels/{key}/tuning", json={"target": target, "choices": choices})
        if response.status_code != 200:
            raise SpecRejectedError(f"tuning report refused: {_detail(response)}")
        return response.json()

    def stats(self) -> dict[str, Any]:
        return self._json(self._call("GET", "/v1/stats"), "hits", "misses", "kernels", "bytes")

    def health(self) -> dict[str, Any]:
        return self._json(self._call("GET", "/healthz"), "status")

    def version(self) -> dict[str, Any]:
        """``GET /v1/version`` (no token needed): also how a client recognises a flexsn-cache service."""
        return self._json(self._call("GET", "/v1/version"), *VERSION_FIELDS)
