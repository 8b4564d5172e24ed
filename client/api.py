"""The HTTP API of the cache service, as Python calls (httpx).

Every call has a timeout; idempotent calls (GETs, and the POST of a spec,
which is idempotent by key) are retried with exponential backoff on
connection errors and 5xx answers. Errors are translated at this boundary:

    connection refused / timeout / 5xx  -> CacheUnavailableError
    401 / 403                           -> AuthError
    422 on a build request              -> SpecRejectedError (bad spec) or BuildFailedError
"""

from __future__ import annotations

import io
import random
import tarfile
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx

from flexsn_core.errors import AuthError, BuildFailedError, CacheUnavailableError, FlexSNError

if TYPE_CHECKING:  # a spec is only read here (spec.to_dict()); ls and stats must not import torch
    from flexsn_core.spec import KernelSpec

__all__ = ["ServiceAPI", "SpecRejectedError", "DEFAULT_TIMEOUT"]

DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)


class SpecRejectedError(FlexSNError, ValueError):
    """The service refused the spec or its source (HTTP 422)."""


def _detail(response: httpx.Response) -> Any:
    try:
        return response.json().get("detail", response.text)
    except (ValueError, AttributeError):
        return response.text


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
    ) -> None:
        self.url = url.rstrip("/")
        headers = {"User-Agent": "flexsn-cache-client/1"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.retries = retries
        self._options = {"headers": headers, "timeout": timeout, "transport": transport}
        self._client: httpx.Client | None = None

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
        delay = 0.2
        for attempt in range(self.retries + 1):
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if attempt == self.retries:
                    raise CacheUnavailableError(
                        f"cannot reach the kernel cache at {self.url} ({type(exc).__name__}: {exc}); "
                        "check FLEXSN_CACHE_URL and that the service is running"
                    ) from exc
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
                    raise CacheUnavailableError(
                        f"the kernel cache at {self.url} answered {response.status_code}: {_detail(response)}"
                    )
            time.sleep(delay * (1 + random.random()))
            delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------ calls
    def request_kernels(
        self, spec: KernelSpec, targets: list[str] | None = None, *, wait: bool = False
    ) -> tuple[int, dict[str, Any]]:
        """POST a spec: ``(200, manifest)`` if cached (or built with ``wait``), ``(202, build)`` otherwise."""
        body = {**spec.to_dict(), "targets": targets}
        timeout = None if wait else self._http.timeout
        response = self._call(
            "POST", "/v1/kernels", params={"wait": "true" if wait else "false"}, json=body, ok=(200, 202),
            timeout=timeout,
        )
        if response.status_code == 422:
            detail = _detail(response)
            if isinstance(detail, dict) and "build_id" in detail:
                raise BuildFailedError(str(detail.get("message")))
            raise SpecRejectedError(str(detail))
        if response.status_code not in (200, 202):
            raise CacheUnavailableError(f"unexpected answer {response.status_code}: {_detail(response)}")
        return response.status_code, response.json()

    def get_manifest(self, key: str) -> dict[str, Any] | None:
        response = self._call("GET", f"/v1/kernels/{key}", ok=(200, 404))
        return response.json() if response.status_code == 200 else None

    def get_build(self, build_id: str) -> dict[str, Any]:
        response = self._call("GET", f"/v1/builds/{build_id}")
        if response.status_code != 200:
            raise BuildFailedError(f"build {build_id} is unknown to the service: {_detail(response)}")
        return response.json()

    def wait_for_build(
        self,
        build_id: str,
        *,
        poll_s: float = 0.5,
        timeout_s: float | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll a build until it ends; the final status, or BuildFailedError."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            status = self.get_build(build_id)
            if on_progress is not None:
                on_progress(status)
            if status["state"] == "succeeded":
                return status
            if status["state"] == "failed":
                tail = "\n".join(status.get("log_tail") or [])
                raise BuildFailedError(f"the build failed: {status['error']}" + (f"\n{tail}" if tail else ""))
            if deadline is not None and time.monotonic() > deadline:
                raise BuildFailedError(f"build {build_id} still {status['state']} after {timeout_s} s")
            time.sleep(poll_s)

    def list_kernels(self, *, cursor: str | None = None, limit: int = 100) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        return self._call("GET", "/v1/kernels", params=params).json()

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
        return self._call("GET", "/v1/stats").json()

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/healthz").json()
