"""The kernel handles behind the ``flexsn::*`` ops: a registry of integer handles with references.

An op's graph holds an integer (a plain constant to ``torch.compile``), not a
kernel object; the kernels of one spec live here under that number. A handle
has *owner* references (modules and kernels that hold it) and *active*
references (autograd graphs that will still run its backward), and is dropped
when both reach zero: freeing a module in the middle of a training step never
breaks that step's backward.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .runtime import KernelSet
from .runtime.index import PlanView
from .spec import KernelSpec

__all__ = [
    "KernelHandle", "Resolver", "register_handle", "lookup_handle", "live_handles", "retain_owner", "release_owner",
    "retain_active", "release_active", "attach_finalizer",
]

Resolver = Callable[[torch.device], KernelSet]


@dataclass
class KernelHandle:
    """The kernels of one spec, for any device, plus reference counts."""

    spec: KernelSpec
    resolve: Resolver
    #: the save plan: what the training path keeps for the backward kernel
    plan: PlanView
    trainable: bool
    owner_refs: int = 1
    active_refs: int = 0
    _sets: dict[torch.device, KernelSet] = field(default_factory=dict)

    @property
    def extras(self) -> tuple[torch.dtype, ...]:
        """dtypes of the extra saved buffers of the training path (stored mode)."""
        return self.plan.extras

    @property
    def needs_state_seqs(self) -> bool:
        """The backward reads state sequences in stored mode, so training returns them."""
        return bool(self.plan.state_seqs)

    def kernels(self, device: torch.device) -> KernelSet:
        ks = self._sets.get(device)
        if ks is None:
            ks = self._sets[device] = self.resolve(device)
        return ks



_registry: dict[int, KernelHandle] = {}
_lock = threading.Lock()
_ids = itertools.count(1)


def register_handle(spec: KernelSpec, resolve: Resolver, prototype: KernelSet) -> int:
    """Register a spec's kernels; ``prototype`` supplies the device-independent layout."""
    handle = KernelHandle(
        spec=spec,
        resolve=resolve,
        plan=prototype.plan,
        trainable=prototype.trainable,
    )
    with _lock:
        number = next(_ids)
        _registry[number] = handle
    return number


def lookup_handle(handle: int) -> KernelHandle:
    try:
        return _registry[int(handle)]
    except KeyError as exc:
        raise RuntimeError(f"unknown FlexSN kernel handle {handle} (already released?)") from exc


def live_handles() -> int:
    """How many handles are registered (tests use this to check for leaks)."""
    return len(_registry)


def _change(handle: int, owner: int = 0, active: int = 0) -> None:
    with _lock:
        entry = _registry.get(int(handle))
        if entry is None:
            return
        entry.owner_refs = max(0, entry.owner_refs + owner)
        entry.active_refs = max(0, entry.active_refs + active)
        if entry.owner_refs == 0 and entry.active_refs == 0:
            del _registry[int(handle)]


def retain_owner(handle: int) -> None:
    _change(handle, owner=1)


def release_owner(handle: int) -> None:
    _change(handle, owner=-1)


def retain_active(handle: int) -> None:
    _change(handle, active=1)


def release_active(handle: int) -> None:
    _change(handle, active=-1)


def attach_finalizer(owner: object, handle: int) -> weakref.finalize:
    """Release one owner reference of ``handle`` when ``owner`` is garbage collected."""
    return weakref.finalize(owner, release_owner, handle)
