"""Kernels for ``FlexSN(backend="remote-cache")``: the cache first, never a stopped job.

Order: the local mirror, then the service (which builds what it lacks). If
the service cannot be reached, or cannot build the spec, or sends a blob that
fails its sha256 check, one warning says so and the kernels are built
locally; if that is impossible too, the module runs the HOP path. A rejected
token is a configuration error and raises AuthError.

flexsn_core finds this provider by name through the ``flexsn_core.providers``
entry point group (``remote-cache = "flexsn_client.provider:remote_cache_provider"``
in pyproject.toml); it never imports this package itself.
"""

from __future__ import annotations

import logging
import threading
import warnings

import torch

from flexsn_core.errors import AuthError, FlexSNError
from flexsn_core.local import kernels_for
from flexsn_core.runtime import KernelSet
from flexsn_core.spec import KernelSpec

from .cache import KernelCacheClient

__all__ = ["RemoteProvider", "remote_provider", "remote_cache_provider", "KernelCacheWarning"]

logger = logging.getLogger("flexsn_client")


class KernelCacheWarning(UserWarning):
    """The kernel cache could not serve a kernel; FlexSN used a fallback."""


class RemoteProvider:
    def __init__(self, client: KernelCacheClient) -> None:
        self.client = client
        self._memo: dict[tuple[str, torch.device], KernelSet | None] = {}
        self._lock = threading.Lock()

    def __call__(self, spec: KernelSpec, device: torch.device) -> KernelSet | None:
        key = (spec.key, device)
        with self._lock:
            if key in self._memo:
                return self._memo[key]
        ks = self._resolve(spec, device)
        with self._lock:
            return self._memo.setdefault(key, ks)

    def _resolve(self, spec: KernelSpec, device: torch.device) -> KernelSet | None:
        try:
            return self.client.kernels(spec, device)
        except AuthError:
            raise
        except FlexSNError as exc:
            reason = f"{type(exc).__name__}: {exc}"
        try:
            ks = kernels_for(spec, device)
        except FlexSNError as exc:
            warnings.warn(
                f"FlexSN: the kernel cache could not serve {spec.entry} ({reason}) and a local build failed "
                f"({type(exc).__name__}: {exc}); using the HOP path (slower, same results)",
                KernelCacheWarning,
                stacklevel=4,
            )
            return None
        warnings.warn(
            f"FlexSN: the kernel cache could not serve {spec.entry} ({reason}); built its kernels locally",
            KernelCacheWarning,
            stacklevel=4,
        )
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
