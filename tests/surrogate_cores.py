"""Cores that use surrogate spike functions, and the surrogates' formulas as references.

``FORMULAS`` writes each surrogate's derivative out in float64 from the
published definitions (the table in :mod:`flexsn_core.surrogate`), independently
of the implementation; tests compare every backend's gradient with them.
``FakeSJ*`` imitate SpikingJelly's surrogate modules just enough to be
recognised (their module name and a ``SurrogateFunctionBase`` base class), so
the recognition is tested without installing SpikingJelly.
"""

from __future__ import annotations

import math

import torch

from flexsn_core import surrogate
from flexsn_core.surrogate import ATan, Erf


def _sig(x: torch.Tensor, a: float) -> torch.Tensor:
    return 1 / (1 + torch.exp(-a * x))


#: kind -> (params, derivative in float64)
FORMULAS = {
    "Sigmoid": ({"alpha": 3.0}, lambda x, alpha: alpha * _sig(x, alpha) * (1 - _sig(x, alpha))),
    "ATan": ({"alpha": 1.5}, lambda x, alpha: alpha / 2 / (1 + (math.pi / 2 * alpha * x) ** 2)),
    "PiecewiseQuadratic": ({"alpha": 0.8}, lambda x, alpha: torch.where(x.abs() <= 1 / alpha, alpha - alpha**2 * x.abs(), 0.0)),
    "PiecewiseLeakyReLU": ({"w": 0.7, "c": 0.05}, lambda x, w, c: torch.where(x.abs() < w, 1 / (2 * w), c)),
    "SoftSign": ({"alpha": 2.5}, lambda x, alpha: 1 / (2 * alpha * (1 / alpha + x.abs()) ** 2)),
    "Erf": ({"alpha": 1.7}, lambda x, alpha: alpha / math.sqrt(math.pi) * torch.exp(-((alpha * x) ** 2))),
    "PiecewiseExp": ({"alpha": 1.3}, lambda x, alpha: alpha / 2 * torch.exp(-alpha * x.abs())),
    "LeakyKReLU": ({"leak": 0.1, "k": 0.9}, lambda x, leak, k: torch.where(x >= 0, k, leak)),
    "Rect": ({"alpha": 0.9}, lambda x, alpha: torch.where(x.abs() < 0.5 / alpha, alpha, 0.0)),
    "Triangle": ({"alpha": 1.2}, lambda x, alpha: alpha * torch.clamp(1 - alpha * x.abs(), min=0)),
    "SuperSpike": ({"alpha": 0.6}, lambda x, alpha: alpha / (1 + x.abs()) ** 2),
    "NonzeroSignLogAbs": ({"alpha": 1.4}, lambda x, alpha: 1 / (1 / alpha + x.abs())),
    "S2NN": ({"alpha": 3.5, "beta": 0.7},
             lambda x, alpha, beta: torch.where(x < 0, alpha * _sig(x, alpha) * (1 - _sig(x, alpha)), beta / (x + 1))),
    "QPseudoSpike": ({"alpha": 2.5}, lambda x, alpha: (1 + 2 / (alpha - 1) * x.abs()) ** -alpha),
    "LogTailedReLU": ({"alpha": 0.2},
                      lambda x, alpha: torch.where(x > 1, 1 / x, torch.where(x <= 0, alpha, 1.0))),
}

KINDS = list(FORMULAS)


def formula(kind: str, x: torch.Tensor) -> torch.Tensor:
    """The derivative of ``kind`` (with FORMULAS' parameters) at ``x``, computed in float64."""
    params, f = FORMULAS[kind]
    return f(x.double(), **params).to(torch.float64)


# One instance per kind, with FORMULAS' parameters, each a global a core can capture.
s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12, s13, s14 = (
    getattr(surrogate, kind)(**FORMULAS[kind][0]) for kind in KINDS
)


def every_surrogate(x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14):  # noqa: ANN001, ANN201
    """Input i goes through surrogate i (KINDS order): 15 inputs, 15 outputs, no state."""
    return (
        s0(x0), s1(x1), s2(x2), s3(x3), s4(x4), s5(x5), s6(x6), s7(x7), s8(x8), s9(x9), s10(x10), s11(x11),
        s12(x12), s13(x13), s14(x14),
    )


# ------------------------------------------------------- SpikingJelly-style cores
sg = surrogate.Sigmoid(alpha=4.0)


