"""flexsn_core.surrogate: the catalogue, its formulas, and surrogates in kernel specs."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
import surrogate_cores as sc
import torch

from flexsn_core import CoreCaptureError, CoreSourceError, FlexSN, KernelSpec, surrogate
from flexsn_core.capture import capture_core, capture_source
from flexsn_service.builds.source_check import SourceRejected, check_source, check_source_text, default_allowlists

# Points on both sides of every formula's corners, zero (and minus zero), and far tails.
POINTS = torch.tensor(
    [-5.0, -1.3, -1.0, -0.71, -0.5, -0.3, -1e-7, -0.0, 0.0, 1e-7, 0.3, 0.5, 0.69, 1.0, 1.2, 2.0, 7.5]
)


@pytest.mark.parametrize("kind", sc.KINDS)
def test_forward_is_the_exact_heaviside_step(kind: str) -> None:
    fn = getattr(surrogate, kind)(**sc.FORMULAS[kind][0])
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        x = torch.cat([POINTS, torch.tensor([float("inf"), float("-inf")])]).to(dtype)
        y = fn(x)
        assert y.dtype == dtype
        assert torch.equal(y, (x >= 0).to(dtype))  # exactly 0 or 1: no straight-through sum that rounds


@pytest.mark.parametrize("kind", sc.KINDS)
def test_gradient_is_the_formula(kind: str) -> None:
    fn = getattr(surrogate, kind)(**sc.FORMULAS[kind][0])
    x = POINTS.clone().requires_grad_()
    upstream = torch.linspace(0.5, 2.0, len(POINTS))
    fn(x).backward(upstream)
    expected = sc.formula(kind, POINTS) * upstream.double()
    torch.testing.assert_close(x.grad.double(), expected, atol=1e-6, rtol=1e-6)


def test_parameters_defaults_and_errors() -> None:
    assert surrogate.Sigmoid().alpha == 4.0 and surrogate.ATan().alpha == 2.0
    assert surrogate.PiecewiseLeakyReLU(0.5).params == {"w": 0.5, "c": 0.01}
    assert surrogate.LeakyKReLU(k=2).params == {"leak": 0.0, "k": 2.0}
    assert surrogate.Sigmoid(4) == surrogate.Sigmoid(alpha=4.0) and hash(surrogate.Sigmoid(4)) == hash(surrogate.Sigmoid())
    assert surrogate.Sigmoid(4) != surrogate.ATan(4)
    assert repr(surrogate.S2NN()) == "S2NN(alpha=4.0, beta=1.0)"
    assert pickle.loads(pickle.dumps(surrogate.Erf(1.5))) == surrogate.Erf(1.5)
    with pytest.raises(TypeError, match="Sigmoid has no parameter 'beta'; its parameters are: alpha"):
        surrogate.Sigmoid(beta=1.0)
    with pytest.raises(TypeError, match="must be a number, got bool"):
        surrogate.ATan(True)
    with pytest.raises(ValueError, match="must be finite"):
        surrogate.ATan(float("nan"))
    with pytest.raises(ValueError, match="'w' must be > 0"):
        surrogate.PiecewiseLeakyReLU(w=0.0)
    with pytest.raises(ValueError, match="'alpha' must be > 1"):
        surrogate.QPseudoSpike(alpha=1.0)
    with pytest.raises(TypeError, match="at most 2 parameters"):
        surrogate.S2NN(1.0, 2.0, 3.0)


# ------------------------------------------------------------------ capture and spec
def test_captured_surrogates_are_data_in_the_spec_and_part_of_its_key() -> None:
    spec = KernelSpec.from_core(sc.lif_core_sg, 1, 1, 1)
    assert spec.to_dict()["surrogates"] == {"sg": {"form": "instance", "kind": "Sigmoid", "params": {"alpha": 4.0}}}
    assert "Sigmoid(" not in spec.source.split('"""')[-1] and "sg =" not in spec.source  # data, not code
    assert KernelSpec.from_dict(spec.to_dict()) == spec
    other = dataclasses.replace(spec, surrogates={"sg": {"form": "instance", "kind": "Sigmoid", "params": {"alpha": 5}}})
    assert other.key != spec.key
    same = dataclasses.replace(spec, surrogates={"sg": {"form": "instance", "kind": "Sigmoid", "params": {"alpha": 4}}})
    assert same.key == spec.key  # 4 and 4.0 are one parameter value
    # A spec without surrogates keeps the key it had before surrogates existed (no new field).
    assert "surrogates" not in dataclasses.replace(spec, surrogates=()).to_dict()


