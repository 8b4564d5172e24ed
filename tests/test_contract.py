"""The scan contract is checked the same way by every backend (flexsn_core.contract)."""

from __future__ import annotations

import neurons
import pytest
import torch

from flexsn_core import FlexSN, FlexSNKernel, flex_sn_scan


def test_count_errors_read_the_same_on_every_path() -> None:
    with pytest.raises(ValueError, match="FlexSN HOP backend requires at least one input or state tensor"):
        FlexSN(neurons.lif_hard, 0, 0, 1, backend="hop", step_mode="s")
    with pytest.raises(ValueError, match="flex_sn_scan requires at least one input sequence to derive T"):
        flex_sn_scan(neurons.lif_hard, 0, 1, 1, torch.zeros(3))
    with pytest.raises(ValueError, match="Triton path.*requires at least one input sequence to derive T"):
        FlexSNKernel(lambda v: (v, v), 0, 1, 1)


def test_return_errors_read_the_same_on_every_path() -> None:
    def three(x, v):  # noqa: ANN001, ANN202
        return x, v, v

    with pytest.raises(ValueError, match=r"FlexSN core returned 3 values, but expected 2 \(= num_outputs"):
        FlexSN(three, 1, 1, 1)
    with pytest.raises(ValueError, match=r"flex_sn_scan core returned 3 values, but expected 2 \(= num_outputs"):
        flex_sn_scan(three, 1, 1, 1, torch.zeros(2, 3), torch.zeros(3))
    with pytest.raises(TypeError, match="flex_sn_scan core return #0 is"):
        flex_sn_scan(lambda x, v: (1.0, v), 1, 1, 1, torch.zeros(2, 3), torch.zeros(3))


def test_kernels_refuse_inputs_and_states_of_another_layout() -> None:
    """The kernels index every buffer by the first input's T and N: a smaller tensor would be overrun."""
    m = FlexSN(neurons.two_inputs, 2, 1, 2)
    x = torch.randn(4, 3, 5)
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"input sequence #1 is \(\(4, 3\), .*must match input #0 \(\(4, 3, 5\)"):
            m(x, torch.randn(4, 3))
        with pytest.raises(ValueError, match=r"input sequence #1 is .*torch.float16"):
            m(x, x.half())
        m.states = [torch.zeros(3, 4)]
        with pytest.raises(ValueError, match=r"state #0 is \(\(3, 4\).*one step of input #0 \(\(3, 5\)"):
            m(x, x)
        m.reset()
        m(x, x)  # the same layout runs
    k = FlexSNKernel(neurons.lif_hard, 1, 1, 1)
    with pytest.raises(ValueError, match="state #0"):
        k(torch.randn(2, 6), torch.zeros(5))


# ------------------------------------------------------------------ issue #11: call-time validation
import re  # noqa: E402

import bad_neurons  # noqa: E402

import flexsn_core.ops as ops_module  # noqa: E402
from flexsn_core import (  # noqa: E402
    CoreCaptureError,
    CoreReturnTypeError,
    CoreSignatureError,
    FlexSNError,
)
from flexsn_core.runtime import KernelSet  # noqa: E402


def _two_inputs(backend: str) -> FlexSN:
    return FlexSN(neurons.two_inputs, 2, 1, 2, backend=backend)


def _plif(backend: str) -> FlexSN:
    return FlexSN(neurons.plif, 1, 1, 1, backend=backend, static_inputs=(torch.nn.Parameter(torch.zeros(3, 5)),))


X = torch.randn(4, 3, 5)

