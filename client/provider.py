"""Kernels for ``FlexSN(backend="remote-cache")``: the cache first, honest about what failed.

Order: the local mirror, then the service (which builds what it lacks). What
happens when that fails depends on whose fault it is:

| failure | what FlexSN does |
| --- | --- |
| the core breaks the contract (the service reports UnsupportedOpError, CoreTraceError, ...) | raises that error, as ``backend="triton"`` would |
| the service refuses the spec or source (422), or its build failed because of the core | raises SpecRejectedError / BuildFailedError |
| a rejected token | raises AuthError (a configuration error) |
| the service is down, times out, answers 5xx; a blob fails its sha256; another version | builds the kernels locally, with one warning |
| ... and the local build fails for a reason other than the core | runs the HOP path, with one warning |

After a connection failure the service is skipped for ``FLEXSN_CACHE_RETRY_AFTER_S``
(see :mod:`flexsn_client.api`), and the warning is given once per outage, not
once per kernel. Warnings point at the user's line (the first frame outside
flexsn_core, flexsn_client and torch).

flexsn_core finds this provider by name through the ``flexsn_core.providers``
entry point group (``remote-cache = "flexsn_client.provider:remote_cache_provider"``
in pyproject.toml); it never imports this package itself.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import warnings
from pathlib import Path

import torch

import flexsn_core
from flexsn_core.errors import AuthError, BuildFailedError, CacheUnavailableError, CoreError, FlexSNError
from flexsn_core.local import kernels_for
from flexsn_core.runtime import KernelSet
from flexsn_core.spec import KernelSpec

from .cache import KernelCacheClient
from .errors import SpecRejectedError

__all__ = ["RemoteProvider", "remote_provider", "remote_cache_provider", "KernelCacheWarning", "user_stacklevel"]

logger = logging.getLogger("flexsn_client")


class KernelCacheWarning(UserWarning):
    """The kernel cache could not serve a kernel; FlexSN used a fallback."""


#: frames in these folders are ours (or torch's module machinery), not the user's
_INTERNAL = tuple(
    os.path.realpath(folder) + os.sep
    for folder in (Path(flexsn_core.__file__).parent, Path(__file__).parent, Path(torch.__file__).parent)
)


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning raised by the caller point at the user's code."""
    frame = sys._getframe(1)
    level = 1
    while frame.f_back is not None and os.path.realpath(frame.f_code.co_filename).startswith(_INTERNAL):
        frame = frame.f_back
        level += 1
    return level


def _raises(exc: FlexSNError) -> bool:
    """Failures that are the core's (or the configuration's): raised, never hidden behind a fallback."""
    if isinstance(exc, (AuthError, CoreError, SpecRejectedError)):
        return True
    return isinstance(exc, BuildFailedError) and exc.user_error


class RemoteProvider:
    def __init__(self, client: KernelCacheClient) -> None:
        self.client = client
        self._memo: dict[tuple[str, torch.device], KernelSet | None] = {}
        self._lock = threading.Lock()
        self._warned_outage = -1

    def __call__(self, spec: KernelSpec, device: torch.device) -> KernelSet | None:
        key = (spec.key, device)
        with self._lock:
            if key in self._memo:
                return self._memo[key]
        ks = self._resolve(spec, device)
        with self._lock:
            return self._memo.setdefault(key, ks)

    def _warn(self, message: str) -> None:
        warnings.warn(message, KernelCacheWarning, stacklevel=user_stacklevel())

    def _resolve(self, spec: KernelSpec, device: torch.device) -> KernelSet | None:
        try:
            return self.client.kernels(spec, device)
        except FlexSNError as exc:
            if _raises(exc):
                raise
            failure = exc
        reason = f"{type(failure).__name__}: {failure}"
        try:
            ks = kernels_for(spec, device)
        except CoreError:
            raise  # the core itself cannot become kernels: the same error backend="triton" raises
        except FlexSNError as exc:
            self._warn(
                f"FlexSN: the kernel cache could not serve {spec.entry} ({reason}) and a local build failed "
                f"({type(exc).__name__}: {exc}); using the HOP path (slower, same results)"
            )
            return None
        api = self.client.api
        if isinstance(failure, CacheUnavailableError) and api is not None:
            # One warning per outage: while the service is skipped, every other kernel builds locally too.
            if api.outages == self._warned_outage:
                logger.info("FlexSN: built %s locally (the kernel cache is unavailable)", spec.entry)
                return ks
            self._warned_outage = api.outages
        self._warn(f"FlexSN: the kernel cache could not serve {spec.entry} ({reason}); built its kernels locally")
        return ks


_providers: dict[tuple[str | None, str | None], RemoteProvider] = {}
_providers_lock = threading.Lock()


def remote_provider(url: str | None = None, token: str | None = None) -> RemoteProvider:
    """The process-wide provider for a service URL and token (settings from the environment if None)."""
    with _providers_lock:
        provider = _providers.get((url, token))
        if provider is None:
            provider = _providers[(url, token)] = RemoteProvider(KernelCacheClient(url, token))
        return provider


def remote_cache_provider(*, cache_url: str | None = None, cache_token: str | None = None) -> RemoteProvider:
    """The ``"remote-cache"`` provider factory (flexsn_core's registry calls it with a FlexSN's options).

    A None ``cache_token`` means ``FLEXSN_CACHE_TOKEN``: what an unpickled
    module uses, since a pickle never holds the token.
    """
    return remote_provider(cache_url, cache_token)
