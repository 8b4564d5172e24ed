"""Kernel providers by name: where ``FlexSN(..., backend=NAME)`` gets its kernels.

A *provider* is ``provider(spec, device) -> KernelSet | None`` (None: no
kernels; the module runs the HOP path). A *factory* makes one from a module's
options::

    factory(*, cache_url: str | None = None, cache_token: str | None = None) -> provider

Built in: ``"triton"`` and ``"inductor"`` (peer labels): kernels built on this
machine (:func:`flexsn_core.local.kernels_for`). Other providers come from the
``flexsn_core.providers`` entry point group, loaded only when their name is
asked for, or from :func:`register_provider`. The client registers
``"remote-cache"`` that way (``[project.entry-points."flexsn_core.providers"]``
in pyproject.toml), so flexsn_core never imports the client.

Options are given to the factory, never pickled with a module by this
registry's users: ``cache_token`` is a secret (see ``FlexSN``).
"""

from __future__ import annotations

import importlib.metadata
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from .errors import FlexSNError

if TYPE_CHECKING:
    import torch

    from .runtime import KernelSet
    from .spec import KernelSpec

__all__ = [
    "ENTRY_POINT_GROUP",
    "Provider",
    "ProviderFactory",
    "ProviderNotFoundError",
    "register_provider",
    "unregister_provider",
    "is_provider",
    "provider_names",
    "provider_factory",
    "get_provider",
    "not_found",
]

ENTRY_POINT_GROUP = "flexsn_core.providers"

Provider = Callable[["KernelSpec", "torch.device"], "KernelSet | None"]


class ProviderFactory(Protocol):
    def __call__(self, *, cache_url: str | None = None, cache_token: str | None = None) -> Provider: ...


class ProviderNotFoundError(FlexSNError, NotImplementedError):
    """No kernel provider of that name is installed (a ``NotImplementedError``, like any unsupported backend)."""


#: what to install for a provider this project knows of but that is not installed
_INSTALL_HINTS = {
    "remote-cache": "the flexsn-cache client (import name flexsn_client): `pip install flexsn-cache`",
}


def _local_builds(*, cache_url: str | None = None, cache_token: str | None = None) -> Provider:
    """Kernels traced and compiled on this machine (the options do not apply)."""
    from .local import kernels_for

    return kernels_for


#: the distribution that registers a provider this project knows of. Its metadata is read first:
#: listing the group reads every installed package's entry points, about 0.1 s of a warm start on
#: a machine with a few hundred packages, and a warm start is what ``remote-cache`` is for.
_KNOWN_DISTRIBUTIONS = {"remote-cache": "flexsn-cache"}

_BUILTIN: dict[str, ProviderFactory] = {"triton": _local_builds, "inductor": _local_builds}
_registered: dict[str, ProviderFactory] = {}
_lock = threading.Lock()
_entry_points: dict[str, importlib.metadata.EntryPoint] | None = None


def _installed() -> dict[str, importlib.metadata.EntryPoint]:
    """Entry points of the group by name (read once per process; nothing is imported)."""
    global _entry_points
    if _entry_points is None:
        found = {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
        with _lock:
            _entry_points = found
    return _entry_points


def _entry_point(name: str) -> importlib.metadata.EntryPoint | None:
    """The entry point of ``name``: from its known distribution if that registers it, else from the group."""
    dist = _KNOWN_DISTRIBUTIONS.get(name)
    if dist is not None and _entry_points is None:
        try:
            found = importlib.metadata.distribution(dist).entry_points.select(group=ENTRY_POINT_GROUP, name=name)
        except importlib.metadata.PackageNotFoundError:
            found = ()
        for entry in found:
            return entry
    return _installed().get(name)


def register_provider(name: str, factory: ProviderFactory, *, replace: bool = False) -> None:
    """Make ``backend=name`` use ``factory`` (for providers installed without an entry point, and tests)."""
    with _lock:
        if name in _BUILTIN:
            raise ValueError(f"{name!r} is a built-in provider and cannot be replaced")
        if name in _registered and not replace and _registered[name] is not factory:
            raise ValueError(f"a provider named {name!r} is already registered (pass replace=True)")
        _registered[name] = factory


def unregister_provider(name: str) -> None:
    """Forget a provider registered (or loaded from an entry point) in this process."""
    with _lock:
        _registered.pop(name, None)


def is_provider(name: str) -> bool:
    """Whether ``backend=name`` has a provider (installed ones are listed, not imported)."""
    return name in _BUILTIN or name in _registered or _entry_point(name) is not None


def provider_names() -> tuple[str, ...]:
    """Every provider name available in this process, built-ins first."""
    names = [*_BUILTIN, *sorted(set(_registered) | set(_installed()))]
    return tuple(dict.fromkeys(names))


def not_found(name: str, head: str | None = None) -> ProviderNotFoundError:
    """The error for a name no provider answers to, saying what to install when it is a known one."""
    hint = _INSTALL_HINTS.get(name)
    fix = f"install {hint}" if hint else "check the name"
    head = head or f"{name!r} is not an installed kernel provider (available: {', '.join(provider_names())})."
    return ProviderNotFoundError(
        f"{head} To use {name!r}, {fix}, or register a provider with flexsn_core.providers.register_provider()."
    )


def provider_factory(name: str) -> ProviderFactory:
    """The factory of ``name``: built in, registered, or loaded from its entry point now."""
    factory = _BUILTIN.get(name) or _registered.get(name)
    if factory is not None:
        return factory
    entry = _entry_point(name)
    if entry is None:
        raise not_found(name)
    try:
        factory = entry.load()
    except ImportError as exc:
        hint = _INSTALL_HINTS.get(name, f"the package providing {entry.value}")
        raise ProviderNotFoundError(
            f"the kernel provider {name!r} ({entry.value}) could not be imported: {exc}; install {hint}"
        ) from exc
    with _lock:
        return _registered.setdefault(name, factory)


def get_provider(name: str, *, cache_url: str | None = None, cache_token: str | None = None) -> Provider:
    """A provider for ``backend=name`` with the module's options."""
    return provider_factory(name)(cache_url=cache_url, cache_token=cache_token)