def test_closures_helpers_modules_and_classes_are_captured() -> None:
    closure = capture_core(sc.complicated_lif_core_generator(0.5, 0.9))
    assert closure.surrogates == {"spike_fn": {"form": "instance", "kind": "ATan", "params": {"alpha": 2.0}}}
    inline = capture_core(sc.helper_core)
    assert inline.surrogates == {
        "ATan": {"form": "class", "kind": "ATan"},
        "Erf": {"form": "class", "kind": "Erf"},
        "surrogate": {"form": "module"},
    }
    assert "def _charge" in inline.source and "V_RESET = 0.0" in inline.source
    with pytest.raises(CoreCaptureError, match="use capture_core"):
        capture_source(sc.lif_core_sg)


def test_load_core_rebuilds_the_surrogates_from_data() -> None:
    for core, counts in [(sc.lif_core_sg, (1, 1, 1)), (sc.helper_core, (1, 1, 1)),
                         (sc.complicated_lif_core_generator(0.5, 0.9), (2, 2, 2))]:
        spec = KernelSpec.from_core(core, *counts)
        rebuilt = spec.load_core()
        args = [torch.randn(7, requires_grad=True) for _ in range(counts[0] + counts[1])]
        ref_args = [a.detach().clone().requires_grad_() for a in args]
        out, ref = rebuilt(*args), core(*ref_args)
        for a, b in zip(out, ref):
            assert torch.equal(a, b)
        sum(o.sum() for o in out).backward()
        sum(o.sum() for o in ref).backward()
        for a, b in zip(args, ref_args):
            torch.testing.assert_close(a.grad, b.grad)


def test_spikingjelly_instances_map_to_the_catalogue() -> None:
    spec = KernelSpec.from_core(sc.sj_lif, 1, 1, 1)
    assert spec.to_dict()["surrogates"] == {
        "sj_sigmoid": {"form": "instance", "kind": "Sigmoid", "params": {"alpha": 4.0}}
    }
    closure = capture_core(sc.sj_generator())
    assert closure.surrogates == {"spike_fn": {"form": "instance", "kind": "ATan", "params": {"alpha": 3.0}}}
    assert surrogate.is_spikingjelly_surrogate(sc.sj_sigmoid)
    assert not surrogate.is_spikingjelly_surrogate(surrogate.Sigmoid())


def _capturing(value: object):  # noqa: ANN202
    def core(x, v):  # noqa: ANN001, ANN202
        return value(x), v

    return core


class MySpike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # noqa: ANN001, ANN205
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        return grad


class MySurrogate(surrogate.Sigmoid):
    pass


class Opaque:
    def __call__(self, x):  # noqa: ANN001, ANN204
        return x


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (MySpike, r"'value' is the torch.autograd.Function MySpike.*flexsn_core.surrogate"),
        (MySpike.apply, r"'value' is the torch.autograd.Function MySpike.*flexsn_core.surrogate"),
        (sc.SquarewaveFourierSeries(), r"spikingjelly.activation_based.surrogate.SquarewaveFourierSeries.*"
                                       r"flexsn_core.surrogate \(Sigmoid, ATan"),
        (sc.Sigmoid(spiking=False), "spiking=False"),
        (MySurrogate(), "MySurrogate, a surrogate class flexsn_core does not know"),
        (Opaque(), "'value', a Opaque.*use flexsn_core.surrogate"),
    ],
)
def test_unknown_surrogates_get_an_error_that_names_them(value: object, message: str) -> None:
    with pytest.raises(CoreCaptureError, match=message):
        KernelSpec.from_core(_capturing(value), 1, 1, 1)


