"""The JSON IR of traced graphs: exact round trip, strict validation, no way to inject code.

The IR is the build jail's only output; the server generates kernels from it.
These tests treat every IR as hostile: whatever it holds, ``ir_to_traced`` /
``generate_from_ir`` either give kernels whose source is plain generated code,
or raise ``IRError`` naming the problem.
"""

from __future__ import annotations

import ast
import copy
import functools
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from neurons import MODELS, Model

import flexsn_core.artifacts as artifacts
from flexsn_core import ArtifactError, FlexSNError, KernelSpec, UnsupportedOpError
from flexsn_core.codegen.kernels import generate_kernels
from flexsn_core.errors import IRError
from flexsn_core.ir import (
    DEFAULT_LIMITS,
    IR_VERSION,
    IRLimits,
    RebuiltGraph,
    dumps_ir,
    generate_from_ir,
    ir_to_traced,
    trace_to_ir,
    traced_to_ir,
)
from flexsn_core.trace import TracedCore, trace_core

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
DTYPES = ("float32", "float16", "bfloat16")


def _spec(model: Model, dtype: str) -> KernelSpec:
    requires_grad = (True,) * (model.num_inputs + model.num_states) + (
        model.static_grad or (False,) * len(model.statics)
    )
    return KernelSpec.from_core(
        model.core,
        model.num_inputs,
        model.num_states,
        model.num_outputs,
        num_static=len(model.statics),
        dtype=dtype,
        requires_grad=requires_grad,
    )


@functools.lru_cache(maxsize=None)
def _traced(name: str, dtype: str) -> tuple[KernelSpec, TracedCore, str]:
    """(spec, traced graphs, canonical IR text), traced once per test process."""
    spec = _spec(MODELS[name], dtype)
    traced = trace_core(spec)
    return spec, traced, dumps_ir(traced_to_ir(traced))


def _ir(name: str = "lif_hard", dtype: str = "float32") -> tuple[KernelSpec, dict[str, Any]]:
    spec, _, text = _traced(name, dtype)
    return spec, json.loads(text)


def _nodes(ir: dict[str, Any], graph: str = "inference") -> list[dict[str, Any]]:
    return ir[graph]["nodes"]


def _first(ir: dict[str, Any], graph: str = "inference", op: str = "call_function") -> dict[str, Any]:
    return next(n for n in _nodes(ir, graph) if n["op"] == op)


def _find(ir: dict[str, Any], target: str) -> dict[str, Any]:
    """The first call of ``target`` in any graph."""
    return next(
        n for g in ("inference", "forward", "backward") if ir[g] for n in _nodes(ir, g) if n.get("target") == target
    )


def _rename(ir: dict[str, Any], graph: str, old: str, new: str) -> None:
    """Rename a node and every reference to it (what a careful attacker would do)."""

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            if value.keys() == {"node"} and value["node"] == old:
                return {"node": new}
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    nodes = [walk(n) for n in _nodes(ir, graph)]
    for n in nodes:
        if n["name"] == old:
            n["name"] = new
    ir[graph]["nodes"] = nodes


def _rejects(spec: KernelSpec, ir: Any, match: str, **kwargs: Any) -> IRError:
    with pytest.raises(IRError, match=match) as info:
        generate_from_ir(spec, ir, **kwargs)
    return info.value


# --------------------------------------------------------------------------
# round trip
# --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_round_trip_gives_the_source_of_direct_tracing(name: str, dtype: str) -> None:
    spec, traced, text = _traced(name, dtype)
    direct = generate_kernels(traced)
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON literal {c}"))
    assert text.isascii() and dumps_ir(json.loads(text)) == text  # canonical
    gen = generate_from_ir(spec, text)
    assert gen.source == direct.source and gen.sha256 == direct.sha256
    assert gen.plan == direct.plan and gen.infos == direct.infos and gen.kernels == direct.kernels
    assert gen.differentiable_returns == direct.differentiable_returns
    # dict, str and bytes are all accepted
    assert generate_from_ir(spec, text.encode()).source == gen.source
    assert generate_from_ir(spec, json.loads(text)).source == gen.source
    rebuilt = ir_to_traced(spec, text)
    assert isinstance(rebuilt.inference, RebuiltGraph)  # never a GraphModule: no Python compiled
    assert rebuilt.lines == traced.lines and rebuilt.tangent_of == traced.tangent_of
    _assert_plain_generated_code(gen.source)  # the property test's checker accepts real kernels