# (name, make module, inputs, states to set or None, expected message)
BAD_CALLS = [
    ("different T", _two_inputs, lambda: (X, torch.randn(5, 3, 5)), None,
     r"FlexSN: input sequence #1 is \(\(5, 3, 5\), torch.float32, cpu\); every input sequence must match input #0"),
    ("other dtype", _two_inputs, lambda: (X, X.double()), None, r"input sequence #1 is \(\(4, 3, 5\), torch.float64"),
    ("other device", _two_inputs, lambda: (X, X.to("meta")), None, r"input sequence #1 is \(\(4, 3, 5\), torch.float32, meta\)"),
    ("extra input", _two_inputs, lambda: (X, X, X), None, r"FlexSN expected 2 input sequences, but got 3"),
    ("state too small", _two_inputs, lambda: (X, X), [torch.zeros(3, 4)],
     r"FlexSN: state #0 is \(\(3, 4\), torch.float32, cpu\); every state must be one step of input #0 \(\(3, 5\)"),
    ("state of another dtype", _two_inputs, lambda: (X, X), [torch.zeros(3, 5, dtype=torch.float16)], r"state #0 is"),
    ("extra state", _two_inputs, lambda: (X, X), [torch.zeros(3, 5)] * 2, r"FlexSN expected 1 states, but got 2"),
    ("static does not broadcast", _plif, lambda: (torch.randn(4, 3, 6),), None,
     r"FlexSN: static input #0 of shape \(3, 5\) does not broadcast to the per-step shape \(3, 6\)"),
]


