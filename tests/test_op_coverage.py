"""Every op of the README's supported list, numerically, through the kernels (issue #11).

``COVERAGE`` is the table: for each op of the list, the core of
``tests/op_cores.py`` whose traced graphs contain it. Each core runs all four
kernel kinds in Triton's interpreter (fp32 and bf16) against a PyTorch autograd
loop: outputs, final states, state sequences, and the gradients of inputs and
initial states (ops that are not differentiable are in the forward and pass no
gradient, or are detached).

Fifteen ops of the list are never put into a graph by this torch's make_fx and
AOTAutograd (they come from other torch versions, or from IR the service reads):
``alias``, ``copy``, ``reshape``, ``to`` and so on. The ``structural`` core is
traced normally and its graphs are then rewritten op for op into those
equivalents (``REWRITES``: a clone becomes an alias, a view a reshape, a trunc a
fix, ...), checked to compute the same in eager PyTorch, sent through the IR
(validated as service input is) and generated: so their lowerings are tested
like any other op against the original core.
"""

from __future__ import annotations

import functools

import op_cores
import pytest
import torch
import torch.fx as fx
from reference import assert_close, run_reference
from test_docs import readme_ops
from torch.ops import aten

from flexsn_core import KernelSpec
from flexsn_core.artifacts import build_artifacts
from flexsn_core.codegen.lower import op_name
from flexsn_core.ir import dumps_ir, generate_from_ir, traced_to_ir
from flexsn_core.runtime import KernelSet, run_backward, run_forward, run_inference, run_inference_final
from flexsn_core.trace import TRACE_NUMEL, TracedCore, trace_core

#: op (as in the README list) -> the core of tests/op_cores.py whose graphs contain it
COVERAGE: dict[str, str] = {
    **dict.fromkeys(
        ["add", "sub", "rsub", "mul", "div", "neg", "remainder", "fmod", "reciprocal", "addcmul", "addcdiv",
         "lerp", "pow", "fill", "empty_like", "log", "eq", "logical_and", "tanh_backward"],
        "arithmetic",
    ),
    **dict.fromkeys(
        ["exp", "exp2", "expm1", "log2", "log10", "log1p", "sqrt", "rsqrt", "sin", "cos", "atan", "erf",
         "sigmoid", "sigmoid_backward", "tanh", "abs", "sgn"],
        "transcendental",
    ),
    **dict.fromkeys(["floor", "ceil", "round", "trunc", "frac", "sign", "zeros_like", "_to_copy"], "rounding"),
    **dict.fromkeys(
        ["relu", "threshold", "threshold_backward", "leaky_relu", "leaky_relu_backward", "hardtanh",
         "hardtanh_backward", "clamp", "clamp_min", "clamp_max", "minimum", "maximum", "fmin", "fmax",
         "heaviside", "masked_fill", "logical_not", "detach"],
        "activations",
    ),
    **dict.fromkeys(
        ["ne", "lt", "le", "gt", "ge", "logical_or", "logical_xor", "bitwise_and", "bitwise_or", "bitwise_xor",
         "bitwise_not", "isnan", "isinf", "where", "scalar_tensor"],
        "selection",
    ),
    **dict.fromkeys(
        ["zeros", "ones", "ones_like", "full", "full_like", "new_zeros", "new_ones", "new_full", "new_empty",
         "empty"],
        "factories",
    ),
    **dict.fromkeys(["view", "squeeze", "unsqueeze", "expand", "clone"], "views"),
    **dict.fromkeys(
        ["alias", "lift_fresh_copy", "contiguous", "positive", "resolve_conj", "resolve_neg", "conj_physical",
         "copy", "reshape", "_unsafe_view", "flatten", "fix", "true_divide", "to", "type_as"],
        "structural",
    ),
}

CORES = sorted(set(COVERAGE.values()))

#: the structural core's clones, in graph order, become these identity ops
CLONE_INTO = (aten.alias.default, aten.lift_fresh_copy.default, aten.contiguous.default, aten.positive.default,
              aten.resolve_conj.default, aten.resolve_neg.default, aten.conj_physical.default, aten.copy.default)
#: and its views these, in turn (every traced tensor is 1-D: flattening is the same view)
VIEW_INTO = (aten.reshape.default, aten._unsafe_view.default, aten.flatten.using_ints)
REWRITES = {
    "clone": CLONE_INTO, "view": VIEW_INTO, "trunc": (aten.fix.default,), "div.Tensor": (aten.true_divide.Tensor,),
    "_to_copy": (aten.to.dtype, aten.type_as.default),
}

T, SHAPE = 3, (3, 13)


def _ops(traced: TracedCore) -> set[str]:
    names = set()
    for gm in (traced.inference, traced.forward, traced.backward):
        if gm is not None:
            names |= {op_name(n.target).split(".")[1] for n in gm.graph.nodes if n.op == "call_function"}
    return names


