"""Surrogate spike functions: a Heaviside step forward, a smooth derivative backward.

    from flexsn_core import surrogate

    sg = surrogate.Sigmoid(alpha=4.0)

    def lif(x, v):
        h = v + (x - v) / 2.0
        s = sg(h - 1.0)                 # forward: (h - 1 >= 0) as h's dtype; backward: sg's derivative
        return s, h * (1.0 - s)

Every function here computes ``(x >= 0).to(x.dtype)`` exactly in the forward
pass and ``grad * g'(x)`` in the backward pass, where ``g'`` is the surrogate's
derivative with its parameters. The formulas are SpikingJelly's
(``spikingjelly.activation_based.surrogate``), so a model moved over keeps its
gradients; ``Triangle`` is this package's own name for a triangular window.

| class | parameters | ``g'(x)`` |
| --- | --- | --- |
| :class:`Sigmoid` | ``alpha=4.0`` | ``alpha * s * (1 - s)``, ``s = sigmoid(alpha * x)`` |
| :class:`ATan` | ``alpha=2.0`` | ``(alpha / 2) / (1 + (pi / 2 * alpha * x) ** 2)`` |
| :class:`PiecewiseQuadratic` | ``alpha=1.0`` | ``alpha - alpha ** 2 * |x|`` for ``|x| <= 1 / alpha``, else 0 |
| :class:`PiecewiseLeakyReLU` | ``w=1.0, c=0.01`` | ``1 / (2 w)`` for ``|x| < w``, else ``c`` |
| :class:`SoftSign` | ``alpha=2.0`` | ``1 / (2 alpha (1 / alpha + |x|) ** 2)`` |
| :class:`Erf` | ``alpha=2.0`` | ``alpha / sqrt(pi) * exp(-(alpha x) ** 2)`` |
| :class:`PiecewiseExp` | ``alpha=1.0`` | ``alpha / 2 * exp(-alpha |x|)`` |
| :class:`LeakyKReLU` | ``leak=0.0, k=1.0`` | ``k`` for ``x >= 0``, else ``leak`` |
| :class:`Rect` | ``alpha=1.0`` | ``alpha`` for ``|x| < 0.5 / alpha``, else 0 (rectangular window) |
| :class:`Triangle` | ``alpha=1.0`` | ``alpha * max(0, 1 - alpha |x|)`` (triangular window) |
| :class:`SuperSpike` | ``alpha=1.0`` | ``alpha / (1 + |x|) ** 2`` |
| :class:`NonzeroSignLogAbs` | ``alpha=1.0`` | ``1 / (1 / alpha + |x|)`` |
| :class:`S2NN` | ``alpha=4.0, beta=1.0`` | ``alpha s (1 - s)`` for ``x < 0``, else ``beta / (x + 1)`` |
| :class:`QPseudoSpike` | ``alpha=2.0`` | ``(1 + 2 / (alpha - 1) |x|) ** -alpha`` |
| :class:`LogTailedReLU` | ``alpha=0.0`` | ``alpha`` for ``x <= 0``, 1 for ``0 < x <= 1``, ``1 / x`` for ``x > 1`` |

A core may capture an instance (closure variable or global), a class
(``ATan(alpha=2.0)(h)`` inline), or this module (``surrogate.ATan()(h)``). The
kernel spec records each as data -- the class name and its parameters, see
:func:`describe` -- never as code or a pickle, and :func:`rebuild` turns the data
back into objects where the spec's source runs (the build jail of the service).
A captured SpikingJelly surrogate instance is recognised by its class and
parameters (:func:`from_spikingjelly`) without importing SpikingJelly.

Only elementwise torch ops are used, so the functions trace through ``make_fx``
and AOTAutograd into ops the Triton lowering supports, and compile under
``torch.compile``.
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch

__all__ = [
    "SurrogateFunction",
    "heaviside",
    "Sigmoid",
    "ATan",
    "PiecewiseQuadratic",
    "PiecewiseLeakyReLU",
    "SoftSign",
    "Erf",
    "PiecewiseExp",
    "LeakyKReLU",
    "Rect",
    "Triangle",
    "SuperSpike",
    "NonzeroSignLogAbs",
    "S2NN",
    "QPseudoSpike",
    "LogTailedReLU",
    "CATALOGUE",
    "SPIKINGJELLY_MODULES",
    "describe",
    "rebuild",
    "from_spikingjelly",
    "is_spikingjelly_surrogate",
]

#: Where SpikingJelly keeps its surrogate modules (the second is its pre-0.0.0.0.13 name).
SPIKINGJELLY_MODULES = ("spikingjelly.activation_based.surrogate", "spikingjelly.clock_driven.surrogate")


def heaviside(x: torch.Tensor) -> torch.Tensor:
    """``1`` where ``x >= 0``, else ``0``, in ``x``'s dtype (exact; no straight-through sum that can round)."""
    return (x >= 0).to(x.dtype)


