"""flexsn_client: fetch FlexSN kernels from the cache service.

    from flexsn_client import KernelCacheClient
    client = KernelCacheClient("http://cache:8000", token="...")
    client.get_or_build(spec)   # a one-line progress on stderr (a terminal) while the service builds

``FlexSN(core, ..., backend="remote-cache")`` uses it for you.

Names are imported on first use (PEP 562): ``flexsn_client.cli`` (the
``flexsn-cache`` command) imports this package, and ``--help``, ``--version``,
``ls`` and ``stats`` must not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import ServiceAPI
    from .errors import SpecRejectedError
    from .cache import KernelCacheClient
    from .provider import KernelCacheWarning, RemoteProvider, remote_provider
    from .settings import ClientSettings

#: public name -> the submodule that defines it
_LAZY = {
    "KernelCacheClient": ".cache",
    "ServiceAPI": ".api",
    "SpecRejectedError": ".errors",
    "KernelCacheWarning": ".provider",
    "RemoteProvider": ".provider",
    "remote_provider": ".provider",
    "ClientSettings": ".settings",
}

__all__ = [
    "KernelCacheClient",
    "ServiceAPI",
    "SpecRejectedError",
    "KernelCacheWarning",
    "RemoteProvider",
    "remote_provider",
    "ClientSettings",
]


def __getattr__(name: str) -> Any:
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module 'flexsn_client' has no attribute {name!r}")
    value = getattr(importlib.import_module(where, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
