"""Cores that exercise every op of the README's supported list, several ops per core.

Module level, so their source can be captured into specs. Inputs are near
N(0.3, 1) (see tests/test_op_coverage.py); each core keeps its state bounded.
Discontinuous ops (floor, round, sign, comparisons, ...) read an input or the
state directly, so the kernels and PyTorch see exactly the same values there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def arithmetic(x, v):
    a = torch.add(x, v, alpha=0.5) - torch.sub(v, x, alpha=2.0) + torch.rsub(x, 1.5) - (-v)
    b = x * v / (v * v + 1.0) + torch.remainder(x, 0.7) + torch.fmod(v, 0.6) + torch.reciprocal(x * x + 1.0)
    c = torch.addcmul(x, v, x, value=0.3) + torch.addcdiv(v, x, v * v + 1.0, value=0.2) + torch.lerp(x, v, 0.25)
    d = torch.pow(x * x + 1.0, 1.5) + torch.pow(2.0, 0.5 * x) + x ** 3 + torch.pow(v * v + 1.0, 0.1 * x)
    return 0.1 * (a + b + c + d), 0.5 * v + 0.1 * torch.tanh(a)


def transcendental(x, v):
    a = torch.exp(0.3 * x) + torch.exp2(0.2 * v) + torch.expm1(0.1 * x) + torch.log(x * x + 1.0)
    b = torch.log2(v * v + 1.0) + torch.log10(x * x + 2.0) + torch.log1p(v * v) + torch.sqrt(x * x + 0.5)
    c = torch.rsqrt(v * v + 0.5) + torch.sin(x) + torch.cos(v) + torch.atan(x) + torch.erf(v)
    d = torch.sigmoid(x) + torch.tanh(v) + torch.abs(x)
    return a + b + c + d, 0.5 * v + 0.1 * torch.sigmoid(a)


def rounding(x, v):
    a = torch.floor(x) + torch.ceil(v) + torch.round(x) + torch.trunc(v) + torch.frac(x)
    b = torch.sign(x) * v + torch.sgn(v) * x
    return a + b + x * v, 0.5 * v + 0.25 * torch.frac(x)


def activations(x, v):
    a = torch.relu(x) + F.leaky_relu(v, 0.1) + F.hardtanh(x, -0.5, 0.5) + F.threshold(v, 0.2, -1.0)
    b = torch.clamp(x, -1.0, 1.0) + torch.clamp_min(v, -0.3) + torch.clamp_max(x, 0.4)
    c = torch.minimum(x, v) + torch.maximum(x, 0.5 * v) + torch.fmin(x, v) + torch.fmax(x, 0.5 * v)
    d = torch.heaviside(x.detach(), v.detach()) + torch.clamp(x, min=v - 1.0, max=v + 1.0)
    return a + b + c + d, 0.5 * v + 0.1 * torch.tanh(a)


def selection(x, v):
    p, q = x > 0.2, v >= 0.1
    r = (x < v) | (x <= 0.1) | (v != x) ^ (x == 1.0)
    s = torch.logical_and(p, q) | torch.logical_or(p, ~q)
    t = torch.logical_xor(p, q) & torch.logical_not(r)
    u = torch.isnan(x) | torch.isinf(v) | torch.bitwise_and(p, q) ^ torch.bitwise_or(p, r)
    w = torch.bitwise_xor(p, t) | torch.bitwise_not(s)
    y = torch.where(s, x, v) + torch.where(t, 1.0, x) + torch.where(u, v, 2.0) + x.masked_fill(w, 0.5)
    return y + torch.ne(x, v).to(x.dtype), torch.where(q, 0.9 * v, 0.5 * v + 0.1 * x)


def factories(x, v):
    a = torch.zeros_like(x) + torch.ones_like(v) + torch.full_like(x, 0.5) + x.new_zeros(x.shape)
    b = x.new_ones(x.shape) + x.new_full(x.shape, 0.25) + torch.scalar_tensor(0.5, dtype=x.dtype)
    c = torch.zeros(x.shape, dtype=x.dtype) + torch.ones(x.shape, dtype=x.dtype) + torch.full(x.shape, 2.0, dtype=x.dtype)
    # Uninitialized buffers, never selected: only their shape and dtype matter.
    keep = torch.ones_like(x, dtype=torch.bool)
    d = torch.where(keep, x, torch.empty_like(x)) + torch.where(keep, v, x.new_empty(x.shape))
    e = torch.where(keep, x, torch.empty(x.shape, dtype=x.dtype))
    return a + b + c + d * e, 0.5 * v + 0.1 * x


def views(x, v):
    a = (x * 2.0).view(x.shape).unsqueeze(0).squeeze(0) + v.expand(v.shape)
    b = torch.clone(a).detach() + x.to(torch.float64).to(x.dtype) + a
    return a * b, 0.5 * v + 0.1 * b


def structural(x, v):
    """Ops newer torch versions never put into a graph: the test rewrites its clones, views, truncs,
    divisions and casts into them (see REWRITES in tests/test_op_coverage.py)."""
    a = torch.clone(x * 1.5)
    b = torch.clone(a + v)
    c = torch.clone(b * 0.5)
    d = torch.clone(c - x)
    e = torch.clone(d + 0.25)
    f = torch.clone(e * v)
    g = torch.clone(f + a)
    h = torch.clone(g - 0.5)
    i = torch.trunc(x * 2.5) + (h / (v * v + 1.0)).view(x.shape) + (x * 3.0).view(x.shape) + (v - x).view(v.shape)
    j = x.to(torch.float64).to(x.dtype) * v.to(torch.float64).to(v.dtype)
    return i + j, 0.5 * v + 0.1 * torch.tanh(h)
