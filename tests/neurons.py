"""Neuron cores used across the tests, and how to feed them.

Cores live at module level so their source can be captured into specs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

V_TH = 1.0
TAU = 2.0
ALPHA = 4.0


def _sigmoid_st(x):
    """Heaviside forward, sigmoid surrogate backward (straight-through)."""
    sg = torch.sigmoid(ALPHA * x)
    return sg + ((x >= 0).to(x.dtype) - sg).detach()


def _atan_st(x):
    sg = torch.atan(math.pi / 2 * ALPHA * x) / math.pi + 0.5
    return sg + ((x >= 0).to(x.dtype) - sg).detach()


def lif_hard(x, v):
    """LIF, hard reset to 0, sigmoid surrogate."""
    h = v + (x - v) / TAU
    spike = _sigmoid_st(h - V_TH)
    return spike, h * (1.0 - spike)


def lif_soft(x, v):
    """LIF, soft reset (subtract threshold, detached), atan surrogate."""
    h = v + (x - v) / TAU
    spike = _atan_st(h - V_TH)
    return spike, h - spike.detach() * V_TH


def alif(x, v, a):
    """Adaptive threshold: the threshold rises with every spike and decays."""
    h = 0.9 * v + x
    threshold = V_TH + 1.8 * a
    spike = _sigmoid_st(h - threshold)
    return spike, h - spike * threshold, 0.95 * a + 0.05 * spike


def izhikevich(x, v, u):
    """Izhikevich (regular spiking), half-ms Euler step, tanh surrogate; outputs spike and v."""
    dv = 0.04 * v * v + 5.0 * v + 140.0 - u + x
    v1 = v + 0.5 * dv
    u1 = u + 0.5 * 0.02 * (0.2 * v - u)
    sg = 0.5 * (1.0 + torch.tanh(0.1 * (v1 - 30.0)))
    spike = sg + ((v1 >= 30.0).to(v1.dtype) - sg).detach()
    v_next = torch.where(v1 >= 30.0, torch.full_like(v1, -65.0), v1)
    return spike, v_next, v_next, u1 + 8.0 * spike


def two_inputs(x_exc, x_inh, v):
    """Two input currents, two outputs (spike and a rectified membrane readout)."""
    h = v + (x_exc - 0.5 * x_inh - v) / TAU
    spike = _sigmoid_st(h - V_TH)
    v_new = torch.where(spike > 0.5, torch.zeros_like(h), h)
    return spike, torch.relu(h), v_new


def plif(x, v, w):
    """Parametric LIF: a learnable per-neuron decay sigmoid(w) as a static input."""
    decay = torch.sigmoid(w)
    h = v + (x - v) * decay
    spike = _sigmoid_st(h - V_TH)
    return spike, h * (1.0 - spike)


def lif_threshold(x, v, threshold):
    """LIF with a learnable scalar threshold (a static input broadcast to all neurons)."""
    h = v + (x - v) / TAU
    spike = _atan_st(h - threshold)
    return spike, h - spike * threshold


def synaptic_refractory(x, i_syn, v, ref):
    """Three states: synaptic current, membrane, refractory counter; fast-sigmoid surrogate."""
    i_new = 0.8 * i_syn + x
    ready = ref <= 0.0
    h = torch.where(ready, v + (i_new - v) / TAU, v)
    z = ALPHA * (h - V_TH)
    sg = 0.5 * z / (1.0 + torch.abs(z)) + 0.5
    spike = sg + ((z >= 0).to(z.dtype) - sg).detach()
    v_new = h * (1.0 - spike)
    ref_new = torch.clamp(ref - 1.0, min=0.0) + 3.0 * spike.detach()
    return spike, i_new, v_new, ref_new


def hard_spike(x, v):
    """A non-differentiable output: a plain threshold with no surrogate."""
    h = 0.5 * v + x
    spike = (h >= V_TH).to(h.dtype)
    return spike, h - spike * V_TH


def op_mix_a(x, s):
    """Exercise transcendental and rounding ops (smooth parts differentiable)."""
    a = torch.exp(-torch.abs(x)) + torch.log1p(torch.abs(s)) + torch.expm1(0.5 * x)
    b = torch.tanh(x) * torch.atan(s) + torch.sin(x) * torch.cos(s) + torch.erf(0.5 * x)
    c = torch.sqrt(torch.abs(s) + 1.0) + torch.rsqrt(x * x + 1.0) + torch.log2(s * s + 2.0)
    d = torch.floor(x) + torch.ceil(s) + torch.round(2.5 * x) + torch.sign(s) + torch.trunc(x)
    e = torch.clamp(x, -0.5, 0.75) + torch.minimum(x, s) + torch.maximum(x, s) + x ** 2 + s ** 3
    new_s = 0.5 * s + 0.1 * (a + b) - 0.05 * c + 0.01 * d * torch.sigmoid(x) + 0.1 * e
    return a * b - c + d + e, torch.clamp(new_s, -3.0, 3.0)


def op_mix_b(x, s):
    """Exercise selection, logic and casts."""
    pos = x > 0
    big = torch.abs(s) >= 1.0
    both = torch.logical_and(pos, big) | torch.logical_not(pos)
    y = torch.where(both, x * 2.0, -x)
    y = y.masked_fill(torch.logical_xor(pos, big), 0.25)
    z = torch.relu(s) - torch.relu(-x) + torch.clamp_min(x, 0.1) + torch.clamp_max(s, 0.2)
    w = both.to(x.dtype) * 3.0 + (x != s).float().to(x.dtype) + torch.ones_like(x) - torch.zeros_like(s)
    new_s = torch.where(pos, 0.9 * s + 0.1 * x, s / 2.0) + x.pow(0.5 * 2.0) * 0.01 + torch.reciprocal(x * x + 2.0)
    return y + z + w, new_s


@dataclass
class Model:
    name: str
    core: Callable
    num_inputs: int
    num_states: int
    num_outputs: int
    #: "scalar" or "element" per static input
    statics: tuple[str, ...] = ()
    input_scale: float = 1.5
    input_shift: float = 0.5
    state_init: Callable[[torch.Size, torch.Generator], list[torch.Tensor]] | None = None
    #: static inputs that require grad
    static_grad: tuple[bool, ...] = field(default=())

    def make_inputs(self, T: int, shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        xs = [
            (torch.randn((T, *shape), generator=g) * self.input_scale + self.input_shift).to(dtype)
            for _ in range(self.num_inputs)
        ]
        if self.state_init is not None:
            inits = [s.to(dtype) for s in self.state_init(torch.Size(shape), g)]
        else:
            inits = [(torch.randn(shape, generator=g) * 0.3).to(dtype) for _ in range(self.num_states)]
        statics = []
        for kind in self.statics:
            if kind == "scalar":
                statics.append(torch.tensor(0.8 + 0.4 * torch.rand((), generator=g).item()).to(dtype))
            else:
                statics.append((torch.randn(shape, generator=g) * 0.5).to(dtype))
        return xs, inits, statics


def _izh_init(shape: torch.Size, g: torch.Generator) -> list[torch.Tensor]:
    v = -65.0 + 5.0 * torch.randn(shape, generator=g)
    return [v, 0.2 * v]


def _refractory_init(shape: torch.Size, g: torch.Generator) -> list[torch.Tensor]:
    return [
        0.3 * torch.randn(shape, generator=g),
        0.3 * torch.randn(shape, generator=g),
        torch.randint(0, 3, shape, generator=g).float(),
    ]


MODELS: dict[str, Model] = {
    m.name: m
    for m in (
        Model("lif_hard", lif_hard, 1, 1, 1),
        Model("lif_soft", lif_soft, 1, 1, 1),
        Model("alif", alif, 1, 2, 1),
        Model("izhikevich", izhikevich, 1, 2, 2, input_scale=4.0, input_shift=10.0, state_init=_izh_init),
        Model("two_inputs", two_inputs, 2, 1, 2),
        Model("plif", plif, 1, 1, 1, statics=("element",), static_grad=(True,)),
        Model("lif_threshold", lif_threshold, 1, 1, 1, statics=("scalar",), static_grad=(True,)),
        Model("synaptic_refractory", synaptic_refractory, 1, 3, 1, state_init=_refractory_init),
        Model("hard_spike", hard_spike, 1, 1, 1),
        Model("op_mix_a", op_mix_a, 1, 1, 1, input_scale=1.0, input_shift=0.0),
        Model("op_mix_b", op_mix_b, 1, 1, 1, input_scale=1.0, input_shift=0.3),
    )
}