def test_the_ir_is_deterministic_in_process_and_across_processes() -> None:
    cases = [("izhikevich", "bfloat16")]  # a fresh process pays ~10 s for its first trace
    spec, _, text = _traced(*cases[0])
    assert dumps_ir(trace_to_ir(spec)) == text  # a second, independent trace
    here = [hashlib.sha256(_traced(*case)[2].encode()).hexdigest() for case in cases]
    code = (
        "import hashlib, neurons\n"
        "from flexsn_core import KernelSpec\n"
        "from flexsn_core.ir import dumps_ir, trace_to_ir\n"
        f"for name, dtype in {cases!r}:\n"
        "    m = neurons.MODELS[name]\n"
        "    spec = KernelSpec.from_core(m.core, m.num_inputs, m.num_states, m.num_outputs, dtype=dtype)\n"
        "    print(hashlib.sha256(dumps_ir(trace_to_ir(spec)).encode()).hexdigest())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=TESTS,
        env={"PYTHONPATH": f"{ROOT}:{TESTS}", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    assert out.stdout.split() == here


def test_local_generate_goes_through_the_ir_text() -> None:
    spec, traced, _ = _traced("alif", "float32")
    with mock.patch.object(artifacts, "generate_from_ir", wraps=artifacts.generate_from_ir) as seen:
        gen = artifacts.generate(spec)
    (args, _), = seen.call_args_list
    assert args[0] == spec and isinstance(args[1], str)
    assert gen.source == generate_kernels(traced).source


def test_constant_tensors_round_trip_as_typed_values() -> None:
    # Tracing a core never yields get_attr today (lift_fresh is not lowered), but
    # the IR carries single-element lifted constants for graphs that have them.
    from torch.fx.experimental.proxy_tensor import make_fx

    def step(x, v):
        y = x * torch.tensor(0.5) + torch.tensor(2, dtype=torch.int32)
        return y.clone(), (v - torch.tensor([float("-inf")]) * torch.tensor(True)).clone()

    gm = make_fx(step, tracing_mode="fake")(torch.randn(4), torch.randn(4))
    # The spec's source is never run: the graphs come from make_fx above.
    spec = KernelSpec(
        source="def core(x, v):\n    return x, v\n", entry="core", num_inputs=1, num_states=1, num_outputs=1
    )
    traced = TracedCore(spec, gm, None, None, num_saved=0, tangent_of=(None, None), lines={})
    ir = traced_to_ir(traced)
    constants = [n["constant"] for n in _nodes(ir) if n["op"] == "get_attr"]
    assert constants == [
        {"dtype": "float32", "shape": [], "value": 0.5},
        {"dtype": "int32", "shape": [], "value": 2},
        {"dtype": "float32", "shape": [1], "value": {"float": "-inf"}},
        {"dtype": "bool", "shape": [], "value": True},
    ]
    text = dumps_ir(ir)
    assert generate_from_ir(spec, text).source == generate_kernels(traced).source

    bad = json.loads(text)
    const = next(n for n in _nodes(bad) if n["op"] == "get_attr")
    const["constant"]["shape"] = const["meta"]["shape"] = [2]
    _rejects(spec, bad, "exactly one element")
    bad = json.loads(text)
    next(n for n in _nodes(bad) if n["op"] == "get_attr")["constant"]["value"] = "__import__('os')"
    _rejects(spec, bad, "does not fit dtype")
    bad = json.loads(text)
    [n for n in _nodes(bad) if n["op"] == "get_attr"][1]["constant"]["value"] = 2**40
    _rejects(spec, bad, "does not fit dtype int32")


def test_ir_without_training_graphs() -> None:
    nondiff = KernelSpec.from_core(_non_differentiable, 1, 1, 1)
    ir = trace_to_ir(nondiff)
    assert ir["forward"] is None and ir["backward"] is None and ir["tangent_of"] == [None, None]
    gen = generate_from_ir(nondiff, dumps_ir(ir))
    assert not gen.trainable and gen.source == generate_kernels(trace_core(nondiff)).source
    ir["num_saved"] = 1
    _rejects(nondiff, ir, "without training graphs")


def _non_differentiable(x, v):
    h = (0.5 * v + x).detach()
    spike = (h >= 1.0).to(h.dtype)
    return spike, h - spike


def _integer_division(x, v):
    q = torch.div(x.to(torch.int32), 2, rounding_mode="floor")
    return q.to(x.dtype), v


def test_honest_core_errors_keep_their_type_where_the_core_is_traced() -> None:
    # Code generation runs in trace_to_ir too, so an op the generator refuses
    # fails in the jail as the user's error, not later as an IRError.
    with pytest.raises(UnsupportedOpError, match="integer division") as info:
        trace_to_ir(KernelSpec.from_core(_integer_division, 1, 1, 1))
    assert not isinstance(info.value, IRError)


def test_ir_error_is_an_artifact_error_and_limits_are_frozen() -> None:
    assert issubclass(IRError, ArtifactError) and issubclass(IRError, FlexSNError)
    assert IR_VERSION >= 1 and isinstance(DEFAULT_LIMITS, IRLimits)
    with pytest.raises(AttributeError):
        DEFAULT_LIMITS.max_nodes = 10**9  # type: ignore[misc]


# --------------------------------------------------------------------------
# rejections
# --------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["aten.sort.default", "builtins.eval", "os.system", "aten.add", "", 7, None])
def test_unknown_ops_are_rejected(target: object) -> None:
    spec, ir = _ir()
    _first(ir)["target"] = target
    _rejects(spec, ir, "is not in the lowering table")


@pytest.mark.parametrize(
    "name",
    [
        "x\nimport os",
        "x_1\n",  # a trailing newline passes a `$`-anchored regex
        "a b",
        "1abc",
        "a.b",
        "class",
        "x;__import__('os').system('id')",
        "é",
        "",
        "n" * (DEFAULT_LIMITS.max_name_len + 1),
        5,
        None,
    ],
)
def test_injected_node_names_are_rejected(name: object) -> None:
    spec, ir = _ir()
    old = _first(ir)["name"]
    _rename(ir, "inference", old, name)  # type: ignore[arg-type]
    err = _rejects(spec, ir, "node name .* is not a plain identifier")
    assert "inference graph, node #" in str(err)


@pytest.mark.parametrize("name", ["abs", "torch", "inf", "print"])
def test_names_fx_reserves_are_rejected(name: str) -> None:
    spec, ir = _ir()
    _rename(ir, "inference", _first(ir)["name"], name)
    _rejects(spec, ir, "reserved name")


def test_node_names_reach_generated_code_only_as_variable_suffixes() -> None:
    spec, ir = _ir()
    node = next(n for n in _nodes(ir) if n.get("target") in ("aten.sub.Tensor", "aten.add.Tensor"))
    _rename(ir, "inference", node["name"], "renamed_by_the_jail")
    gen = generate_from_ir(spec, ir)
    assert "v_renamed_by_the_jail = " in gen.source
    _assert_plain_generated_code(gen.source)


def test_references_must_point_to_earlier_nodes_of_the_same_graph() -> None:
    spec, ir = _ir()
    nodes = _nodes(ir)
    calls = [n for n in nodes if n["op"] == "call_function"]
    calls[0]["args"][0] = {"node": calls[-1]["name"]}  # forward reference
    _rejects(spec, ir, "not an earlier node of the inference graph")
    spec, ir = _ir()
    _first(ir)["args"][0] = {"node": "primals_1"}  # a forward-graph name
    _rejects(spec, ir, "not an earlier node")
    spec, ir = _ir()
    _first(ir)["args"][0] = {"node": "x\nimport os"}
    _rejects(spec, ir, "not an earlier node")
    spec, ir = _ir()
    _first(ir)["args"][0] = {"node": _first(ir)["name"]}  # itself
    _rejects(spec, ir, "not an earlier node")


def test_node_order_and_uniqueness() -> None:
    spec, ir = _ir()
    nodes = _nodes(ir)
    nodes.append(copy.deepcopy(nodes[-1]))
    _rejects(spec, ir, "used twice|follow the output")
    spec, ir = _ir()
    nodes = _nodes(ir)
    nodes.insert(3, {"name": "late", "op": "placeholder", "meta": {"dtype": "float32", "shape": [4]}})
    _rejects(spec, ir, "placeholders must come before")
    spec, ir = _ir()
    del _nodes(ir)[-1]
    _rejects(spec, ir, "has no output node")
    spec, ir = _ir()
    dup = copy.deepcopy(_first(ir))
    _nodes(ir).insert(_nodes(ir).index(_first(ir)) + 1, dup)
    _rejects(spec, ir, "used twice")


def test_wrong_placeholder_and_return_counts() -> None:
    spec, ir = _ir()
    del _nodes(ir)[1]
    _rejects(spec, ir, "inference graph has 1 inputs; the spec has 2|not an earlier node")
    spec, ir = _ir()
    _nodes(ir).insert(0, {"name": "extra", "op": "placeholder", "meta": {"dtype": "float32", "shape": [4]}})
    _rejects(spec, ir, "inference graph has 3 inputs; the spec has 2")
    spec, ir = _ir()
    placeholders = [n for n in _nodes(ir, "backward") if n["op"] == "placeholder"]
    _nodes(ir, "backward").insert(len(placeholders), {**placeholders[0], "name": "extra_saved"})
    _rejects(spec, ir, "backward graph has .* inputs, not num_saved")
    spec, ir = _ir()
    ir["num_saved"] += 1
    _rejects(spec, ir, "forward graph returns")
    spec, ir = _ir()
    _nodes(ir)[-1]["args"][0].append(_nodes(ir)[-1]["args"][0][0])
    _rejects(spec, ir, "inference graph returns 3 values; the spec has 2")
    spec, ir = _ir()
    _nodes(ir)[-1]["args"][0][0] = None
    _rejects(spec, ir, "inference return #0 is missing")
    spec, ir = _ir()
    _nodes(ir, "backward")[-1]["args"][0].pop()
    _rejects(spec, ir, "backward graph returns 1 gradients; the spec has 2")
    spec, ir = _ir()
    ir["tangent_of"] = [1, 0]
    _rejects(spec, ir, "tangent_of must hold")
    spec, ir = _ir()
    ir["backward"] = None
    _rejects(spec, ir, "one training graph without the other")


@pytest.mark.parametrize("dtype", ["float128", "torch.float32", "complex64", "", 32, None])
def test_bad_dtypes_are_rejected(dtype: object) -> None:
    spec, ir = _ir()
    _first(ir)["meta"]["dtype"] = dtype
    _rejects(spec, ir, "dtype .* is not one of")
    spec, ir = _ir("izhikevich", "bfloat16")
    _find(ir, "aten._to_copy.default")["kwargs"]["dtype"] = {"dtype": dtype}
    _rejects(spec, ir, "dtype .* is not one of")


def test_placeholder_dtype_must_be_the_specs() -> None:
    spec, ir = _ir()
    _nodes(ir)[0]["meta"]["dtype"] = "float64"
    _rejects(spec, ir, "inference input #0 .* has dtype torch.float64, not the spec's torch.float32")


@pytest.mark.parametrize(
    ("kwarg", "value", "match"),
    [
        ("dtype", "float32", re.escape("must be {'dtype': ...}")),
        ("dtype", {"dtype": "float32", "x": 1}, re.escape("must be {'dtype': ...}")),
        ("layout", {"layout": "sparse_coo"}, "layout 'sparse_coo' is not one of strided"),
        ("device", {"device": "cuda"}, "device 'cuda' is not one of cpu, meta"),
        ("pin_memory", 1, "must be a boolean"),
        ("memory_format", {"memory_format": "__class__"}, "is not one of"),
        ("evil", 1, "has no \\(further\\) argument 'evil'"),
    ],
)
def test_typed_constant_arguments(kwarg: str, value: object, match: str) -> None:
    spec, ir = _ir("izhikevich", "bfloat16")
    _find(ir, "aten._to_copy.default")["kwargs"][kwarg] = value
    _rejects(spec, ir, match)


def test_arguments_are_bound_to_the_op_schema() -> None:
    spec, ir = _ir()
    add = next(n for n in _nodes(ir) if n.get("target") in ("aten.add.Tensor", "aten.mul.Tensor"))
    add["args"].append(1)
    add["args"].append(1)
    _rejects(spec, ir, "takes at most 2 positional arguments")
    spec, ir = _ir()
    add = next(n for n in _nodes(ir) if n.get("target") in ("aten.add.Tensor", "aten.mul.Tensor"))
    add["args"] = add["args"][:1]
    _rejects(spec, ir, "needs the argument 'other'")
    spec, ir = _ir()
    add = next(n for n in _nodes(ir) if n.get("target") in ("aten.add.Tensor", "aten.mul.Tensor"))
    add["kwargs"]["self"] = add["args"][0]
    _rejects(spec, ir, "no \\(further\\) argument 'self'")
    spec, ir = _ir()
    add = next(n for n in _nodes(ir) if n.get("target") in ("aten.add.Tensor", "aten.mul.Tensor"))
    add["args"][1] = "__import__('os').system('id')"
    _rejects(spec, ir, "must be a node reference {'node': NAME} or a number")
    spec, ir = _ir()
    add = next(n for n in _nodes(ir) if n.get("target") in ("aten.add.Tensor", "aten.mul.Tensor"))
    add["args"][1] = {"float": "1e999"}
    _rejects(spec, ir, "float '1e999' is not one of -inf, inf, nan")


def test_string_arguments_come_from_a_whitelist() -> None:
    spec = KernelSpec.from_core(_div_modes, 1, 1, 1)
    ir = trace_to_ir(spec)
    div = next(n for n in _nodes(ir) if n.get("target") == "aten.div.Tensor_mode")
    assert div["kwargs"]["rounding_mode"] in ("floor", "trunc")
    assert generate_from_ir(spec, ir).source == generate_kernels(trace_core(spec)).source
    for evil in ("floor\nimport os", "ceil", {"str": "floor"}, ["floor"], 1):
        div["kwargs"]["rounding_mode"] = evil
        _rejects(spec, ir, "is not one of \\['floor', 'trunc'\\]")


def _div_modes(x, v):
    return torch.div(x, 2.0, rounding_mode="floor") + torch.div(x, v, rounding_mode="trunc"), v * 0.5


def test_oversized_ir() -> None:
    spec, ir = _ir()
    text = dumps_ir(ir)
    _rejects(spec, text + " " * DEFAULT_LIMITS.max_bytes, "larger than the limit")
    _rejects(spec, (text + " " * DEFAULT_LIMITS.max_bytes).encode(), "bytes; the limit is")
    _rejects(spec, text, "larger than the limit", limits=IRLimits(max_bytes=len(text) - 1))
    _rejects(spec, ir, "as JSON; the limit is", limits=IRLimits(max_bytes=len(text) - 1))
    _rejects(spec, text, "more than 100 JSON values", limits=IRLimits(max_values=100))
    long = copy.deepcopy(ir)
    long["lines"]["aten.add.Tensor"] = 1
    long["lines"]["aten." + "x" * 300 + ".default"] = 1
    _rejects(spec, long, "string of 3.. characters")


def test_too_many_nodes() -> None:
    spec, ir = _ir()
    _rejects(spec, ir, "inference graph has .* nodes; the limit is 5", limits=IRLimits(max_nodes=5))
    # A long chain of valid ops under the default limits.
    nodes = _nodes(ir)
    first = _first(ir)
    chain = [
        {**copy.deepcopy(first), "name": f"chain_{i}", "target": "aten.neg.default",
         "args": [{"node": first["name"] if i == 0 else f"chain_{i - 1}"}], "kwargs": {}}
        for i in range(DEFAULT_LIMITS.max_nodes)
    ]
    at = nodes.index(first) + 1
    nodes[at:at] = chain
    _rejects(spec, ir, f"nodes; the limit is {DEFAULT_LIMITS.max_nodes}")


def test_deep_nesting() -> None:
    spec, ir = _ir()
    _rejects(spec, "[" * 100_000 + "]" * 100_000, "nested")
    _rejects(spec, '{"a":' * 50_000 + "1" + "}" * 50_000, "nested")
    deep: Any = 1
    for _ in range(DEFAULT_LIMITS.max_depth + 1):
        deep = [deep]
    _first(ir)["args"][0] = deep
    _rejects(spec, ir, "nested deeper than")
    _rejects(spec, dumps_ir(ir), "nested deeper than")
    cyclic: dict[str, Any] = {}
    cyclic["self"] = cyclic
    _rejects(spec, cyclic, "nested deeper than")


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400", "-1e999"])
def test_non_finite_floats_need_their_tag(literal: str) -> None:
    spec, ir = _ir("lif_hard", "float32")
    mul = next(n for n in _nodes(ir) if n.get("target") == "aten.mul.Tensor" and not isinstance(n["args"][1], dict))
    text = dumps_ir(ir)
    needle = json.dumps(mul["args"][1])
    bad = text.replace(f'"args":[{json.dumps(mul["args"][0], separators=(",", ":"))},{needle}]',
                       f'"args":[{json.dumps(mul["args"][0], separators=(",", ":"))},{literal}]', 1)
    assert bad != text
    _rejects(spec, bad, "non-finite|literal")
    mul["args"][1] = float(literal.replace("1e400", "inf").replace("-1e999", "-inf"))
    _rejects(spec, ir, "non-finite|literal")
    mul["args"][1] = {"float": "inf"}  # the tag is fine
    assert "float(\"inf\")" in generate_from_ir(spec, ir).source


def test_ints_are_bounded() -> None:
    spec, ir = _ir()
    text = dumps_ir(ir).replace('"shape":[4]', '"shape":[' + "9" * 5000 + "]", 1)
    _rejects(spec, text, "not valid JSON|64-bit")
    _first(ir)["meta"]["shape"] = [2**63]
    _rejects(spec, ir, "64-bit range")
    spec, ir = _ir()
    _first(ir)["meta"]["shape"] = [-1]
    _rejects(spec, ir, "must be an integer in \\[0, ")
    spec, ir = _ir()
    _first(ir)["meta"]["shape"] = [4] * 9
    _rejects(spec, ir, "at most 8 sizes")
    spec, ir = _ir()
    _first(ir)["meta"]["shape"] = [True]
    _rejects(spec, ir, "must be an integer")
    spec, ir = _ir()
    _first(ir)["meta"]["shape"] = [2**31 - 1] * 8  # meta tensors allocate nothing, but the count must fit
    _rejects(spec, ir, "more than 2147483647 elements")


def test_version_format_and_spec_key() -> None:
    spec, ir = _ir()
    _rejects(spec, {**ir, "version": IR_VERSION + 1}, f"IR version {IR_VERSION + 1} is not supported")
    _rejects(spec, {**ir, "version": True}, "is not supported")
    _rejects(spec, {**ir, "format": "pickle"}, "format is 'pickle'")
    _rejects(spec, {**ir, "spec_key": "0" * 64}, "not the requested spec")
    other, _ = _ir("lif_soft", "float32")
    _rejects(other, ir, "not the requested spec")


@pytest.mark.parametrize("value", [[1, 2], 3, None, 1.5, object(), "[]", b"null", b"\xff\xfe", '{"a": NaN}', "nope"])
def test_non_dict_input(value: object) -> None:
    spec, _ = _ir()
    _rejects(spec, value, "must be a JSON object|not UTF-8|not valid JSON|literal")


def test_unknown_and_missing_fields() -> None:
    spec, ir = _ir()
    _rejects(spec, {**ir, "plan": {"loads": []}}, "the IR has unknown field\\(s\\): 'plan'")
    _rejects(spec, {k: v for k, v in ir.items() if k != "lines"}, "lacks field\\(s\\): 'lines'")
    spec, ir = _ir()
    _first(ir)["code"] = "import os"
    _rejects(spec, ir, "has unknown field\\(s\\): 'code'")
    spec, ir = _ir()
    _first(ir)["meta"]["stride"] = [1]
    _rejects(spec, ir, "meta has unknown field")
    spec, ir = _ir()
    ir["inference"]["python"] = "x"
    _rejects(spec, ir, "inference graph has unknown field")
    spec, ir = _ir()
    _first(ir)["op"] = "call_module"
    _rejects(spec, ir, "whose op is one of")
    spec, ir = _ir()
    ir["lines"]["os.system"] = 1
    _rejects(spec, ir, "is not an aten op name")
    spec, ir = _ir()
    ir["lines"] = {"aten.add.Tensor": 0}
    _rejects(spec, ir, "must be an integer in \\[1, ")


def test_code_generation_failures_on_validated_ir_are_ir_errors() -> None:
    spec, ir = _ir()
    mul = next(n for n in _nodes(ir) if n.get("target") == "aten.mul.Tensor")
    mul["target"] = "aten.bitwise_and.Tensor"  # schema-valid, but not on float tensors
    err = _rejects(spec, ir, "code generation rejected the IR: UnsupportedOpError: bitwise ops")
    assert isinstance(err.__cause__, UnsupportedOpError)


# --------------------------------------------------------------------------
# property: any mutation gives kernels of plain generated code, or an IRError
# --------------------------------------------------------------------------
_ALLOWED_CALLS = {"float", "range"}


@functools.lru_cache(maxsize=None)  # mutated IRs often give one of a few sources
def _assert_plain_generated_code(source: str) -> None:
    """The generated module holds only kernel code: no imports beyond Triton's,
    calls only to ``tl.*``, ``.to(...)``, ``float``/``range``, strings only inf/nan."""
    imports = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            imports += [a.name for a in node.names]
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name):
                assert func.id in _ALLOWED_CALLS, ast.unparse(node)
            else:
                assert isinstance(func, ast.Attribute), ast.unparse(node)
                root = func
                while isinstance(root, ast.Attribute):
                    root = root.value
                assert func.attr == "to" or (isinstance(root, ast.Name) and root.id == "tl"), ast.unparse(node)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            assert node.value in ("inf", "-inf", "nan"), node.value
        elif isinstance(node, (ast.Lambda, ast.ClassDef, ast.Global, ast.Nonlocal, ast.Delete, ast.With)):
            raise AssertionError(ast.unparse(node))
        elif isinstance(node, ast.Attribute):
            assert not node.attr.startswith("__"), ast.unparse(node)
    assert imports == ["triton", "triton.language"]


_EVIL_STRINGS = st.sampled_from(
    [
        "x\nimport os",
        "__import__('os').system('id')",
        "os.system",
        "builtins.eval",
        "aten.sort.default",
        "aten.add.Tensor",
        "aten.neg.default",
        "floor",
        "float32",
        "bool",
        "cpu",
        "node",
        "float",
        "dtype",
        "inf",
        "nan",
        "primals_1",
        "tangents_1",
        "x_1",
        "add",
        "__class__",
        "",
    ]
)
_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=True, allow_infinity=True),
    _EVIL_STRINGS,
    st.text(max_size=8),
)
_JSONISH = st.recursive(
    _LEAVES,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(_EVIL_STRINGS, st.text(max_size=4)), children, max_size=3),
        st.builds(lambda tag, v: {tag: v}, st.sampled_from(["node", "float", "dtype", "device", "layout"]), children),
    ),
    max_leaves=8,
)


