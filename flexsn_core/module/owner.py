"""Who owns a core's custom-op handles, and what of it survives pickling.

A :class:`KernelOwner` gets kernels of one core from its backend's provider
(:mod:`flexsn_core.providers`) and registers them as custom-op handles, one per
dtype. Handles are process-local reference-counted integers (:mod:`..ops`):
a deep copy shares them (one more owner), a pickle drops them and the
unpickled owner rebuilds them on use.

Pickling writes the core, the counts, the backend name and the cache URL,
never the cache token or the provider object (which holds a client with the
token): ``torch.save(model)`` must not put a secret into a checkpoint. After
unpickling, a ``"remote-cache"`` provider takes its token from
``FLEXSN_CACHE_TOKEN``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .. import ops
from ..providers import Provider, get_provider
from ..runtime import KernelSet
from ..spec import KernelSpec
from .collect import collector

__all__ = ["KernelOwner", "spec_flags"]


def spec_flags(
    requires_grad: Sequence[bool] | None, num_args: int, statics: Sequence[torch.Tensor]
) -> tuple[bool, ...] | None:
    """``requires_grad`` over (inputs, states) extended with the statics' own flags."""
    static_flags = tuple(bool(s.requires_grad) for s in statics)
    if requires_grad is None:
        return None if all(static_flags) else (True,) * num_args + static_flags
    flags = tuple(bool(f) for f in requires_grad)
    if len(flags) == num_args:
        return flags + static_flags
    if len(flags) == num_args + len(statics):
        return flags
    raise ValueError(
        f"requires_grad must have {num_args} entries (num_inputs + num_states), got {len(flags)}"
    )


class KernelOwner:
    """Builds (or fetches) and owns custom-op handles of one core, one per dtype.

    ``backend`` names the provider; it is resolved on first use, so unpickling
    needs no provider until the kernels are. A provider returning None means
    "no kernels": the module runs the HOP path.
    """

    def __init__(
        self,
        core: Callable[..., Any],
        counts: tuple[int, int, int, int],
        requires_grad: tuple[bool, ...] | None,
        backend: str = "triton",
        *,
        cache_url: str | None = None,
        cache_token: str | None = None,
        provider: Provider | None = None,
    ) -> None:
        self.core = core
        self.counts = counts
        self.requires_grad = requires_grad
        self.backend = backend
        self.cache_url = cache_url
        self._cache_token = cache_token  # in memory only; see __getstate__
        self._provider = provider
        self.handles: dict[torch.dtype, int | None] = {}
        self._finalizers: list[Any] = []
        self._spec_cache: dict[torch.dtype, KernelSpec] = {}

    @property
    def provider(self) -> Provider:
        if self._provider is None:
            self._provider = get_provider(self.backend, cache_url=self.cache_url, cache_token=self._cache_token)
        return self._provider

    def spec(self, dtype: torch.dtype) -> KernelSpec:
        spec = self._spec_cache.get(dtype)
        if spec is None:
            ni, ns, no, nc = self.counts
            spec = KernelSpec.from_core(
                self.core, ni, ns, no, num_static=nc, dtype=dtype, requires_grad=self.requires_grad
            )
            self._spec_cache[dtype] = spec
        return spec

    def handle(self, dtype: torch.dtype, device: torch.device) -> int | None:
        if dtype in self.handles:
            return self.handles[dtype]
        specs = collector()
        if specs is not None:
            specs.append(self.spec(dtype))
            return None
        spec = self.spec(dtype)
        provider = self.provider
        prototype = provider(spec, device)
        if prototype is None:
            self.handles[dtype] = None
            return None

        def resolve(d: torch.device, _s: KernelSpec = spec) -> KernelSet:
            ks = provider(_s, d)
            if ks is None:
                raise RuntimeError(f"no FlexSN kernels of {_s.entry} for {d}")
            return ks

        number = ops.register_handle(spec, resolve, prototype)
        self.handles[dtype] = number
        self._finalizers.append(ops.attach_finalizer(self, number))
        return number

    def __deepcopy__(self, memo: dict[int, Any]) -> KernelOwner:
        # Kernels depend only on the spec: a copy shares them (one more owner).
        other = KernelOwner(
            self.core, self.counts, self.requires_grad, self.backend,
            cache_url=self.cache_url, cache_token=self._cache_token, provider=self._provider,
        )
        other.handles = dict(self.handles)
        other._spec_cache = dict(self._spec_cache)
        for number in other.handles.values():
            if number is not None:
                ops.retain_owner(number)
                other._finalizers.append(ops.attach_finalizer(other, number))
        memo[id(self)] = other
        return other

    def __getstate__(self) -> dict[str, Any]:
        # Handles are process-local; an unpickled owner rebuilds them on use. No token, no provider.
        return {
            "core": self.core,
            "counts": self.counts,
            "requires_grad": self.requires_grad,
            "backend": self.backend,
            "cache_url": self.cache_url,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        backend, url, token = state.get("backend", "triton"), state.get("cache_url"), None
        if "remote" in state:
            # Written before the provider registry: ("remote", (url, token)) meant remote-cache.
            # That old checkpoint already holds the token; it is used, and never written again.
            backend = "remote-cache"
            url, token = state["remote"] or (None, None)
        self.__init__(  # type: ignore[misc]
            state["core"], state["counts"], state["requires_grad"], backend, cache_url=url, cache_token=token
        )
