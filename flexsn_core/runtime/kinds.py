"""The four kernel kinds as tensor functions over flattened ``[T, N]`` sequences.

    run_inference        outputs + state sequences
    run_inference_final  outputs + final states
    run_forward          training: outputs, state sequences (if stored), final states, saved extras
    run_backward         gradients of inputs, initial states and static inputs (stored or recompute mode)

Kernels take data pointers and element counts: a contiguous ``[T, *shape]``
tensor already is a ``[T, N]`` stream. Absent initial states and gradients are
passed as a flag and a dummy pointer, never as a zeros tensor. The custom ops
(:mod:`flexsn_core.ops`) and the service's tuner build on these.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..codegen.save_plan import scratch_states
from .kernel_set import KernelSet

__all__ = ["StaticArg", "run_inference", "run_inference_final", "run_forward", "run_backward"]


@dataclass(frozen=True)
class StaticArg:
    """A static input prepared for the kernel: a flat buffer and its stride."""

    tensor: torch.Tensor  # 1 element (stride 0) or N elements (stride 1)
    stride: int
    shape: torch.Size  # the caller's shape, for reducing the gradient
    elem_shape: torch.Size  # the per-step shape it was broadcast to

    @classmethod
    def prepare(
        cls, static: torch.Tensor, elem_shape: torch.Size, dtype: torch.dtype, device: torch.device | None = None
    ) -> StaticArg:
        """``device``: the inputs' device; a 0-dim CPU static (allowed, as in PyTorch) is copied there."""
        t = static.detach().to(device=device, dtype=dtype)
        if t.numel() == 1:
            return cls(t.reshape(1).contiguous(), 0, static.shape, torch.Size(elem_shape))
        try:
            full = t.expand(elem_shape)
        except RuntimeError as exc:
            raise ValueError(
                f"static input of shape {tuple(static.shape)} does not broadcast to the "
                f"per-step shape {tuple(elem_shape)}"
            ) from exc
        return cls(full.contiguous().reshape(-1), 1, static.shape, torch.Size(elem_shape))

    def reduce_grad(self, grad: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Sum a per-neuron fp32 gradient back to the static input's shape."""
        if self.stride == 0:
            return grad.sum().reshape(self.shape).to(dtype)
        return grad.reshape(self.elem_shape).sum_to_size(self.shape).to(dtype)


def _common(
    ks: KernelSet,
    inputs: Sequence[torch.Tensor],
    inits: Sequence[torch.Tensor | None],
    statics: Sequence[StaticArg],
) -> tuple[dict[str, Any], int, int, torch.device]:
    x0 = inputs[0]
    shape = x0.shape
    T, N = shape[0], math.prod(shape[1:])
    device = x0.device
    names = ks.names
    values: dict[str, Any] = {"T": T, "N": N}
    values.update(zip(names["in"], inputs))
    for name, flag, s in zip(names["init"], names["init_flag"], inits):
        if s is None:
            values[name], values[flag] = ks.dummy(device), 0
        else:
            values[name], values[flag] = s, 1
    for name, stride, st in zip(names["st"], names["st_stride"], statics):
        values[name], values[stride] = st.tensor, st.stride
    return values, T, N, device


def _empty_seq(like: torch.Tensor, n: int) -> list[torch.Tensor]:
    return [torch.empty_like(like) for _ in range(n)]


def _finals_when_empty(inits: Sequence[torch.Tensor | None], x0: torch.Tensor) -> list[torch.Tensor]:
    return [s.clone() if s is not None else x0.new_zeros(x0.shape[1:]) for s in inits]


def run_inference(
    ks: KernelSet,
    inputs: Sequence[torch.Tensor],
    inits: Sequence[torch.Tensor | None],
    statics: Sequence[StaticArg] = (),
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Outputs and state sequences, each shaped like ``inputs[0]``."""
    values, T, N, device = _common(ks, inputs, inits, statics)
    spec = ks.spec
    outs = _empty_seq(inputs[0], spec.num_outputs)
    sseqs = _empty_seq(inputs[0], spec.num_states)
    values.update(zip(ks.names["out"], outs))
    values.update(zip(ks.names["sseq"], sseqs))
    ks.launch("inference", values, N, device)
    return outs, sseqs


def run_inference_final(
    ks: KernelSet,
    inputs: Sequence[torch.Tensor],
    inits: Sequence[torch.Tensor | None],
    statics: Sequence[StaticArg] = (),
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Outputs per step and final states."""
    values, T, N, device = _common(ks, inputs, inits, statics)
    spec = ks.spec
    outs = _empty_seq(inputs[0], spec.num_outputs)
    if T == 0:
        return outs, _finals_when_empty(inits, inputs[0])
    finals = [inputs[0].new_empty(inputs[0].shape[1:]) for _ in range(spec.num_states)]
    values.update(zip(ks.names["out"], outs))
    values.update(zip(ks.names["fin"], finals))
    ks.launch("inference_final", values, N, device)
    return outs, finals


def run_forward(
    ks: KernelSet,
    inputs: Sequence[torch.Tensor],
    inits: Sequence[torch.Tensor | None],
    statics: Sequence[StaticArg] = (),
    *,
    store_state_seqs: bool = True,
    recompute: bool = False,
) -> tuple[list[torch.Tensor], list[torch.Tensor | None] | None, list[torch.Tensor], list[torch.Tensor]]:
    """Training forward: outputs, state sequences, final states, saved extras.

    State sequence ``j`` is stored when asked for, or (stored mode) when the
    backward reads it; the result's ``sseqs`` has None for the others, and is
    None when none is stored. With ``recompute`` the backward will rebuild what
    it needs from the inputs: no extras are written (an empty list).
    """
    values, T, N, device = _common(ks, inputs, inits, statics)
    spec = ks.spec
    x0 = inputs[0]
    ns = spec.num_states
    needed = () if recompute else ks.plan.state_seqs
    stored = [store_state_seqs or j in needed for j in range(ns)]
    outs = _empty_seq(x0, spec.num_outputs)
    sseqs: list[torch.Tensor | None] | None = [torch.empty_like(x0) if s else None for s in stored]
    if not any(stored):
        sseqs = None
    extras = [] if recompute else [torch.empty(x0.shape, dtype=dt, device=device) for dt in ks.extras]
    if T == 0:
        return outs, sseqs, _finals_when_empty(inits, x0), extras
    finals = [x0.new_empty(x0.shape[1:]) for _ in range(ns)]
    values.update({f"out{i}": o for i, o in enumerate(outs)})
    for j in range(ns):
        seq = sseqs[j] if sseqs is not None else None
        values[f"sseq{j}"] = seq if seq is not None else ks.dummy(device)
        values[f"store_sseq{j}"] = 1 if seq is not None else 0
        values[f"fin{j}"] = finals[j]
    for m, dt in enumerate(ks.extras):
        values[f"sav{m}"] = extras[m] if extras else ks.dummy(device, dt)
    values["store_sav"] = 0 if recompute else 1
    ks.launch("forward", values, N, device)
    return outs, sseqs, finals, extras


def _check_kept(
    ks: KernelSet,
    inputs: Sequence[torch.Tensor | None],
    outs: Sequence[torch.Tensor | None] | None,
    sseqs: Sequence[torch.Tensor | None] | None,
    extras: Sequence[torch.Tensor],
    recompute: bool,
) -> None:
    """Every buffer the backward kernel will read is given.

    A missing one would be passed as the dummy pointer and read ``T * N``
    elements past it: an illegal address on a GPU, garbage in the interpreter.
    """
    plan = ks.plan

    def given(seq: Sequence[torch.Tensor | None] | None, i: int) -> bool:
        return seq is not None and i < len(seq) and seq[i] is not None

    wanted = [("input", list(inputs), plan.recompute_inputs if recompute else plan.inputs)]
    if not recompute:
        wanted += [("output", outs, plan.outputs), ("state sequence", sseqs, plan.state_seqs)]
    missing = [f"{what} {i}" for what, seq, indices in wanted for i in indices if not given(seq, i)]
    if not recompute and len(extras) < len(plan.extras):
        missing.append(f"{len(plan.extras) - len(extras)} saved extra buffer(s)")
    if missing:
        mode = "recompute" if recompute else "stored"
        raise ValueError(f"run_backward ({mode} mode): the save plan reads {', '.join(missing)}, which were not given")


def run_backward(
    ks: KernelSet,
    inputs: Sequence[torch.Tensor | None],
    inits: Sequence[torch.Tensor | None],
    statics: Sequence[StaticArg],
    outs: Sequence[torch.Tensor | None],
    sseqs: Sequence[torch.Tensor | None] | None,
    extras: Sequence[torch.Tensor],
    grad_outs: Sequence[torch.Tensor | None],
    grad_sseqs: Sequence[torch.Tensor | None],
    grad_finals: Sequence[torch.Tensor | None],
    *,
    recompute: bool = False,
    shape: Sequence[int] | None = None,
    device: torch.device | None = None,
    want_init: bool = True,
) -> tuple[list[torch.Tensor | None], list[torch.Tensor | None], list[torch.Tensor | None]]:
    """Gradients of inputs, initial states and static inputs (None where not required).

    Only what the backward kernel reads must be given: stored mode reads the
    plan's inputs, outputs, state sequences and extras; recompute mode
    (``recompute=True``) reads the plan's recompute inputs and the initial
    states, and regenerates state sequences in scratch buffers of its own
    (the input gradient's buffer doubles as the first one; any other is a
    ``[T, width]`` buffer of a fraction of ``N`` columns, reused by each program
    of a launch capped to fit it, see ``KernelSet.scratch_width``). Anything
    else may be None (a dummy pointer is passed; the kernel never reads it).
    ``shape`` (``[T, *per-step shape]``) and ``device`` are needed when no input
    is given. ``want_init=False``: no initial-state gradients (the caller's
    initial states do not require grad), none allocated or stored.
    """
    spec = ks.spec
    _check_kept(ks, inputs, outs, sseqs, extras, recompute)
    present = [t for t in (*inputs, *(outs or ()), *(sseqs or ()), *extras, *grad_outs, *grad_sseqs, *grad_finals)
               if t is not None]
    x0 = next((x for x in inputs if x is not None), None)
    shape = torch.Size(shape if shape is not None else x0.shape)  # type: ignore[union-attr]
    device = device or present[0].device
    T, N = shape[0], math.prod(shape[1:])
    dtype = ks.dtype
    req = spec.requires_grad or ()
    ni, ns, nc = spec.num_inputs, spec.num_states, spec.num_static
    dummy = ks.dummy(device)
    grad_in = [torch.empty(shape, dtype=dtype, device=device) if req[i] else None for i in range(ni)]
    grad_init = [
        torch.empty(shape[1:], dtype=dtype, device=device) if req[ni + j] and want_init else None for j in range(ns)
    ]
    grad_static_flat = [
        torch.zeros(N, dtype=torch.float32, device=device) if req[ni + ns + c] else None for c in range(nc)
    ]
    if T == 0 or N == 0:
        for j, g in enumerate(grad_init):
            if g is not None:
                gf = grad_finals[j]
                g.copy_(gf if gf is not None else torch.zeros_like(g))
        grad_static = [
            None if g is None else statics[c].reduce_grad(g, spec.torch_dtype)
            for c, g in enumerate(grad_static_flat)
        ]
        return grad_in, grad_init, grad_static  # type: ignore[return-value]
    values: dict[str, Any] = {"T": T, "N": N, "recompute": 1 if recompute else 0, "SRS": N}
    for i in range(ni):
        x = inputs[i] if i < len(inputs) else None
        values[f"in{i}"] = x if x is not None else dummy
    for j in range(ns):
        s = inits[j] if j < len(inits) else None
        values[f"init{j}"], values[f"init{j}_flag"] = (dummy, 0) if s is None else (s, 1)
    for c, st in enumerate(statics):
        values[f"st{c}"], values[f"st{c}_stride"] = st.tensor, st.stride
    seqs: list[torch.Tensor | None] = list(sseqs) if sseqs is not None else [None] * ns
    width = None
    if recompute:
        # Scratch for the regenerated state sequences: the first may live in the input
        # gradient's buffer (read one row behind where the gradient is written), the
        # others in [T, width] buffers whose columns each program reuses block after block.
        spare, own = scratch_states(ks.plan.recompute_states, bool(ni) and grad_in[0] is not None)
        seqs = [None] * ns
        if spare is not None:
            seqs[spare] = grad_in[0]
        if own:
            width = ks.scratch_width(N, device)
            values["SRS"] = width
            for j in own:
                seqs[j] = torch.empty((T, width), dtype=dtype, device=device)
    for i in range(spec.num_outputs):
        o = outs[i] if outs and i < len(outs) else None
        values[f"out{i}"] = o if o is not None else dummy
        g = grad_outs[i]
        values[f"gout{i}"] = dummy if g is None else g
        values[f"gout{i}_flag"] = 0 if g is None else 1
    for j in range(ns):
        values[f"sseq{j}"] = seqs[j] if seqs[j] is not None else dummy
        for name, g in ((f"gsseq{j}", grad_sseqs[j]), (f"gfin{j}", grad_finals[j])):
            values[name] = dummy if g is None else g
            values[f"{name}_flag"] = 0 if g is None else 1
        values[f"ginit{j}"] = grad_init[j] if grad_init[j] is not None else dummy
        values[f"ginit{j}_flag"] = 0 if grad_init[j] is None else 1
    for m, dt in enumerate(ks.extras):
        values[f"sav{m}"] = extras[m] if m < len(extras) else ks.dummy(device, dt)
    for i in range(ni):
        values[f"gin{i}"] = grad_in[i] if grad_in[i] is not None else dummy
    for c in range(nc):
        flat = grad_static_flat[c]
        values[f"gst{c}"] = flat if flat is not None else ks.dummy(device, torch.float32)
    ks.launch("backward", values, N, device, width=width)
    grad_static = [
        None if g is None else statics[c].reduce_grad(g, spec.torch_dtype)
        for c, g in enumerate(grad_static_flat)
    ]
    return grad_in, grad_init, grad_static  # type: ignore[return-value]