def lif_core_sg(x: torch.Tensor, v: torch.Tensor):  # noqa: ANN201
    """The tutorial's minimal training example: a Sigmoid(alpha=4.0) captured as a global."""
    tau, v_th = 2.0, 1.0
    h = v + (x - v) / tau
    s = sg(h - v_th)
    return s, h * (1.0 - s)


def complicated_lif_core_generator(beta: float, gamma: float, spike_fn=surrogate.ATan()):  # noqa: ANN001, ANN201
    """The tutorial's complicated LIF: two inputs, two outputs, two states, ATan captured in a closure."""

    def complicated_lif_core(x: torch.Tensor, y: torch.Tensor, v: torch.Tensor, rho: torch.Tensor):  # noqa: ANN202
        h = beta * v + x
        s1 = spike_fn(h - (rho + 1.0))
        s2 = spike_fn(h - 1.0)
        rho = gamma * rho + s1
        v1 = h * (1.0 - s1)
        v2 = h - s2
        yy = torch.sigmoid(y)
        v = v1 * yy + v2 * (1.0 - yy)
        return s1, s2, v, rho

    return complicated_lif_core


def lif_single_step_inference_closure(tau=2.0, v_th=1.0, spike_fn=surrogate.Sigmoid()):  # noqa: ANN001, ANN201
    """The tutorial's closure-generated core: hyperparameters and the surrogate are closure variables."""

    def lif_single_step_inference(x, v):  # noqa: ANN001, ANN202
        h = (1 - 1 / tau) * v + x
        s = spike_fn(h - v_th)
        v = h - s * v_th
        return s, v

    return lif_single_step_inference


V_RESET = 0.0


def _charge(v, x, tau):  # noqa: ANN001, ANN202
    return v + (x - (v - V_RESET)) / tau


def helper_core(x, v):  # noqa: ANN001, ANN201
    """A helper function, a constant and two surrogates used inline (the module and a class)."""
    h = _charge(v, x, 2.0)
    s = surrogate.PiecewiseExp(alpha=2.0)(h - 1.0)
    t = ATan(alpha=3.0)(h - 0.5) * Erf(2.0)(h - 0.2)
    return s + 0.0 * t, h * (1.0 - s) + V_RESET * s


# --------------------------------------------------------- SpikingJelly imitations
SJ_MODULE = "spikingjelly.activation_based.surrogate"


class SurrogateFunctionBase(torch.nn.Module):
    """Stands in for SpikingJelly's base class (recognised by module and class name)."""

    def __init__(self, spiking: bool = True, **params: float) -> None:
        super().__init__()
        self.spiking = spiking
        self._sg_param_names = tuple(params)
        for name, value in params.items():
            setattr(self, name, value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # What SpikingJelly computes, by the formulas flexsn_core shares with it.
        ours = getattr(surrogate, type(self).__name__)
        return ours(**{n: getattr(self, n) for n in self._sg_param_names})(x)


class Sigmoid(SurrogateFunctionBase):
    def __init__(self, alpha: float = 4.0, spiking: bool = True) -> None:
        super().__init__(spiking=spiking, alpha=alpha)


class ATanSJ(SurrogateFunctionBase):
    def __init__(self, alpha: float = 2.0, spiking: bool = True) -> None:
        super().__init__(spiking=spiking, alpha=alpha)


class SquarewaveFourierSeries(SurrogateFunctionBase):
    """A SpikingJelly surrogate with no flexsn_core counterpart."""

    def __init__(self, n: int = 2, T_period: float = 8) -> None:
        super().__init__(n=n, T_period=T_period)


ATanSJ.__name__ = ATanSJ.__qualname__ = "ATan"
for _cls in (SurrogateFunctionBase, Sigmoid, ATanSJ, SquarewaveFourierSeries):
    _cls.__module__ = SJ_MODULE

sj_sigmoid = Sigmoid(alpha=4.0)


def sj_lif(x: torch.Tensor, v: torch.Tensor):  # noqa: ANN201
    """The tutorial's training core as a SpikingJelly user writes it (a SpikingJelly Sigmoid captured)."""
    tau, v_th = 2.0, 1.0
    h = v + (x - v) / tau
    s = sj_sigmoid(h - v_th)
    return s, h * (1.0 - s)


def sj_generator(spike_fn=ATanSJ(alpha=3.0)):  # noqa: ANN001, ANN201
    def sj_closure_core(x, v):  # noqa: ANN001, ANN202
        h = 0.5 * v + x
        s = spike_fn(h - 1.0)
        return s, h - s

    return sj_closure_core
