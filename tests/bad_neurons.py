"""Cores that break the contract, or lean on its edges, shared by the contract and client tests.

Module level, so their source can be captured into specs (and sent to a service).
"""

from __future__ import annotations

import torch

V_TH = 1.0
WEIGHTS = torch.linspace(0.5, 1.5, 5)  # a non-scalar tensor a core must not capture


def sorts(x, v):
    """Mixes neurons: an unsupported op (aten.sort)."""
    y = torch.sort(x)[0]
    return y, v


def branches(x, v):
    """Python control flow on a tensor value."""
    if v > 1.0:
        v = v - 1.0
    return x, v


def three_returns(x, v):
    return x, v, v


def returns_number(x, v):
    return 1.0, v


def takes_three(x, v, w):
    return x, v


def captures_weights(x, v):
    """Captures a tensor instead of taking it as a static input."""
    h = v + x * WEIGHTS
    return h, h


def float_spike(x, v):
    """The common idiom: a float32 spike from a comparison, in a core of any dtype."""
    h = 0.5 * v + x
    spike = (h >= V_TH).float()
    return spike, h - spike.to(h.dtype) * V_TH


def float_spike_state(x, v):
    """Also returns a state computed in float32 (cast back to the core's dtype on every backend)."""
    h = 0.5 * v.float() + x.float()
    spike = (h >= V_TH).float()
    return spike, h * (1.0 - spike)