def _make_spike_function(name: str, derivative: Callable[..., torch.Tensor]) -> type[torch.autograd.Function]:
    """An autograd.Function: Heaviside forward, ``grad * derivative(x, *params)`` backward."""

    def forward(ctx: Any, x: torch.Tensor, *params: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.params = params
        return heaviside(x)

    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (x,) = ctx.saved_tensors
        return (grad * derivative(x, *ctx.params), *(None for _ in ctx.params))

    return type(name, (torch.autograd.Function,), {
        "forward": staticmethod(forward),
        "backward": staticmethod(backward),
        "__module__": __name__,
        "__qualname__": name,
    })


class SurrogateFunction:
    """Base of the catalogue: a spike function with named float parameters.

    Subclasses set ``defaults`` (parameter names and default values, in order)
    and define ``derivative(x, *params)``. Instances compare equal when their
    class and parameters are equal, and pickle as plain objects.
    """

    #: parameter name -> default value, in positional order
    defaults: ClassVar[dict[str, float]] = {}
    _function: ClassVar[type[torch.autograd.Function]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._function = _make_spike_function(f"{cls.__name__}Spike", cls.derivative)

    def __init__(self, *args: float, **kwargs: float) -> None:
        names = list(self.defaults)
        if len(args) > len(names):
            raise TypeError(f"{type(self).__name__} takes at most {len(names)} parameters ({', '.join(names)})")
        values = dict(self.defaults)
        for name, value in zip(names, args):
            values[name] = value
        for name, value in kwargs.items():
            if name not in values:
                raise TypeError(
                    f"{type(self).__name__} has no parameter {name!r}; its parameters are: {', '.join(names) or 'none'}"
                )
            if name in names[: len(args)]:
                raise TypeError(f"{type(self).__name__} got {name!r} twice")
            values[name] = value
        self._params = {name: _number(type(self).__name__, name, value) for name, value in values.items()}
        self.check(**self._params)

    @staticmethod
    def derivative(x: torch.Tensor, *params: float) -> torch.Tensor:
        raise NotImplementedError

    @classmethod
    def check(cls, **params: float) -> None:
        """Reject parameters the formula has no meaning for (raises ValueError)."""

    @property
    def params(self) -> dict[str, float]:
        return dict(self._params)

    def __getattr__(self, name: str) -> float:
        # sg.alpha, like SpikingJelly's surrogate modules
        params = self.__dict__.get("_params")
        if params is not None and name in params:
            return params[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._function.apply(x, *self._params.values())

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._params == self._params  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(self._params.items())))

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self._params.items())
        return f"{type(self).__name__}({inner})"


