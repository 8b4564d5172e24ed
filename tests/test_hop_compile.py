"""flex_sn_scan and the HOP path under torch.compile(fullgraph=True), and the lowerable loop forms."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import surrogate_cores as sc
import torch

from flexsn_core import FlexSN, flex_sn_scan, hop_dynamo
from flexsn_core.hop import dynamo_hop_available, eager_scan, eager_scan_final_state
from flexsn_core.hop_lowerable import (
    lowerable_scan,
    lowerable_scan_final_state,
    lowerable_while_loop_scan,
    lowerable_while_loop_scan_final_state,
)

BIAS = torch.randn(8)


def smooth(x, v):  # noqa: ANN001, ANN201
    h = v + (x - v) / 2.0
    y = torch.tanh(h)
    return y, h - y


def smooth_closure(x, v):  # noqa: ANN001, ANN201
    return smooth(x + BIAS, v)  # a tensor the core closes over: lifted into the HOP's arguments


def with_static(x, v, w):  # noqa: ANN001, ANN201
    return smooth(x * w, v)


def two_outputs(x, v):  # noqa: ANN001, ANN201
    return x, x + 1, v + x


class Graphs:
    """A torch.compile backend that keeps Dynamo's graphs and runs them eagerly."""

    def __init__(self) -> None:
        self.graphs: list[torch.fx.GraphModule] = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: object) -> object:
        self.graphs.append(gm)
        return gm

    def targets(self) -> list[object]:
        return [n.target for gm in self.graphs for n in gm.graph.nodes if n.op == "call_function"]


def _same_forward_and_backward(fn, *args, backend="aot_eager", exact=True) -> None:  # noqa: ANN001
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(fn)(*args)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch._dynamo.reset()
    eager_args = [a.detach().clone().requires_grad_(a.requires_grad) for a in args]
    compiled_args = [a.detach().clone().requires_grad_(a.requires_grad) for a in args]
    expected = fn(*eager_args)
    got = torch.compile(fn, fullgraph=True, backend=backend)(*compiled_args)
    tol = {"atol": 0, "rtol": 0} if exact else {"atol": 1e-5, "rtol": 1e-5}
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, **tol)
    if any(a.requires_grad for a in args):
        sum(o.sum() for o in expected).backward()
        sum(o.sum() for o in got).backward()
        for a, b in zip(compiled_args, eager_args):
            if a.requires_grad:
                torch.testing.assert_close(a.grad, b.grad, **tol)


def test_registered_with_dynamo() -> None:
    from torch._dynamo.variables.higher_order_ops import TorchHigherOrderOperatorVariable

    assert dynamo_hop_available()
    assert TorchHigherOrderOperatorVariable.make(flex_sn_scan).value is flex_sn_scan