def _containers(value: Any, path: tuple = ()) -> list[tuple]:
    found = [path] if isinstance(value, (dict, list)) else []
    if isinstance(value, dict):
        for k, v in value.items():
            found += _containers(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _containers(v, (*path, i))
    return found


def _at(value: Any, path: tuple) -> Any:
    for step in path:
        value = value[step]
    return value


@st.composite
def _mutated(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    ir = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        paths = _containers(ir)
        container = _at(ir, draw(st.sampled_from(paths)))
        keys = list(container.keys()) if isinstance(container, dict) else list(range(len(container)))
        action = draw(st.sampled_from(["replace", "delete", "insert", "duplicate", "swap"]))
        if not keys:
            action = "insert"
        if action == "insert":
            if isinstance(container, dict):
                container[draw(_EVIL_STRINGS)] = draw(_JSONISH)
            else:
                container.insert(draw(st.integers(0, len(container))), draw(_JSONISH))
            continue
        key = draw(st.sampled_from(keys))
        if action == "replace":
            container[key] = draw(_JSONISH)
        elif action == "delete":
            del container[key]
        elif action == "duplicate" and isinstance(container, list):
            container.insert(key, copy.deepcopy(container[key]))
        elif action == "swap":
            other = draw(st.sampled_from(keys))
            container[key], container[other] = container[other], container[key]
    return ir


_BASES = [("lif_hard", "float32"), ("alif", "bfloat16"), ("op_mix_b", "float16")]


@pytest.mark.parametrize(("name", "dtype"), _BASES)
def test_mutated_irs_give_plain_code_or_an_ir_error(name: str, dtype: str) -> None:
    spec, base = _ir(name, dtype)
    outcomes = {"ok": 0, "rejected": 0}

    @settings(
        max_examples=100,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(ir=_mutated(base))
    def check(ir: dict[str, Any]) -> None:
        for form in (ir, _dumps_loose(ir)):
            try:
                gen = generate_from_ir(spec, form)
            except IRError as exc:
                # Validation names the problem itself; the generic net never has to.
                assert not str(exc).startswith("malformed IR"), exc
                outcomes["rejected"] += 1
            else:
                _assert_plain_generated_code(gen.source)
                outcomes["ok"] += 1

    check()
    assert outcomes["rejected"] > 0 and outcomes["ok"] > 0, outcomes


def _dumps_loose(ir: Any) -> str | dict[str, Any]:
    """The mutated IR as JSON text where Python can write it (it keeps NaN literals)."""
    try:
        return json.dumps(ir)
    except (TypeError, ValueError):
        return ir
