"""Custom ops that run FlexSN kernels, keyed by integer handles.

``torch.compile`` and AOTAutograd see four opaque ops in the ``flexsn``
namespace, with fake-tensor implementations and a registered autograd
formula, so a model using FlexSN compiles with ``fullgraph=True`` and no graph
break. The kernels themselves live in a Python-side registry under an integer
handle (an int is a plain constant in a traced graph; a kernel object is not).

A handle has *owner* references (modules and kernels that hold it) and
*active* references (autograd graphs that will still run its backward). It is
dropped when both reach zero, so freeing a module in the middle of a training
step never breaks that step's backward.

    flexsn::inference        (h, inputs, states, statics) -> outputs + state seqs
    flexsn::inference_final  (h, inputs, states, statics) -> outputs + final states
    flexsn::training         (h, inputs, states, statics, store_state_seqs)
                             -> outputs + final states + [state seqs] + saved
    flexsn::backward         (h, saved..., grads...) -> grads of inputs, states, statics

``states`` may be an empty list: the kernels then start from zeros without a
zeros tensor (zero-state elision).
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .contract import check_scan_call
from .runtime import KernelSet, StaticArg, run_backward, run_forward, run_inference, run_inference_final
from .spec import KernelSpec

__all__ = [
    "KernelHandle",
    "register_handle",
    "lookup_handle",
    "retain_active",
    "retain_owner",
    "release_owner",
    "release_active",
    "attach_finalizer",
    "live_handles",
]

Resolver = Callable[[torch.device], KernelSet]


@dataclass
class KernelHandle:
    """The kernels of one spec, for any device, plus reference counts."""

    spec: KernelSpec
    resolve: Resolver
    #: dtypes of the extra saved buffers of the training path
    extras: tuple[torch.dtype, ...]
    #: the backward reads state sequences, so training always returns them
    needs_state_seqs: bool
    trainable: bool
    owner_refs: int = 1
    active_refs: int = 0
    _sets: dict[torch.device, KernelSet] = field(default_factory=dict)

    def kernels(self, device: torch.device) -> KernelSet:
        ks = self._sets.get(device)
        if ks is None:
            ks = self._sets[device] = self.resolve(device)
        return ks


# Ops are defined with torch.library.Library rather than @custom_op: the
# latter wraps every kernel in a lazy `torch._dynamo.disable`, whose first call
# imports torch._dynamo (seconds) — paid by every job at its first step.
_lib = torch.library.Library("flexsn", "DEF")
_SCHEMAS = {
    "inference": "(int handle, Tensor[] inputs, Tensor[] states, Tensor[] statics) -> Tensor[]",
    "inference_final": "(int handle, Tensor[] inputs, Tensor[] states, Tensor[] statics) -> Tensor[]",
    "training": "(int handle, Tensor[] inputs, Tensor[] states, Tensor[] statics, bool store_state_seqs) -> Tensor[]",
    "backward": (
        "(int handle, Tensor[] inputs, Tensor[] states, Tensor[] statics, Tensor[] outs, Tensor[] sseqs, "
        "Tensor[] extras, Tensor?[] grad_outs, Tensor?[] grad_sseqs, Tensor?[] grad_finals) -> Tensor[]"
    ),
}
for _name, _schema in _SCHEMAS.items():
    _lib.define(_name + _schema)


def _kernel(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        _lib.impl(name, fn, "CompositeExplicitAutograd")
        return fn

    return register


def _fake(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return torch.library.register_fake(f"flexsn::{name}", lib=_lib)


_registry: dict[int, KernelHandle] = {}
_lock = threading.Lock()
_ids = itertools.count(1)


def register_handle(spec: KernelSpec, resolve: Resolver, prototype: KernelSet) -> int:
    """Register a spec's kernels; ``prototype`` supplies the device-independent layout."""
    handle = KernelHandle(
        spec=spec,
        resolve=resolve,
        extras=tuple(prototype.extras),
        needs_state_seqs=prototype.needs_state_seqs,
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


# --------------------------------------------------------------------------
# helpers shared by the real and fake implementations
# --------------------------------------------------------------------------
def _check(handle: KernelHandle, inputs: list[Tensor], states: list[Tensor], statics: list[Tensor]) -> None:
    """The scan contract of a call (shared with every backend), and the dtype the handle's kernels take.

    Runs in the real and the fake implementations, so a bad call fails before
    any launch, and at trace time under torch.compile.
    """
    spec = handle.spec
    check_scan_call(inputs, states, statics, spec.num_inputs, spec.num_states, spec.num_static)
    if inputs[0].dtype != spec.torch_dtype:
        raise ValueError(
            f"FlexSN: the input sequences are {inputs[0].dtype}, but kernel handle's kernels take {spec.torch_dtype}."
        )


def _prepare(handle: KernelHandle, inputs: list[Tensor], states: list[Tensor], statics: list[Tensor]):  # noqa: ANN202
    """Kernel set, contiguous inputs and states (None: implicit zeros), prepared statics.

    Kernels take data pointers and element counts, so no reshaping is needed:
    a ``[T, *shape]`` tensor is already a ``[T, N]`` stream; that is why every
    input and state must share the first input's layout (checked: a smaller one
    would be read or written out of bounds).
    """
    _check(handle, inputs, states, statics)
    x0 = inputs[0]
    ks = handle.kernels(x0.device)
    contiguous = [x if x.is_contiguous() else x.contiguous() for x in inputs]
    flat_states: list[Tensor | None] = (
        [s if s.is_contiguous() else s.contiguous() for s in states] if states else [None] * handle.spec.num_states
    )
    prepared = [StaticArg.prepare(s, x0.shape[1:], ks.dtype, x0.device) for s in statics] if statics else []
    return ks, contiguous, flat_states, prepared


def _contiguous(xs: list[Tensor]) -> list[Tensor]:
    return [x if x.is_contiguous() else x.contiguous() for x in xs]


def _seq_like(x0: Tensor, n: int) -> list[Tensor]:
    return [x0.new_empty(x0.shape) for _ in range(n)]


def _state_like(x0: Tensor, n: int) -> list[Tensor]:
    return [x0.new_empty(x0.shape[1:]) for _ in range(n)]


def _returns_seqs(handle: KernelHandle, store_state_seqs: bool) -> bool:
    return store_state_seqs or handle.needs_state_seqs


# --------------------------------------------------------------------------
# inference
# --------------------------------------------------------------------------
@_kernel("inference")
def inference(handle: int, inputs: list[Tensor], states: list[Tensor], statics: list[Tensor]) -> list[Tensor]:
    """Outputs and state sequences (``[T, ...]`` each)."""
    ks, xs, flat_states, prepared = _prepare(lookup_handle(handle), inputs, states, statics)
    outs, sseqs = run_inference(ks, xs, flat_states, prepared)
    return [*outs, *sseqs]


@_fake("inference")
def _inference_fake(handle: int, inputs: list[Tensor], states: list[Tensor], statics: list[Tensor]) -> list[Tensor]:
    h = lookup_handle(handle)
    _check(h, inputs, states, statics)
    spec = h.spec
    return _seq_like(inputs[0], spec.num_outputs + spec.num_states)


@_kernel("inference_final")
def inference_final(handle: int, inputs: list[Tensor], states: list[Tensor], statics: list[Tensor]) -> list[Tensor]:
    """Outputs (``[T, ...]``) and final states."""
    ks, xs, flat_states, prepared = _prepare(lookup_handle(handle), inputs, states, statics)
    outs, finals = run_inference_final(ks, xs, flat_states, prepared)
    return [*outs, *finals]


@_fake("inference_final")
def _inference_final_fake(handle: int, inputs: list[Tensor], states: list[Tensor], statics: list[Tensor]) -> list[Tensor]:
    h = lookup_handle(handle)
    _check(h, inputs, states, statics)
    spec = h.spec
    return _seq_like(inputs[0], spec.num_outputs) + _state_like(inputs[0], spec.num_states)


# --------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------
@_kernel("training")
def training(
    handle: int, inputs: list[Tensor], states: list[Tensor], statics: list[Tensor], store_state_seqs: bool
) -> list[Tensor]:
    """Outputs, final states, state sequences (if stored or needed), saved buffers."""
    h = lookup_handle(handle)
    ks, xs, flat_states, prepared = _prepare(h, inputs, states, statics)
    outs, sseqs, finals, extras = run_forward(ks, xs, flat_states, prepared, store_state_seqs=store_state_seqs)
    result = [*outs, *finals]
    if _returns_seqs(h, store_state_seqs):
        assert sseqs is not None
        result += sseqs
    return result + extras


@_fake("training")
def _training_fake(
    handle: int, inputs: list[Tensor], states: list[Tensor], statics: list[Tensor], store_state_seqs: bool
) -> list[Tensor]:
    h = lookup_handle(handle)
    _check(h, inputs, states, statics)
    spec, x0 = h.spec, inputs[0]
    result = _seq_like(x0, spec.num_outputs) + _state_like(x0, spec.num_states)
    if _returns_seqs(h, store_state_seqs):
        result += _seq_like(x0, spec.num_states)
    return result + [x0.new_empty(x0.shape, dtype=dt) for dt in h.extras]


@_kernel("backward")
def backward(
    handle: int,
    inputs: list[Tensor],
    states: list[Tensor],
    statics: list[Tensor],
    outs: list[Tensor],
    sseqs: list[Tensor],
    extras: list[Tensor],
    grad_outs: list[Tensor | None],
    grad_sseqs: list[Tensor | None],
    grad_finals: list[Tensor | None],
) -> list[Tensor]:
    """Gradients of the inputs, the given initial states and the statics that require grad."""
    h = lookup_handle(handle)
    ks, xs, flat_states, prepared = _prepare(h, inputs, states, statics)

    def maybe(gs: list[Tensor | None]) -> list[Tensor | None]:
        return [None if g is None else (g if g.is_contiguous() else g.contiguous()) for g in gs]

    g_in, g_init, g_st = run_backward(
        ks,
        xs,
        flat_states,
        prepared,
        _contiguous(outs),
        _contiguous(sseqs) if sseqs else None,
        _contiguous(extras),
        maybe(grad_outs),
        maybe(grad_sseqs) or [None] * h.spec.num_states,
        maybe(grad_finals),
    )
    result = [g for g in g_in if g is not None]
    if states:
        result += [g for g in g_init if g is not None]
    return result + [g for g in g_st if g is not None]


@_fake("backward")
def _backward_fake(
    handle: int,
    inputs: list[Tensor],
    states: list[Tensor],
    statics: list[Tensor],
    outs: list[Tensor],
    sseqs: list[Tensor],
    extras: list[Tensor],
    grad_outs: list[Tensor | None],
    grad_sseqs: list[Tensor | None],
    grad_finals: list[Tensor | None],
) -> list[Tensor]:
    spec = lookup_handle(handle).spec
    req = spec.requires_grad or ()
    ni, ns = spec.num_inputs, spec.num_states
    result = [x.new_empty(x.shape) for i, x in enumerate(inputs) if req[i]]
    if states:
        result += [s.new_empty(s.shape) for j, s in enumerate(states) if req[ni + j]]
    return result + [c.new_empty(c.shape) for k, c in enumerate(statics) if req[ni + ns + k]]


def _setup_training(ctx: Any, inputs: tuple[Any, ...], output: list[Tensor]) -> None:
    handle, xs, states, statics, store = inputs
    h = lookup_handle(handle)
    spec = h.spec
    no, ns = spec.num_outputs, spec.num_states
    outs = output[:no]
    pos = no + ns
    sseqs: list[Tensor] = []
    if _returns_seqs(h, store):
        sseqs = output[pos : pos + ns]
        pos += ns
    extras = output[pos:]
    retain_active(handle)
    # Released after the backward ran, or when the graph is freed without one.
    ctx.release = weakref.finalize(ctx, release_active, handle)
    ctx.handle, ctx.store = handle, store
    ctx.counts = (len(xs), len(states), len(statics), len(outs), len(sseqs), len(extras))
    ctx.save_for_backward(*xs, *states, *statics, *outs, *sseqs, *extras)


def _backward_training(ctx: Any, grads: list[Tensor | None]) -> tuple[Any, ...]:
    h = lookup_handle(ctx.handle)
    spec = h.spec
    n_x, n_s, n_c, n_o, n_q, n_e = ctx.counts
    saved = list(ctx.saved_tensors)
    xs, saved = saved[:n_x], saved[n_x:]
    states, saved = saved[:n_s], saved[n_s:]
    statics, saved = saved[:n_c], saved[n_c:]
    outs, saved = saved[:n_o], saved[n_o:]
    sseqs, extras = saved[:n_q], saved[n_q:]
    no, ns = spec.num_outputs, spec.num_states
    grad_outs = list(grads[:no])
    grad_finals = list(grads[no : no + ns])
    grad_sseqs: list[Tensor | None] = [None] * ns
    if ctx.store:
        grad_sseqs = list(grads[no + ns : no + 2 * ns])
    try:
        flat_grads = torch.ops.flexsn.backward.default(
            ctx.handle, xs, states, statics, outs, sseqs, extras, grad_outs, grad_sseqs, grad_finals
        )
    finally:
        ctx.release()
    req = spec.requires_grad or ()
    it = iter(flat_grads)
    g_x = [next(it) if req[i] else None for i in range(n_x)]
    g_s = [next(it) if req[spec.num_inputs + j] else None for j in range(n_s)]
    g_c = [next(it) if req[spec.num_inputs + ns + k] else None for k in range(n_c)]
    return None, g_x, g_s, g_c, None


torch.library.register_autograd("flexsn::training", _backward_training, setup_context=_setup_training, lib=_lib)