def _number(cls: str, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{cls} parameter {name!r} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{cls} parameter {name!r} must be finite, got {value}")
    return value


def _positive(cls: type, **params: float) -> None:
    for name, value in params.items():
        if value <= 0:
            raise ValueError(f"{cls.__name__} parameter {name!r} must be > 0, got {value}")


class Sigmoid(SurrogateFunction):
    """``g'(x) = alpha * sigmoid(alpha x) * (1 - sigmoid(alpha x))``."""

    defaults: ClassVar[dict[str, float]] = {"alpha": 4.0}

    @staticmethod
    def derivative(x: torch.Tensor, alpha: float) -> torch.Tensor:  # type: ignore[override]
        s = torch.sigmoid(x * alpha)
        return (1.0 - s) * s * alpha


class ATan(SurrogateFunction):
    """``g'(x) = (alpha / 2) / (1 + (pi / 2 * alpha * x) ** 2)``."""

    defaults: ClassVar[dict[str, float]] = {"alpha": 2.0}

    @staticmethod
    def derivative(x: torch.Tensor, alpha: float) -> torch.Tensor:  # type: ignore[override]
        a = alpha / 2
        ax = (math.pi * a) * x
        return a / (1 + ax * ax)


class PiecewiseQuadratic(SurrogateFunction):
    """``g'(x) = alpha - alpha ** 2 * |x|`` where ``|x| <= 1 / alpha``, else 0."""

    defaults: ClassVar[dict[str, float]] = {"alpha": 1.0}

    @classmethod
    def check(cls, **params: float) -> None:
        _positive(cls, **params)

    @staticmethod
    def derivative(x: torch.Tensor, alpha: float) -> torch.Tensor:  # type: ignore[override]
        x_abs = x.abs()
        return torch.where(x_abs > 1 / alpha, 0.0, x_abs * -(alpha**2) + alpha)


class PiecewiseLeakyReLU(SurrogateFunction):
    """``g'(x) = 1 / (2 w)`` where ``|x| < w``, else ``c``."""

    defaults: ClassVar[dict[str, float]] = {"w": 1.0, "c": 0.01}

    @classmethod
    def check(cls, **params: float) -> None:
        _positive(cls, w=params["w"])

    @staticmethod
    def derivative(x: torch.Tensor, w: float, c: float) -> torch.Tensor:  # type: ignore[override]
        return torch.where(x.abs() < w, 1 / (2 * w), c).to(x.dtype)


class SoftSign(SurrogateFunction):
    """``g'(x) = 1 / (2 alpha (1 / alpha + |x|) ** 2)``."""

    defaults: ClassVar[dict[str, float]] = {"alpha": 2.0}

    @classmethod
    def check(cls, **params: float) -> None:
        _positive(cls, **params)

    @staticmethod
    def derivative(x: torch.Tensor, alpha: float) -> torch.Tensor:  # type: ignore[override]
        d = x.abs() + 1 / alpha
        return 1 / (d * d * (2 * alpha))


class Erf(SurrogateFunction):
    """``g'(x) = alpha / sqrt(pi) * exp(-(alpha x) ** 2)``."""

    defaults: ClassVar[dict[str, float]] = {"alpha": 2.0}

    @staticmethod
    def derivative(x: torch.Tensor, alpha: float) -> torch.Tensor:  # type: ignore[override]
        ax = x * alpha
        return torch.exp(-(ax * ax)) * (alpha / math.sqrt(math.pi))


class PiecewiseExp(SurrogateFunction):
    """``g'(x) = alpha / 2 * exp(-alpha |x|)``."""

    defaults: ClassVar[dict[str, float]] = {"alpha": 1.0}

    @staticmethod
    def derivative(x: torch.Tensor, alpha: float) -> torch.Tensor:  # type: ignore[override]
        return torch.exp(x.abs() * -alpha) * (alpha / 2)


class LeakyKReLU(SurrogateFunction):
    """``g'(x) = k`` where ``x >= 0``, else ``leak``."""

    defaults: ClassVar[dict[str, float]] = {"leak": 0.0, "k": 1.0}

    @staticmethod
    def derivative(x: torch.Tensor, leak: float, k: float) -> torch.Tensor:  # type: ignore[override]
        return torch.where(x >= 0, k, leak).to(x.dtype)


class Rect(SurrogateFunction):
    """Rectangular window: ``g'(x) = alpha`` where ``|x| < 0.5 / alpha``, else 0."""

    defaults: ClassVar[dict[str, float]] = {"alpha": 1.0}

    @classmethod
    def check(cls, **params: float) -> None:
        _positive(cls, **params)

    @staticmethod
    def derivative(x: torch.Tensor, alpha: float) -> torch.Tensor:  # type: ignore[override]
        return torch.where(x.abs() < 0.5 / alpha, alpha, 0.0).to(x.dtype)


class Triangle(SurrogateFunction):
    """Triangular window: ``g'(x) = alpha * max(0, 1 - alpha |x|)`` (height ``alpha``, half-width ``1 / alpha``)."""

    defaults: ClassVar[dict[str, float]] = {"alpha": 1.0}

    @classmethod
    def check(cls, **params: float) -> None:
        _positive(cls, **params)

    @staticmethod
    def derivative(x: torch.Tensor, alpha: float) -> torch.Tensor:  # type: ignore[override]
        return torch.clamp_min(1 - x.abs() * alpha, 0.0) * alpha


class SuperSpike(SurrogateFunction):
    """``g'(x) = alpha / (1 + |x|) ** 2``."""

    defaults: ClassVar[dict[str, float]] = {"alpha": 1.0}

    @staticmethod
    def derivative(x: torch.Tensor, alpha: float) -> torch.Tensor:  # type: ignore[override]
        d = x.abs() + 1.0
        return alpha / (d * d)


class NonzeroSignLogAbs(SurrogateFunction):
    """``g'(x) = 1 / (1 / alpha + |x|)``."""

    defaults: ClassVar[dict[str, float]] = {"alpha": 1.0}

    @classmethod
    def check(cls, **params: float) -> None:
        _positive(cls, **params)

    @staticmethod
    def derivative(x: torch.Tensor, alpha: float) -> torch.Tensor:  # type: ignore[override]
        return 1 / (x.abs() + 1 / alpha)


class S2NN(SurrogateFunction):
    """``g'(x) = alpha s (1 - s)`` (``s = sigmoid(alpha x)``) where ``x < 0``, else ``beta / (x + 1)``."""

    defaults: ClassVar[dict[str, float]] = {"alpha": 4.0, "beta": 1.0}

    @staticmethod
    def derivative(x: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:  # type: ignore[override]
        s = torch.sigmoid(x * alpha)
        return torch.where(x < 0.0, (1.0 - s) * s * alpha, beta / (x + 1.0))


class QPseudoSpike(SurrogateFunction):
    """``g'(x) = (1 + 2 / (alpha - 1) |x|) ** -alpha``."""

    defaults: ClassVar[dict[str, float]] = {"alpha": 2.0}

    @classmethod
    def check(cls, **params: float) -> None:
        if params["alpha"] <= 1:
            raise ValueError(f"{cls.__name__} parameter 'alpha' must be > 1, got {params['alpha']}")

    @staticmethod
    def derivative(x: torch.Tensor, alpha: float) -> torch.Tensor:  # type: ignore[override]
        return torch.pow(x.abs() * (2 / (alpha - 1)) + 1, -alpha)


class LogTailedReLU(SurrogateFunction):
    """``g'(x) = alpha`` where ``x <= 0``, 1 where ``0 < x <= 1``, ``1 / x`` where ``x > 1``."""

    defaults: ClassVar[dict[str, float]] = {"alpha": 0.0}

    @staticmethod
    def derivative(x: torch.Tensor, alpha: float) -> torch.Tensor:  # type: ignore[override]
        inner = torch.where(x <= 0.0, alpha, 1.0).to(x.dtype)
        return torch.where(x > 1.0, 1.0 / x, inner)


#: Every surrogate a spec may name, by class name.
CATALOGUE: dict[str, type[SurrogateFunction]] = {
    cls.__name__: cls
    for cls in (
        Sigmoid, ATan, PiecewiseQuadratic, PiecewiseLeakyReLU, SoftSign, Erf, PiecewiseExp, LeakyKReLU, Rect,
        Triangle, SuperSpike, NonzeroSignLogAbs, S2NN, QPseudoSpike, LogTailedReLU,
    )
}

_HINT = (
    "use a surrogate from flexsn_core.surrogate (" + ", ".join(CATALOGUE) + "), e.g. "
    "`sg = flexsn_core.surrogate.Sigmoid(alpha=4.0)` and `spike = sg(h - v_th)`"
)


# ------------------------------------------------------------------ spec data
def describe(value: object, name: str) -> dict[str, Any] | None:
    """The spec data for a captured surrogate (instance, class or module), or None if it is none.

    ``{"form": "instance", "kind": "Sigmoid", "params": {"alpha": 4.0}}``,
    ``{"form": "class", "kind": "ATan"}`` or ``{"form": "module"}``. SpikingJelly
    surrogates map to the same data. Raises :class:`~flexsn_core.errors.CoreCaptureError`
    for a surrogate this package cannot rebuild (an unknown class, a user
    ``torch.autograd.Function``, a SpikingJelly instance with ``spiking=False``).
    """
    from .errors import CoreCaptureError

    if isinstance(value, SurrogateFunction):
        kind = type(value).__name__
        if CATALOGUE.get(kind) is not type(value):
            raise CoreCaptureError(
                f"{name!r} is a {kind}, a surrogate class flexsn_core does not know; a kernel spec can only "
                f"name the catalogue's classes: {_HINT}"
            )
        return {"form": "instance", "kind": kind, "params": value.params}
    if isinstance(value, type) and issubclass(value, SurrogateFunction):
        if CATALOGUE.get(value.__name__) is not value:
            raise CoreCaptureError(
                f"{name!r} is the surrogate class {value.__name__}, which flexsn_core does not know: {_HINT}"
            )
        return {"form": "class", "kind": value.__name__}
    if isinstance(value, types.ModuleType):
        if value.__name__ == __name__ or value.__name__ in SPIKINGJELLY_MODULES:
            return {"form": "module"}
        return None
    if is_spikingjelly_surrogate(value):
        return {"form": "instance", **from_spikingjelly(value, name)}
    if isinstance(value, type) and _spikingjelly_class(value):
        if value.__module__ in SPIKINGJELLY_MODULES and value.__name__ in CATALOGUE:
            return {"form": "class", "kind": value.__name__}
        raise CoreCaptureError(
            f"{name!r} is the SpikingJelly surrogate class {value.__name__}, which has no flexsn_core "
            f"counterpart: {_HINT}"
        )
    function_class = _autograd_function_class(value)
    if function_class is not None:
        raise CoreCaptureError(
            f"{name!r} is the torch.autograd.Function {function_class.__name__}; a kernel spec cannot hold "
            f"custom autograd code. For a surrogate gradient {_HINT}"
        )
    return None


def _spikingjelly_class(cls: type) -> bool:
    return any(
        base.__module__ in SPIKINGJELLY_MODULES and base.__name__ == "SurrogateFunctionBase" for base in cls.__mro__
    )


def is_spikingjelly_surrogate(value: object) -> bool:
    """A SpikingJelly surrogate module instance (by its class hierarchy; SpikingJelly is not imported)."""
    return not isinstance(value, type) and _spikingjelly_class(type(value))


def from_spikingjelly(value: object, name: str = "surrogate") -> dict[str, Any]:
    """``{"kind", "params"}`` of a SpikingJelly surrogate instance, checked against the catalogue."""
    from .errors import CoreCaptureError

    cls = type(value)
    kind = cls.__name__
    ours = CATALOGUE.get(kind) if cls.__module__ in SPIKINGJELLY_MODULES else None
    if ours is None:
        raise CoreCaptureError(
            f"{name!r} is a {cls.__module__}.{kind}, a surrogate flexsn_core cannot rebuild in a kernel spec: "
            f"{_HINT}"
        )
    if not getattr(value, "spiking", True):
        raise CoreCaptureError(
            f"{name!r} is a SpikingJelly {kind} with spiking=False (its forward is the smooth primitive "
            "function, not a spike); kernels need spiking=True, or write the primitive function in the core"
        )
    declared = getattr(value, "_sg_param_names", None)
    if declared is not None and set(declared) != set(ours.defaults):
        raise CoreCaptureError(
            f"{name!r} is a SpikingJelly {kind} with parameters {sorted(declared)}, but flexsn_core's {kind} "
            f"takes {sorted(ours.defaults)}; {_HINT}"
        )
    params: dict[str, float] = {}
    for param in ours.defaults:
        if not hasattr(value, param):
            raise CoreCaptureError(f"{name!r} is a SpikingJelly {kind} without its parameter {param!r}")
        try:
            params[param] = _number(kind, param, getattr(value, param))
        except (TypeError, ValueError) as exc:
            raise CoreCaptureError(f"{name!r}: {exc} (SpikingJelly {kind})") from None
    try:
        ours.check(**params)
    except ValueError as exc:
        raise CoreCaptureError(f"{name!r}: {exc} (SpikingJelly {kind})") from None
    return {"kind": kind, "params": params}


def _autograd_function_class(value: object) -> type | None:
    """The autograd.Function class of ``value`` (the class itself or its bound ``apply``), if any."""
    target = getattr(value, "__self__", value)  # MyFn.apply is a method bound to the class
    if isinstance(target, type) and issubclass(target, torch.autograd.Function):
        return target
    return None


def rebuild(entry: Mapping[str, Any]) -> object:
    """The object one spec entry (see :func:`describe`) stands for."""
    form = entry["form"]
    if form == "module":
        return _THIS_MODULE
    cls = CATALOGUE[entry["kind"]]
    if form == "class":
        return cls
    return cls(**entry["params"])


_THIS_MODULE = __import__("sys").modules[__name__]
