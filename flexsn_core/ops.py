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
    flexsn::training         (h, inputs, states, statics, store_state_seqs, recompute)
                             -> outputs + final states + [state seqs] + saved
    flexsn::backward         (h, shape, device, ..., saved..., grads...) -> grads of inputs, states, statics

What the training op keeps for autograd is exactly what the backward kernel
reads (the save plan): in stored mode the plan's inputs, outputs, state
sequences and extra buffers (plus initial states and statics when read); with
``recompute=True`` only the inputs and initial states -- the backward kernel
regenerates the rest, and the forward writes no extras. Nothing else of the
call stays alive: an input the plan does not read is not saved.

``states`` may be an empty list: the kernels then start from zeros without a
zeros tensor (zero-state elision).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode

from .contract import check_scan_call
from .handles import (
    KernelHandle,
    attach_finalizer,
    live_handles,
    lookup_handle,
    register_handle,
    release_active,
    release_owner,
    retain_active,
    retain_owner,
)
from .import_hooks import after_import
from .runtime import StaticArg, run_backward, run_forward, run_inference, run_inference_final
from .settings import backward_mode

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
    "choose_recompute",
]

# Ops are defined with torch.library.Library rather than @custom_op: the
# latter wraps every kernel in a lazy `torch._dynamo.disable`, whose first call
# imports torch._dynamo (seconds) — paid by every job at its first step.
_lib = torch.library.Library("flexsn", "DEF")
_SCHEMAS = {
    "inference": "(int handle, Tensor[] inputs, Tensor[] states, Tensor[] statics) -> Tensor[]",
    "inference_final": "(int handle, Tensor[] inputs, Tensor[] states, Tensor[] statics) -> Tensor[]",
    "training": (
        "(int handle, Tensor[] inputs, Tensor[] states, Tensor[] statics, bool store_state_seqs, "
        "bool recompute) -> Tensor[]"
    ),
    # Internal (called by the training op's autograd formula): only what the
    # backward kernel reads is passed; ``shape``/``device`` describe the inputs.
    "backward": (
        "(int handle, SymInt[] shape, Device device, bool with_states, bool recompute, Tensor?[] inputs, "
        "Tensor[] states, Tensor[] statics, Tensor?[] outs, Tensor?[] sseqs, Tensor[] extras, "
        "Tensor?[] grad_outs, Tensor?[] grad_sseqs, Tensor?[] grad_finals) -> Tensor[]"
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


def _seq_indices(handle: KernelHandle, store_state_seqs: bool, recompute: bool) -> tuple[int, ...]:
    """The states whose sequences the training op returns: all when stored, else those the backward reads."""
    if store_state_seqs:
        return tuple(range(handle.spec.num_states))
    return () if recompute else handle.plan.state_seqs


def choose_recompute(handle: int) -> bool:
    """Whether a training call should use the recompute backward (``FLEXSN_BACKWARD``).

    ``stored`` / ``recompute`` force a mode. ``auto`` (the default) recomputes
    under ``torch.compile`` -- the op then keeps only its inputs, which Inductor
    can rematerialize from what the layer before keeps anyway (a BatchNorm
    output from the conv output) -- and in eager mode when that keeps fewer
    bytes alive than the stored plan (e.g. a two-state neuron whose plan stores
    a state sequence and an extra); otherwise the stored plan, which reads less.
    """
    mode = backward_mode()
    h = lookup_handle(handle)
    if mode != "auto" or not h.trainable:
        return mode == "recompute" and h.trainable
    if torch.compiler.is_compiling():
        return True
    plan = h.plan
    return plan.held_bytes_per_step > len(plan.recompute_inputs) * h.spec.torch_dtype.itemsize


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
    handle: int,
    inputs: list[Tensor],
    states: list[Tensor],
    statics: list[Tensor],
    store_state_seqs: bool,
    recompute: bool,
) -> list[Tensor]:
    """Outputs, final states, the returned state sequences, saved extras (none with ``recompute``)."""
    h = lookup_handle(handle)
    ks, xs, flat_states, prepared = _prepare(h, inputs, states, statics)
    outs, sseqs, finals, extras = run_forward(
        ks, xs, flat_states, prepared, store_state_seqs=store_state_seqs, recompute=recompute
    )
    result = [*outs, *finals]
    indices = _seq_indices(h, store_state_seqs, recompute)
    if indices:
        assert sseqs is not None
        result += [sseqs[j] for j in indices]  # type: ignore[misc]
    return result + extras


@_fake("training")
def _training_fake(
    handle: int,
    inputs: list[Tensor],
    states: list[Tensor],
    statics: list[Tensor],
    store_state_seqs: bool,
    recompute: bool,
) -> list[Tensor]:
    h = lookup_handle(handle)
    _check(h, inputs, states, statics)
    spec, x0 = h.spec, inputs[0]
    result = _seq_like(x0, spec.num_outputs) + _state_like(x0, spec.num_states)
    result += _seq_like(x0, len(_seq_indices(h, store_state_seqs, recompute)))
    return result + ([] if recompute else [x0.new_empty(x0.shape, dtype=dt) for dt in h.plan.extras])


@_kernel("backward")
def backward(
    handle: int,
    shape: list[int],
    device: torch.device,
    with_states: bool,
    recompute: bool,
    inputs: list[Tensor | None],
    states: list[Tensor],
    statics: list[Tensor],
    outs: list[Tensor | None],
    sseqs: list[Tensor | None],
    extras: list[Tensor],
    grad_outs: list[Tensor | None],
    grad_sseqs: list[Tensor | None],
    grad_finals: list[Tensor | None],
) -> list[Tensor]:
    """Gradients of the inputs, the initial states (``with_states``: given and wanted) and the statics that require grad."""
    h = lookup_handle(handle)
    ks = h.kernels(device)
    elem = torch.Size(shape[1:])
    prepared = [StaticArg.prepare(s, elem, ks.dtype, device) for s in statics]

    def maybe(gs: list[Tensor | None]) -> list[Tensor | None]:
        return [None if g is None else (g if g.is_contiguous() else g.contiguous()) for g in gs]

    g_in, g_init, g_st = run_backward(
        ks,
        maybe(inputs),
        maybe(states) if states else [None] * h.spec.num_states,  # type: ignore[arg-type]
        prepared,
        maybe(outs),
        maybe(sseqs),
        _contiguous(extras),
        maybe(grad_outs),
        maybe(grad_sseqs) or [None] * h.spec.num_states,
        maybe(grad_finals),
        recompute=recompute,
        shape=shape,
        device=device,
        want_init=with_states,
    )
    result = [g for g in g_in if g is not None]
    if with_states:
        result += [g for g in g_init if g is not None]
    return result + [g for g in g_st if g is not None]


@_fake("backward")
def _backward_fake(
    handle: int,
    shape: list[int],
    device: torch.device,
    with_states: bool,
    recompute: bool,
    inputs: list[Tensor | None],
    states: list[Tensor],
    statics: list[Tensor],
    outs: list[Tensor | None],
    sseqs: list[Tensor | None],
    extras: list[Tensor],
    grad_outs: list[Tensor | None],
    grad_sseqs: list[Tensor | None],
    grad_finals: list[Tensor | None],
) -> list[Tensor]:
    spec = lookup_handle(handle).spec
    req = spec.requires_grad or ()
    ni, ns = spec.num_inputs, spec.num_states
    dtype = spec.torch_dtype
    result = [torch.empty(shape, dtype=dtype, device=device) for i in range(ni) if req[i]]
    if with_states:
        result += [torch.empty(shape[1:], dtype=dtype, device=device) for j in range(ns) if req[ni + j]]
    return result + [c.new_empty(c.shape) for k, c in enumerate(statics) if req[ni + ns + k]]


def _setup_training(ctx: Any, inputs: tuple[Any, ...], output: list[Tensor]) -> None:
    """Save exactly what the backward kernel reads (see the module docstring)."""
    handle, xs, states, statics, store, recompute = inputs
    h = lookup_handle(handle)
    spec, plan = h.spec, h.plan
    no, ns = spec.num_outputs, spec.num_states
    outs = output[:no]
    indices = _seq_indices(h, store, recompute)
    returned = dict(zip(indices, output[no + ns : no + ns + len(indices)]))
    extras = list(output[no + ns + len(indices) :])
    if recompute:
        keep_x, keep_states, keep_outs, keep_seqs = plan.recompute_inputs, plan.recompute_needs_init, (), ()
    else:
        keep_x, keep_states, keep_outs, keep_seqs = plan.inputs, plan.needs_init, plan.outputs, plan.state_seqs
    saved_x = [x if i in keep_x else None for i, x in enumerate(xs)]
    saved_states = list(states) if keep_states else []
    saved_outs = [o if i in keep_outs else None for i, o in enumerate(outs)]
    saved_seqs = [returned[j] if j in keep_seqs else None for j in range(ns)]
    # An output no loss reaches (typically the final states a memory module keeps)
    # gets None, not a zeros tensor the size of a step: the kernel takes absent
    # gradients as a flag.
    ctx.set_materialize_grads(False)
    retain_active(handle)
    # Released after the backward ran, or when the graph is freed without one.
    ctx.release = weakref.finalize(ctx, release_active, handle)
    ctx.handle, ctx.store, ctx.recompute = handle, store, recompute
    ctx.shape, ctx.device, ctx.with_states = list(xs[0].shape), xs[0].device, bool(states)
    ctx.layout = (
        [x is not None for x in saved_x], len(saved_states), len(statics),
        [o is not None for o in saved_outs], [q is not None for q in saved_seqs], len(extras),
    )
    present = [t for group in (saved_x, saved_states, statics, saved_outs, saved_seqs, extras) for t in group]
    ctx.save_for_backward(*(t for t in present if t is not None))


def _direct_call_ok(tensors: list[Tensor | None]) -> bool:
    """True in plain eager autograd: the op's implementation may be called without the dispatcher.

    Not while tracing (Dynamo, AOTAutograd, a dispatch mode) or with tensor
    subclasses or functorch wrappers: those must see the op itself.
    """
    if torch.compiler.is_compiling() or _get_current_dispatch_mode() is not None:
        return False
    return all(
        t is None or (type(t) is Tensor and not torch._C._functorch.is_functorch_wrapped_tensor(t)) for t in tensors
    )


def _backward_training(ctx: Any, grads: list[Tensor | None]) -> tuple[Any, ...]:
    h = lookup_handle(ctx.handle)
    spec = h.spec
    x_flags, n_states, n_statics, out_flags, seq_flags, n_extras = ctx.layout
    saved = iter(ctx.saved_tensors)
    xs = [next(saved) if f else None for f in x_flags]
    states = [next(saved) for _ in range(n_states)]
    statics = [next(saved) for _ in range(n_statics)]
    outs = [next(saved) if f else None for f in out_flags]
    sseqs = [next(saved) if f else None for f in seq_flags]
    extras = [next(saved) for _ in range(n_extras)]
    no, ns = spec.num_outputs, spec.num_states
    grad_outs = list(grads[:no])
    grad_finals = list(grads[no : no + ns])
    grad_sseqs: list[Tensor | None] = [None] * ns
    if ctx.store:
        grad_sseqs = list(grads[no + ns : no + 2 * ns])
    # Initial-state gradients only when a given initial state requires grad (a memory
    # module's fresh zeros do not): none is allocated or stored otherwise.
    init_grads = ctx.with_states and any(ctx.needs_input_grad[2])
    args = (
        ctx.handle, ctx.shape, ctx.device, init_grads, ctx.recompute,
        xs, states, statics, outs, sseqs, extras, grad_outs, grad_sseqs, grad_finals,
    )
    # Eager: skip the dispatcher round trip (it costs more than a small kernel).
    direct = _direct_call_ok([*xs, *states, *statics, *outs, *sseqs, *extras, *grads])
    try:
        flat_grads = (backward if direct else torch.ops.flexsn.backward.default)(*args)
    finally:
        ctx.release()
    req = spec.requires_grad or ()
    n_x = len(x_flags)
    it = iter(flat_grads)
    g_x = [next(it) if req[i] else None for i in range(n_x)]
    g_s = [next(it) if init_grads and req[spec.num_inputs + j] else None for j in range(ns)] if ctx.with_states else []
    g_c = [next(it) if req[spec.num_inputs + ns + k] else None for k in range(n_statics)]
    return None, g_x, g_s, g_c, None, None


torch.library.register_autograd("flexsn::training", _backward_training, setup_context=_setup_training, lib=_lib)


def _install_remat() -> None:
    from . import remat

    remat.install()


# Installed when Inductor's config module is first imported (after its body has
# run, so our setting is not overwritten): importing it ourselves would pull in
# Dynamo (about a second) in jobs that never compile.
after_import("torch._inductor.config", _install_remat)