@pytest.fixture
def no_launch(monkeypatch):  # noqa: ANN001, ANN201
    """Any kernel launch fails the test: validation must come before it."""

    def launch(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("a kernel was launched before the call was validated")

    monkeypatch.setattr(KernelSet, "launch", launch)


@pytest.mark.parametrize("backend", ["torch", "hop", "triton"])
@pytest.mark.parametrize(("case", "make", "inputs", "states", "message"), BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_bad_calls_fail_the_same_way_on_every_backend(backend, case, make, inputs, states, message, no_launch) -> None:  # noqa: ANN001
    m = make(backend)
    m.states = states
    with pytest.raises(ValueError, match=message):
        m(*inputs())
    with pytest.raises(ValueError, match=message):  # and with autograd
        m.states = states
        m(*(x.clone().requires_grad_() if x.device.type == "cpu" else x for x in inputs()))


def _direct_calls(case: str, make, inputs, states):  # noqa: ANN001, ANN202
    """The other entry points of the kernels, each given the same bad call."""
    m = make("triton")
    handle = next(iter(m._kernels.handles.values()))
    xs, ss, cs = list(inputs()), list(states or []), m.static_tensors()
    if not ss and m.num_states and case != "extra input":
        ss = [torch.zeros(xs[0].shape[1:])]
    yield "custom op inference", lambda: torch.ops.flexsn.inference(handle, xs, ss, cs)
    yield "custom op inference_final", lambda: torch.ops.flexsn.inference_final(handle, xs, ss, cs)
    yield "custom op training", lambda: torch.ops.flexsn.training(handle, xs, ss, cs, False, False)
    yield "fake implementation", lambda: _fake(handle, xs, ss, cs)
    if len(xs) == m.num_inputs and len(ss) == m.num_states:
        yield "FlexSN.kernel", lambda: m.kernel(*xs, *ss)
        if not cs:
            k = FlexSNKernel(m.core, m.num_inputs, m.num_states, m.num_outputs)
            yield "FlexSNKernel", lambda: k(*xs, *ss)


def _fake(handle, xs, ss, cs):  # noqa: ANN001, ANN202
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = [[mode.from_tensor(t) for t in group] for group in (xs, ss, cs)]
        return torch.ops.flexsn.inference_final(handle, *fake)


@pytest.mark.parametrize(("case", "make", "inputs", "states", "message"), BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_bad_calls_fail_the_same_way_on_every_kernel_entry_point(case, make, inputs, states, message, no_launch) -> None:  # noqa: ANN001
    for where, call in _direct_calls(case, make, inputs, states):
        with pytest.raises(ValueError, match=message) as info:
            call()
        assert re.search(message, str(info.value)), where


def test_a_handle_refuses_inputs_of_another_dtype(no_launch) -> None:
    m = FlexSN(neurons.lif_hard, 1, 1, 1)
    handle = next(iter(m._kernels.handles.values()))
    with pytest.raises(ValueError, match="kernels take torch.float32"):
        torch.ops.flexsn.inference_final(handle, [X.half()], [], [])


def test_good_calls_still_run() -> None:
    for backend in ("torch", "hop", "triton"):
        m = _plif(backend)
        with torch.no_grad():
            m(X)
            m(X)  # states carried over
        s = FlexSN(neurons.plif, 1, 1, 1, backend=backend, static_inputs=(torch.tensor(0.3),))
        s(X)  # a scalar static broadcasts


def test_validation_costs_little_on_the_hot_path() -> None:
    """The check runs on every eager call; keep it in the microseconds (measured: see the README)."""
    import timeit

    from flexsn_core.contract import check_scan_call

    xs, states, statics = [X, X], [X[0]], [torch.zeros(3, 5)]
    check_scan_call(xs, states, statics, 2, 1, 1)
    per_call = min(timeit.repeat(lambda: check_scan_call(xs, states, statics, 2, 1, 1), number=2000, repeat=5)) / 2000
    assert per_call < 50e-6, f"{per_call * 1e6:.1f} us per call"


# ------------------------------------------------------------------ issue #11: errors through FlexSN(...)
@pytest.mark.parametrize("backend", ["triton", "remote-cache"])
def test_errors_through_flexsn_match_the_readme(backend: str) -> None:
    """Raised before any kernel is built (remote-cache never reaches the service: no URL answers here)."""
    kw = {"backend": backend, "cache_url": "http://127.0.0.1:9"} if backend == "remote-cache" else {}
    with pytest.raises(CoreSignatureError, match=r"returned 3 values, but expected 2") as info:
        FlexSN(bad_neurons.three_returns, 1, 1, 1, **kw)
    assert isinstance(info.value, FlexSNError) and isinstance(info.value, ValueError)
    with pytest.raises(CoreReturnTypeError, match="return #0 is"):
        FlexSN(bad_neurons.returns_number, 1, 1, 1, **kw)
    with pytest.raises(CoreSignatureError, match="cannot take 2 positional arguments"):
        FlexSN(bad_neurons.takes_three, 1, 1, 1, **kw)
    # A captured tensor: the capture error, not a shape error about the probe step.
    with pytest.raises(CoreCaptureError, match=r"captures the tensor 'WEIGHTS'.*static_inputs") as info:
        FlexSN(bad_neurons.captures_weights, 1, 1, 1, **kw)
    assert isinstance(info.value, TypeError)
    with pytest.raises(CoreCaptureError, match="WEIGHTS"):
        FlexSN(bad_neurons.captures_weights, 1, 1, 1, example_inputs=(torch.zeros(5),) * 2, **kw)


def test_flexsnkernel_reports_a_captured_tensor_too() -> None:
    with pytest.raises(CoreCaptureError, match="WEIGHTS"):
        FlexSNKernel(bad_neurons.captures_weights, 1, 1, 1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("core", [bad_neurons.float_spike, bad_neurons.float_spike_state], ids=lambda c: c.__name__)
def test_a_float32_spike_in_a_half_core_is_cast_on_every_backend(core, dtype: torch.dtype) -> None:  # noqa: ANN001
    """`(h >= 1).float()` in a bf16/fp16 core: accepted, cast to the core's dtype, the same on every backend."""
    examples = (torch.zeros(5, dtype=dtype),) * 2
    x = (torch.randn(6, 5) + 0.8).to(dtype)
    results = {}
    for backend in ("torch", "hop", "triton"):
        m = FlexSN(core, 1, 1, 1, backend=backend, example_inputs=examples, store_state_seqs=True)
        with torch.no_grad():
            y = m(x)
        assert y.dtype == dtype and m.states[0].dtype == dtype and m.state_seqs[0].dtype == dtype, backend
        results[backend] = (y, m.state_seqs[0])
    torch.testing.assert_close(results["hop"], results["torch"])
    # The kernels compute each step in fp32 (the torch loop in the dtype): spikes agree, states closely.
    spikes, states = results["triton"]
    assert (spikes != results["torch"][0]).float().mean() < 0.05
    torch.testing.assert_close(states.float(), results["torch"][1].float(), atol=0.1, rtol=0.05)


def test_a_boolean_return_is_still_an_error() -> None:
    def returns_bool(x, v):  # noqa: ANN001, ANN202
        return x > 0, v

    with pytest.raises(CoreSignatureError, match=r"torch.bool.*spike.to"):
        FlexSN(returns_bool, 1, 1, 1)
