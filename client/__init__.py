"""flexsn_client: fetch FlexSN kernels from the cache service.

    from flexsn_client import KernelCacheClient
    client = KernelCacheClient("http://cache:8000", token="...")
    client.get_or_build(spec, progress=True)

``FlexSN(core, ..., backend="remote-cache")`` uses it for you.
"""

from __future__ import annotations

from .api import ServiceAPI, SpecRejectedError
from .cache import KernelCacheClient
from .provider import KernelCacheWarning, RemoteProvider, remote_provider
from .settings import ClientSettings

__all__ = [
    "KernelCacheClient",
    "ServiceAPI",
    "SpecRejectedError",
    "KernelCacheWarning",
    "RemoteProvider",
    "remote_provider",
    "ClientSettings",
]
