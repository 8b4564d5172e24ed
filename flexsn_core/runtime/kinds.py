"""The four kernel kinds as tensor functions over flattened ``[T, N]`` sequences.

    run_inference        outputs + state sequences
    run_inference_final  outputs + final states
    run_forward          training: outputs, state sequences (if stored), final states, saved extras
    run_backward         gradients of inputs, initial states and static inputs

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
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None, list[torch.Tensor], list[torch.Tensor]]:
    """Training forward: outputs, state sequences (if stored), final states, saved extras.

    State sequences are stored when asked for or when the backward reads them.
    """
    values, T, N, device = _common(ks, inputs, inits, statics)
    spec = ks.spec
    x0 = inputs[0]
    store = store_state_seqs or ks.needs_state_seqs
    outs = _empty_seq(x0, spec.num_outputs)
    sseqs = _empty_seq(x0, spec.num_states) if store else None
    extras = [torch.empty(x0.shape, dtype=dt, device=device) for dt in ks.extras]
    if T == 0:
        return outs, sseqs, _finals_when_empty(inits, x0), extras
    finals = [x0.new_empty(x0.shape[1:]) for _ in range(spec.num_states)]
    dummy = ks.dummy(device)
    values.update({f"out{i}": o for i, o in enumerate(outs)})
    for j in range(spec.num_states):
        values[f"sseq{j}"] = sseqs[j] if sseqs is not None else dummy
        values[f"fin{j}"] = finals[j]
    values["store_sseq"] = 1 if store else 0
    values.update({f"sav{m}": e for m, e in enumerate(extras)})
    ks.launch("forward", values, N, device)
    return outs, sseqs, finals, extras


def run_backward(
    ks: KernelSet,
    inputs: Sequence[torch.Tensor],
    inits: Sequence[torch.Tensor | None],
    statics: Sequence[StaticArg],
    outs: Sequence[torch.Tensor],
    sseqs: Sequence[torch.Tensor] | None,
    extras: Sequence[torch.Tensor],
    grad_outs: Sequence[torch.Tensor | None],
    grad_sseqs: Sequence[torch.Tensor | None],
    grad_finals: Sequence[torch.Tensor | None],
) -> tuple[list[torch.Tensor | None], list[torch.Tensor | None], list[torch.Tensor | None]]:
    """Gradients of inputs, initial states and static inputs (None where not required)."""
    values, T, N, device = _common(ks, inputs, inits, statics)
    spec = ks.spec
    req = spec.requires_grad or ()
    ni, ns, nc = spec.num_inputs, spec.num_states, spec.num_static
    x0 = inputs[0]
    dummy = ks.dummy(device)
    grad_in = [torch.empty_like(x0) if req[i] else None for i in range(ni)]
    grad_init = [x0.new_empty(x0.shape[1:]) if req[ni + j] else None for j in range(ns)]
    grad_static_flat = [
        torch.zeros(N, dtype=torch.float32, device=device) if req[ni + ns + c] else None for c in range(nc)
    ]
    if T == 0:
        for j, g in enumerate(grad_init):
            if g is not None:
                gf = grad_finals[j]
                g.copy_(gf if gf is not None else torch.zeros_like(g))
        grad_static = [
            None if g is None else statics[c].reduce_grad(g, spec.torch_dtype)
            for c, g in enumerate(grad_static_flat)
        ]
        return grad_in, grad_init, grad_static  # type: ignore[return-value]
    for i in range(spec.num_outputs):
        values[f"out{i}"] = outs[i]
        g = grad_outs[i]
        values[f"gout{i}"] = dummy if g is None else g
        values[f"gout{i}_flag"] = 0 if g is None else 1
    for j in range(ns):
        values[f"sseq{j}"] = sseqs[j] if sseqs is not None else dummy
        for name, g in ((f"gsseq{j}", grad_sseqs[j]), (f"gfin{j}", grad_finals[j])):
            values[name] = dummy if g is None else g
            values[f"{name}_flag"] = 0 if g is None else 1
        values[f"ginit{j}"] = grad_init[j] if grad_init[j] is not None else dummy
    values.update({f"sav{m}": e for m, e in enumerate(extras)})
    for i in range(ni):
        values[f"gin{i}"] = grad_in[i] if grad_in[i] is not None else dummy
    for c in range(nc):
        flat = grad_static_flat[c]
        values[f"gst{c}"] = flat if flat is not None else ks.dummy(device, torch.float32)
    ks.launch("backward", values, N, device)
    grad_static = [
        None if g is None else statics[c].reduce_grad(g, spec.torch_dtype)
        for c, g in enumerate(grad_static_flat)
    ]
    return grad_in, grad_init, grad_static  # type: ignore[return-value]
