"""FlexSN: a multi-step spiking neuron from a single-step core."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .local import kernels_for
from .runtime import KernelSet, StaticArg, run_backward, run_forward, run_inference, run_inference_final
from .spec import KernelSpec

__all__ = ["FlexSN"]


class _Scan(torch.autograd.Function):
    """Training path: forward kernel now, backward kernel on ``.backward()``."""

    @staticmethod
    def forward(ctx, ks: KernelSet, layout: tuple[int, int, int, int, bool], *tensors: torch.Tensor):  # noqa: ANN001
        ni, ns, nc, n_init, store = layout
        inputs = list(tensors[:ni])
        inits = list(tensors[ni : ni + ns]) if n_init else [None] * ns
        static_tensors = tensors[ni + ns * n_init :]
        x0 = inputs[0]
        statics = [StaticArg.prepare(s, x0.shape[1:], ks.dtype) for s in static_tensors]
        flat = [x.reshape(x.shape[0], -1) for x in inputs]
        flat_inits = [None if s is None else s.reshape(-1) for s in inits]
        outs, sseqs, finals, extras = run_forward(ks, flat, flat_inits, statics, store_state_seqs=store)
        ctx.ks, ctx.layout, ctx.statics = ks, layout, statics
        ctx.shape = x0.shape
        ctx.save_for_backward(*flat, *[s for s in flat_inits if s is not None], *outs, *(sseqs or []), *extras)
        ctx.has_sseqs = sseqs is not None
        shape = x0.shape
        outs_v = [o.reshape(shape) for o in outs]
        seq_v = [s.reshape(shape) for s in sseqs] if store and sseqs is not None else []
        fin_v = [f.reshape(shape[1:]) for f in finals]
        return (*outs_v, *seq_v, *fin_v)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor | None):  # noqa: ANN001
        ks: KernelSet = ctx.ks
        ni, ns, nc, n_init, store = ctx.layout
        saved = list(ctx.saved_tensors)
        flat = saved[:ni]
        pos = ni
        if n_init:
            inits = saved[pos : pos + ns]
            pos += ns
        else:
            inits = [None] * ns
        no = ks.spec.num_outputs
        outs = saved[pos : pos + no]
        pos += no
        sseqs = None
        if ctx.has_sseqs:
            sseqs = saved[pos : pos + ns]
            pos += ns
        extras = saved[pos:]
        T = ctx.shape[0]
        g_outs = [None if g is None else g.reshape(T, -1).contiguous() for g in grads[:no]]
        idx = no
        g_seqs: list[torch.Tensor | None] = [None] * ns
        if store:
            g_seqs = [None if g is None else g.reshape(T, -1).contiguous() for g in grads[idx : idx + ns]]
            idx += ns
        g_fins = [None if g is None else g.reshape(-1).contiguous() for g in grads[idx : idx + ns]]
        g_in, g_init, g_st = run_backward(ks, flat, inits, ctx.statics, outs, sseqs, extras, g_outs, g_seqs, g_fins)
        shape = ctx.shape
        result: list[torch.Tensor | None] = [None, None]
        result += [None if g is None else g.reshape(shape) for g in g_in]
        if n_init:
            result += [None if g is None else g.reshape(shape[1:]) for g in g_init]
        result += list(g_st)
        return tuple(result)


class FlexSN(nn.Module):
    """A multi-step neuron running ``core`` over time with generated kernels.

    ``core(*inputs, *states, *static_inputs) -> (*outputs, *new_states)``.
    Inputs are ``[T, ...]`` sequences; states carry over between calls until
    :meth:`reset`.
    """

    def __init__(
        self,
        core: Callable[..., Any],
        num_inputs: int,
        num_states: int,
        num_outputs: int,
        example_inputs: Sequence[torch.Tensor] | None = None,
        requires_grad: Sequence[bool] | None = None,
        step_mode: str = "m",
        backend: str = "triton",
        store_state_seqs: bool = False,
        example_outputs: Sequence[torch.Tensor] | None = None,
        *,
        static_inputs: Sequence[torch.Tensor] = (),
        cache_url: str | None = None,
        cache_token: str | None = None,
    ) -> None:
        super().__init__()
        self.core = core
        self.num_inputs, self.num_states, self.num_outputs = num_inputs, num_states, num_outputs
        self.step_mode = step_mode
        self.backend = backend
        self.store_state_seqs = store_state_seqs
        self.static_inputs = list(static_inputs)
        dtype = example_inputs[0].dtype if example_inputs else torch.float32
        self.spec = KernelSpec.from_core(
            core, num_inputs, num_states, num_outputs,
            num_static=len(self.static_inputs), dtype=dtype, requires_grad=requires_grad,
        )
        self.states: list[torch.Tensor] | None = None
        self.state_seqs: list[torch.Tensor] | None = None

    def reset(self) -> None:
        self.states = None
        self.state_seqs = None

    def forward(self, *inputs: torch.Tensor):  # noqa: ANN201
        if self.backend == "torch":
            outputs = self._torch_forward(inputs)
        else:
            outputs = self._triton_forward(inputs)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def _torch_forward(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        states = self.states or [torch.zeros_like(inputs[0][0]) for _ in range(self.num_states)]
        outs: list[list[torch.Tensor]] = [[] for _ in range(self.num_outputs)]
        seqs: list[list[torch.Tensor]] = [[] for _ in range(self.num_states)]
        for t in range(inputs[0].shape[0]):
            res = self.core(*[x[t] for x in inputs], *states, *self.static_inputs)
            res = (res,) if isinstance(res, torch.Tensor) else tuple(res)
            for i in range(self.num_outputs):
                outs[i].append(res[i])
            states = list(res[self.num_outputs :])
            for j in range(self.num_states):
                seqs[j].append(states[j])
        self.states = states
        if self.store_state_seqs:
            self.state_seqs = [torch.stack(s) for s in seqs]
        return [torch.stack(o) for o in outs]

    def _triton_forward(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        x0 = inputs[0]
        ks = kernels_for(self.spec, x0.device)
        inputs = [x.contiguous() for x in inputs]
        inits = self.states
        statics = self.static_inputs
        grad = torch.is_grad_enabled() and (
            any(t.requires_grad for t in [*inputs, *(inits or []), *statics])
        )
        ns, no = self.num_states, self.num_outputs
        if grad and ks.trainable:
            layout = (self.num_inputs, ns, len(statics), 1 if inits is not None else 0, self.store_state_seqs)
            tensors = [*inputs, *(inits or []), *statics]
            res = _Scan.apply(ks, layout, *tensors)
            outs = list(res[:no])
            pos = no
            if self.store_state_seqs:
                self.state_seqs = list(res[pos : pos + ns])
                pos += ns
            self.states = list(res[pos : pos + ns])
            return outs
        shape = x0.shape
        flat = [x.reshape(shape[0], -1) for x in inputs]
        flat_inits = [None] * ns if inits is None else [s.reshape(-1).contiguous() for s in inits]
        st = [StaticArg.prepare(s, shape[1:], ks.dtype) for s in statics]
        if self.store_state_seqs:
            outs, sseqs = run_inference(ks, flat, flat_inits, st)
            self.state_seqs = [s.reshape(shape) for s in sseqs]
            self.states = [
                (s[-1] if shape[0] else (inits[j] if inits else x0.new_zeros(shape[1:])))
                for j, s in enumerate(self.state_seqs)
            ]
        else:
            outs, finals = run_inference_final(ks, flat, flat_inits, st)
            self.states = [f.reshape(shape[1:]) for f in finals]
        return [o.reshape(shape) for o in outs]