def test_spikingjelly_instance_with_other_parameters_is_refused() -> None:
    odd = sc.Sigmoid()
    odd._sg_param_names = ("alpha", "beta")
    odd.beta = 1.0
    with pytest.raises(CoreCaptureError, match=r"parameters \['alpha', 'beta'\].*takes \['alpha'\]"):
        KernelSpec.from_core(_capturing(odd), 1, 1, 1)


def test_flexsn_construction_reports_the_capture_error() -> None:
    with pytest.raises(CoreCaptureError, match="MySpike"):
        FlexSN(_capturing(MySpike.apply), 1, 1, 1, backend="triton")


@pytest.mark.parametrize(
    ("surrogates", "message"),
    [
        ({"sg": {"form": "instance", "kind": "Nope", "params": {}}}, "unknown kind 'Nope'"),
        ({"sg": {"form": "instance", "kind": "Sigmoid", "params": {"beta": 1}}}, r"takes the parameters \['alpha'\]"),
        ({"sg": {"form": "instance", "kind": "Sigmoid", "params": {"alpha": "4"}}}, "must be a finite number"),
        ({"sg": {"form": "instance", "kind": "Sigmoid", "params": {"alpha": True}}}, "must be a finite number"),
        ({"sg": {"form": "instance", "kind": "Rect", "params": {"alpha": -1}}}, "must be > 0"),
        ({"sg": {"form": "instance", "kind": "Sigmoid"}}, "must have exactly the fields"),
        ({"sg": {"form": "class", "kind": "Sigmoid", "params": {}}}, "must have exactly the fields"),
        ({"sg": {"form": "pickle", "data": "..."}}, "form must be one of"),
        ({"__import__": {"form": "module"}}, "not allowed"),
        ({"lif_core_sg": {"form": "module"}}, "not allowed"),
        ({"not a name": {"form": "module"}}, "not a Python identifier"),
        ({"sg": "Sigmoid"}, "must be an object"),
        ({f"s{i}": {"form": "module"} for i in range(65)}, "at most 64"),
    ],
)
def test_spec_surrogate_data_is_validated(surrogates: dict, message: str) -> None:
    data = {**KernelSpec.from_core(sc.lif_core_sg, 1, 1, 1).to_dict(), "surrogates": surrogates}
    with pytest.raises(ValueError, match=message):
        KernelSpec.from_dict(data)


def test_source_defining_a_declared_name_is_refused() -> None:
    spec = KernelSpec.from_core(sc.lif_core_sg, 1, 1, 1)
    clash = dataclasses.replace(spec, source="sg = 1.0\n" + spec.source)
    with pytest.raises(CoreSourceError, match="defines 'sg', which the spec declares as a surrogate"):
        clash.load_core()
    with pytest.raises(SourceRejected, match="'sg' is a surrogate the spec declares"):
        check_source(clash)


def test_source_check_accepts_the_declared_names_and_nothing_more() -> None:
    for core, counts in [(sc.lif_core_sg, (1, 1, 1)), (sc.helper_core, (1, 1, 1)), (sc.every_surrogate, (15, 0, 15)),
                         (sc.complicated_lif_core_generator(0.5, 0.9), (2, 2, 2)), (sc.sj_lif, (1, 1, 1))]:
        check_source(KernelSpec.from_core(core, *counts))
    spec = KernelSpec.from_core(sc.lif_core_sg, 1, 1, 1)
    counts = {"num_inputs": 1, "num_states": 1, "num_static": 0}
    with pytest.raises(SourceRejected, match="'sg' is not defined"):
        check_source_text(spec.source, spec.entry, counts, default_allowlists())
    inline = KernelSpec.from_core(sc.helper_core, 1, 1, 1)
    for bad in ("surrogate.load", "surrogate._THIS_MODULE"):
        with pytest.raises(SourceRejected, match="not allowed"):
            check_source(dataclasses.replace(inline, source=inline.source.replace("surrogate.PiecewiseExp", bad)))
    with pytest.raises(SourceRejected, match="used as a value"):
        check_source(dataclasses.replace(inline, source=inline.source.replace("surrogate.PiecewiseExp", "surrogate")))