def _rewrite(graph: fx.Graph) -> None:
    """Rewrite the structural core's graph into the ops newer torch never emits (same values)."""
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    output = next(n for n in graph.nodes if n.op == "output")
    returned = set(output.args[0])
    clones = views = 0
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        if node.target is aten.clone.default and node not in returned and clones < len(CLONE_INTO):
            node.target = CLONE_INTO[clones]
            if node.target is aten.copy.default:
                node.args = (node.args[0], node.args[0])  # copy(self, src) is src, in self's dtype
            clones += 1
        elif node.target is aten.view.default:
            node.target = VIEW_INTO[views % len(VIEW_INTO)]
            if node.target is aten.flatten.using_ints:
                node.args = (node.args[0],)
            views += 1
        elif node.target is aten.trunc.default:
            node.target = aten.fix.default
        elif node.target is aten.div.Tensor:
            node.target = aten.true_divide.Tensor
        elif node.target is aten._to_copy.default:
            source, dtype = node.args[0], node.kwargs["dtype"]
            like = next((p for p in placeholders if p.meta["val"].dtype == dtype and p is not source), None)
            if like is not None and source.meta["val"].dtype != dtype:
                node.target, node.args, node.kwargs = aten.type_as.default, (source, like), {}
            else:
                node.target, node.args, node.kwargs = aten.to.dtype, (source, dtype), {}
    graph.lint()


@functools.lru_cache(maxsize=None)
def _traced(name: str, dtype: torch.dtype) -> TracedCore:
    spec = KernelSpec.from_core(getattr(op_cores, name), 1, 1, 1, dtype=dtype)
    traced = trace_core(spec)
    if name == "structural":
        for gm in (traced.inference, traced.forward, traced.backward):
            _rewrite(gm.graph)
            gm.recompile()
    return traced


@functools.lru_cache(maxsize=None)
def _kernel_set(name: str, dtype: torch.dtype) -> KernelSet:
    traced = _traced(name, dtype)
    # Through the IR, validated like a build jail's output, then generated: what a service build does.
    gen = generate_from_ir(traced.spec, dumps_ir(traced_to_ir(traced)))
    return KernelSet(build_artifacts(traced.spec, targets=(), generated=gen).manifest, generated=gen)


def test_the_table_covers_the_readme_op_list() -> None:
    documented = readme_ops()
    assert set(COVERAGE) == documented, (
        f"ops of the README list without a numeric test: {sorted(documented - set(COVERAGE))}; "
        f"in the table but not in the list: {sorted(set(COVERAGE) - documented)}"
    )


@pytest.mark.parametrize("name", CORES)
def test_each_core_puts_its_ops_into_the_graphs(name: str) -> None:
    """The table is true: the ops it assigns to a core are in that core's (rewritten) graphs."""
    have = _ops(_traced(name, torch.float32))
    missing = sorted(op for op, core in COVERAGE.items() if core == name and op not in have)
    assert not missing, f"{name}'s graphs have no {missing}"


def test_the_rewritten_structural_graph_computes_what_the_core_computes() -> None:
    traced = _traced("structural", torch.float32)
    x, v = torch.randn(TRACE_NUMEL) + 0.3, torch.randn(TRACE_NUMEL) * 0.3  # the graphs have the traced shape
    expected = op_cores.structural(x, v)
    got = traced.inference(x, v)
    for a, e in zip(got, expected):
        torch.testing.assert_close(a, e)


def _inputs(dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn((T, *SHAPE), generator=g) + 0.3).to(dtype)
    v = (torch.randn(SHAPE, generator=g) * 0.3).to(dtype)
    return x, v


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", CORES)
def test_kernels_match_pytorch(name: str, dtype: torch.dtype) -> None:
    ks = _kernel_set(name, dtype)
    core = getattr(op_cores, name)
    x, v = _inputs(dtype)
    g = torch.Generator().manual_seed(99)
    g_out = torch.randn((T, *SHAPE), generator=g).to(dtype)
    g_fin = torch.randn(SHAPE, generator=g).to(dtype)
    ref = run_reference(core, 1, [x], [v], [], grads=([g_out], [None], [g_fin]))
    xs, inits = [x.reshape(T, -1).contiguous()], [v.reshape(-1)]

    outs, finals = run_inference_final(ks, xs, inits)
    assert_close(outs[0].reshape(T, *SHAPE), ref["outs"][0], dtype, f"{name}: inference output")
    assert_close(finals[0].reshape(SHAPE), ref["finals"][0], dtype, f"{name}: final state")
    outs, sseqs = run_inference(ks, xs, inits)
    assert_close(sseqs[0].reshape(T, *SHAPE), ref["sseqs"][0], dtype, f"{name}: state sequence")

    outs, sseqs, finals, extras = run_forward(ks, xs, inits, store_state_seqs=False)
    assert_close(outs[0].reshape(T, *SHAPE), ref["outs"][0], dtype, f"{name}: training output")
    assert_close(finals[0].reshape(SHAPE), ref["finals"][0], dtype, f"{name}: training final state")
    g_in, g_init, _ = run_backward(
        ks, xs, inits, [], outs, sseqs, extras, [g_out.reshape(T, -1).contiguous()], [None], [g_fin.reshape(-1)]
    )
    scale = 4.0 if dtype != torch.float32 else 1.0  # gradients flow back through T steps of rounding
    assert_close(g_in[0].reshape(T, *SHAPE), ref["grad_inputs"][0], dtype, f"{name}: grad of the input", scale)
    assert_close(g_init[0].reshape(SHAPE), ref["grad_inits"][0], dtype, f"{name}: grad of the initial state", scale)