def test_import_does_not_load_dynamo_and_registers_when_dynamo_loads() -> None:
    script = textwrap.dedent(
        """
        import sys
        from flexsn_core import flex_sn_scan  # flexsn_core is lazy: importing the scan installs the hook
        from flexsn_core import hop_dynamo
        assert "torch._dynamo" not in sys.modules
        assert not hop_dynamo.registered()
        import torch._dynamo
        print(hop_dynamo.registered())
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "True"


@pytest.mark.parametrize("core", [smooth, smooth_closure, sc.lif_core_sg])
def test_direct_call_compiles_to_one_node(core) -> None:  # noqa: ANN001
    def scan(x, v):  # noqa: ANN001, ANN202
        return flex_sn_scan(core, 1, 1, 1, x, v)

    x = torch.randn(5, 8, requires_grad=True)
    v = torch.randn(8, requires_grad=True)
    _same_forward_and_backward(scan, x, v)
    graphs = Graphs()
    torch._dynamo.reset()
    torch.compile(scan, fullgraph=True, backend=graphs)(x, v)
    assert graphs.targets().count(flex_sn_scan) == 1


def test_direct_call_with_a_lifted_static_and_inductor() -> None:
    def scan(x, v, w):  # noqa: ANN001, ANN202
        return flex_sn_scan(with_static, 1, 1, 1, x, v, w)

    args = (torch.randn(4, 8, requires_grad=True), torch.randn(8), torch.randn(8, requires_grad=True))
    _same_forward_and_backward(scan, *args)
    _same_forward_and_backward(scan, *args, backend="inductor", exact=False)


def test_unrolled_fallback_when_the_body_cannot_be_one_node(monkeypatch) -> None:  # noqa: ANN001
    def drift(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise hop_dynamo._Drift("internals moved")

    monkeypatch.setattr(hop_dynamo, "_one_node", drift)

    def scan(x, v):  # noqa: ANN001, ANN202
        return flex_sn_scan(smooth_closure, 1, 1, 1, x, v)

    x, v = torch.randn(5, 8, requires_grad=True), torch.randn(8)
    _same_forward_and_backward(scan, x, v)
    graphs = Graphs()
    torch._dynamo.reset()
    torch.compile(scan, fullgraph=True, backend=graphs)(x, v)
    assert flex_sn_scan not in graphs.targets() and graphs.targets().count(torch.tanh) == 5  # unrolled


@pytest.mark.parametrize("one_node", [True, False])
def test_empty_sequence_templates_inside_a_compiled_graph(monkeypatch, one_node: bool) -> None:  # noqa: ANN001
    if not one_node:
        monkeypatch.setattr(hop_dynamo, "_one_node", lambda *a, **k: (_ for _ in ()).throw(hop_dynamo._Drift("")))

    def core(x, state):  # noqa: ANN001, ANN202
        return state + 1, state

    torch._dynamo.reset()
    out, seq = torch.compile(lambda x, s: flex_sn_scan(core, 1, 1, 1, x, s), fullgraph=True)(
        torch.empty(0, 2), torch.zeros(3)
    )
    assert out.shape == (0, 3) and seq.shape == (0, 3) and out.dtype == torch.float32  # the body's shape
    specs = (((5,), torch.float64),)
    torch._dynamo.reset()
    out, seq = torch.compile(
        lambda x, s: flex_sn_scan(core, 1, 1, 1, x, s, output_template_specs=specs), fullgraph=True
    )(torch.empty(0, 2), torch.zeros(3))
    assert out.shape == (0, 5) and out.dtype == torch.float64 and seq.shape == (0, 3)


def test_wrong_arity_under_compile_names_the_arity() -> None:
    def bad(x, v, extra):  # noqa: ANN001, ANN202
        return x, v

    def scan(x, v):  # noqa: ANN001, ANN202
        return flex_sn_scan(bad, 1, 1, 1, x, v)

    args = (torch.zeros(2, 3), torch.zeros(3))
    with pytest.raises(ValueError, match="expected 2 tensor args"):
        scan(*args)
    torch._dynamo.reset()
    with pytest.raises(ValueError, match="expected 2 tensor args"):  # a graph break: the call runs eagerly
        torch.compile(scan)(*args)
    torch._dynamo.reset()
    # fullgraph: Dynamo's error about the ValueError (torch 2.13 quotes the message, 2.11 names the type)
    with pytest.raises(Exception, match="expected 2 tensor args|ValueError"):
        torch.compile(scan, fullgraph=True)(*args)


def test_arity_is_checked_with_empty_sequences_too() -> None:
    def kwonly(x, v, *, bias):  # noqa: ANN001, ANN202
        return x, v

    specs = (((2,), torch.float32),)
    for scan in (eager_scan, eager_scan_final_state, lowerable_scan, lowerable_while_loop_scan):
        with pytest.raises(ValueError, match="expected 2 tensor args.*requires keyword-only"):
            scan(kwonly, 1, 1, 1, torch.empty(0, 2), torch.zeros(2), output_template_specs=specs)


# ------------------------------------------------------------------ FlexSN paths
def _lif(backend: str, store: bool) -> FlexSN:
    return FlexSN(sc.lif_core_sg, 1, 1, 1, backend=backend, store_state_seqs=store)


@pytest.mark.parametrize("store", [True, False])
@pytest.mark.parametrize("backend", ["hop", "triton"])
def test_flexsn_hop_path_compiles_without_graph_breaks(monkeypatch, backend: str, store: bool) -> None:  # noqa: ANN001
    monkeypatch.delenv("TRITON_INTERPRET")  # backend="triton" on CPU without the interpreter: the HOP fallback
    eager, compiled = _lif(backend, store), _lif(backend, store)
    x = torch.randn(6, 3, 8) + 0.5
    torch._dynamo.reset()
    assert torch._dynamo.explain(_lif(backend, store))(x).graph_break_count == 0
    torch._dynamo.reset()
    run = torch.compile(compiled, fullgraph=True, backend="aot_eager")
    xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    ye, yc = eager(xe), run(xc)
    torch.testing.assert_close(yc, ye, atol=0, rtol=0)
    torch.testing.assert_close(compiled.states[0], eager.states[0], atol=0, rtol=0)
    if store:
        torch.testing.assert_close(compiled.state_seqs[0], eager.state_seqs[0], atol=0, rtol=0)
    (ye.sum() + eager.states[0].sum()).backward()
    (yc.sum() + compiled.states[0].sum()).backward()
    torch.testing.assert_close(xc.grad, xe.grad, atol=0, rtol=0)


@pytest.mark.parametrize("lowering", ["while_loop", "scan"])
@pytest.mark.parametrize("store", [True, False])
def test_lowering_setting_puts_one_loop_node_in_compiled_inference(monkeypatch, lowering: str, store: bool) -> None:  # noqa: ANN001
    monkeypatch.setenv("FLEXSN_HOP_LOWERING", lowering)
    core = sc.lif_single_step_inference_closure(tau=4.0)
    eager = FlexSN(core, 1, 1, 1, backend="hop", store_state_seqs=store)
    compiled = FlexSN(core, 1, 1, 1, backend="hop", store_state_seqs=store)
    x = torch.randn(7, 2, 5) + 0.6
    graphs = Graphs()
    torch._dynamo.reset()
    with torch.no_grad():
        y = torch.compile(compiled, fullgraph=True, backend=graphs)(x)
        torch.testing.assert_close(y, eager(x), atol=0, rtol=0)
    torch.testing.assert_close(compiled.states[0], eager.states[0], atol=0, rtol=0)
    if store:
        torch.testing.assert_close(compiled.state_seqs[0], eager.state_seqs[0], atol=0, rtol=0)
    names = [getattr(t, "__name__", str(t)) for t in graphs.targets()]
    assert names.count(lowering) == 1, names
    # With gradients the loop is unrolled (the loop operators' autograd is not relied on).
    graphs = Graphs()
    torch._dynamo.reset()
    compiled.reset()
    torch.compile(compiled, fullgraph=True, backend=graphs)(x.requires_grad_())
    assert lowering not in [getattr(t, "__name__", str(t)) for t in graphs.targets()]


def test_lowering_setting_is_validated(monkeypatch) -> None:  # noqa: ANN001
    from flexsn_core.settings import hop_lowering

    monkeypatch.setenv("FLEXSN_HOP_LOWERING", "fast")
    with pytest.raises(ValueError, match="FLEXSN_HOP_LOWERING must be one of unroll, while_loop, scan"):
        hop_lowering()


# ------------------------------------------------------------ the lowerable forms
LOWERABLE = [
    (lowerable_scan, eager_scan),
    (lowerable_scan_final_state, eager_scan_final_state),
    (lowerable_while_loop_scan, eager_scan),
    (lowerable_while_loop_scan_final_state, eager_scan_final_state),
]


@pytest.mark.parametrize(("lowered", "reference"), LOWERABLE)
def test_lowerable_forms_match_the_eager_loop(lowered, reference) -> None:  # noqa: ANN001
    x, v, w = torch.randn(5, 2, 4), torch.randn(2, 4), torch.randn(4)
    with torch.no_grad():
        for args, counts in [((sc.lif_core_sg, x, v), (1, 1, 1)), ((with_static, x, v, w), (1, 1, 1)),
                             ((two_outputs, x, v), (1, 1, 2)), ((smooth_closure, torch.randn(5, 8), torch.randn(8)), (1, 1, 1))]:
            core, *tensors = args
            got = lowered(core, *counts, *tensors)
            expected = reference(core, *counts, *tensors)
            assert len(got) == len(expected)
            for a, b in zip(got, expected):
                torch.testing.assert_close(a, b, atol=0, rtol=0)
        # A core without states.
        got = lowered(lambda x: x * 2.0, 1, 0, 1, x)
        torch.testing.assert_close(got[0], x * 2.0)


@pytest.mark.parametrize(("lowered", "reference"), LOWERABLE)
def test_lowerable_forms_empty_sequence(lowered, reference) -> None:  # noqa: ANN001
    def never(x, v):  # noqa: ANN001, ANN202
        raise AssertionError("the core must not run for T == 0")

    v0 = torch.ones(3)
    got = lowered(never, 1, 1, 1, torch.empty(0, 2), v0, output_template_specs=(((4,), torch.float64),))
    expected = reference(never, 1, 1, 1, torch.empty(0, 2), v0, output_template_specs=(((4,), torch.float64),))
    assert got[0].shape == (0, 4) and got[0].dtype == torch.float64
    assert got[1].shape == expected[1].shape and got[1] is not v0


@pytest.mark.parametrize("lowered", [lowerable_scan, lowerable_while_loop_scan_final_state])
def test_lowerable_forms_compile_to_one_loop(lowered) -> None:  # noqa: ANN001
    def run(x, v):  # noqa: ANN001, ANN202
        with torch.no_grad():
            return lowered(sc.lif_core_sg, 1, 1, 1, x, v)

    x, v = torch.randn(6, 8), torch.zeros(8)
    torch._dynamo.reset()
    got = torch.compile(run, fullgraph=True)(x, v)  # Inductor (C++ on CPU)
    for a, b in zip(got, run(x, v)):
        torch.testing.assert_close(a, b)
