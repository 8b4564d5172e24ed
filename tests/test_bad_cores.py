"""A bad core fails early, with an error that names the problem and the fix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flexsn_core import (
    CoreCaptureError,
    CoreReturnTypeError,
    CoreSignatureError,
    CoreSourceError,
    CoreTraceError,
    FlexSNError,
    KernelSpec,
    UnsupportedOpError,
)
from flexsn_core.artifacts import generate

WEIGHT = torch.ones(4)
LAYER = torch.nn.Linear(4, 4)


def captures_tensor(x, v):
    return x * WEIGHT, v


def captures_module(x, v):
    return LAYER(x), v


def uses_numpy(x, v):
    return x * np.pi, v


def sorts(x, v):
    y = torch.sort(x)[0]
    return y, v


def matmul(x, v):
    return torch.matmul(x, v) + x, v


def reduces(x, v):
    return x - x.mean(), v


def three_returns(x, v):
    return x, v, v


def returns_float(x, v):
    return 1.0, v


def returns_bool(x, v):
    return x > 0, v


def takes_three(x, v, w):
    return x, v


def branches(x, v):
    if v > 1.0:
        v = v - 1.0
    return x, v


def branches_any(x, v):
    if (v > 1.0).any():
        v = v - 1.0
    return x, v


def reads_item(x, v):
    scale = v.item()
    return x * scale, v


def raises_inside(x, v):
    return x.no_such_method(), v


def _generate(core, num_inputs=1, num_states=1, num_outputs=1):
    return generate(KernelSpec.from_core(core, num_inputs, num_states, num_outputs))


def test_captured_tensor_names_the_variable_and_the_fix() -> None:
    with pytest.raises(CoreCaptureError, match=r"tensor 'WEIGHT'.*static_inputs") as info:
        KernelSpec.from_core(captures_tensor, 1, 1, 1)
    assert isinstance(info.value, TypeError) and isinstance(info.value, FlexSNError)


def test_closure_tensor_and_module_are_rejected() -> None:
    bias = torch.zeros(4)

    def closure(x, v):
        return x + bias, v

    with pytest.raises(CoreCaptureError, match="tensor 'bias'"):
        KernelSpec.from_core(closure, 1, 1, 1)
    with pytest.raises(CoreCaptureError, match="module 'LAYER'.*static_inputs"):
        KernelSpec.from_core(captures_module, 1, 1, 1)
    with pytest.raises(CoreCaptureError, match="module 'numpy'"):
        KernelSpec.from_core(uses_numpy, 1, 1, 1)
    with pytest.raises(CoreSourceError, match="lambda"):
        KernelSpec.from_core(lambda x, v: (x, v), 1, 1, 1)


@pytest.mark.parametrize(
    ("core", "op", "line_text"),
    [
        (sorts, "aten.sort.default", "torch.sort(x)"),
        (matmul, "aten.dot.default", "torch.matmul(x, v)"),
        (reduces, "aten.mean.default", "x.mean()"),
    ],
)
def test_unsupported_op_names_op_and_line(core, op: str, line_text: str) -> None:
    with pytest.raises(UnsupportedOpError) as info:
        _generate(core)
    err = info.value
    assert err.op == op
    assert err.line is not None
    assert op in str(err) and line_text in str(err)
    spec = KernelSpec.from_core(core, 1, 1, 1)
    assert line_text in spec.source.splitlines()[err.line - 1]


def test_wrong_return_count() -> None:
    with pytest.raises(CoreSignatureError, match=r"returned 3 values, but expected 2") as info:
        _generate(three_returns)
    assert isinstance(info.value, ValueError)


def test_non_tensor_and_wrong_dtype_returns() -> None:
    with pytest.raises(CoreReturnTypeError, match="return #0 is float") as info:
        _generate(returns_float)
    assert isinstance(info.value, TypeError)
    with pytest.raises(CoreSignatureError, match="dtype torch.bool.*spike.to"):
        _generate(returns_bool)


def test_wrong_arity() -> None:
    with pytest.raises(CoreSignatureError, match="cannot take 2 positional arguments"):
        _generate(takes_three)


@pytest.mark.parametrize("core", [branches, reads_item])
def test_python_control_flow_on_tensors(core) -> None:
    with pytest.raises(CoreTraceError, match=r"torch.where") as info:
        _generate(core)
    assert "line" in str(info.value)


def test_reduction_in_a_condition_points_to_where() -> None:
    with pytest.raises(UnsupportedOpError, match=r"aten.any.*torch.where"):
        _generate(branches_any)


def test_core_raising_is_reported_with_its_line() -> None:
    with pytest.raises(CoreTraceError, match=r"AttributeError at line \d+ .*no_such_method"):
        _generate(raises_inside)


def test_syntax_error_in_source_text() -> None:
    spec = KernelSpec(
        source="import torch\n\ndef core(x, v):\n    return x +\n",
        entry="core",
        num_inputs=1,
        num_states=1,
        num_outputs=1,
    )
    with pytest.raises(CoreSourceError, match="syntax error in the core source at line 4"):
        spec.load_core()
    missing = KernelSpec(source="def other(x, v):\n    return x, v\n", entry="core", num_inputs=1, num_states=1, num_outputs=1)
    with pytest.raises(CoreSourceError, match="does not define a top-level function 'core'"):
        missing.load_core()
