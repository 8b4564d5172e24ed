"""FlexSN / FlexSNKernel behaviour, checked against backend="torch".

Kernels run in Triton's interpreter on CPU tensors (TRITON_INTERPRET=1).
"""

from __future__ import annotations

import copy
import gc
import logging

import neurons
import pytest
import torch
from torch import nn

from flexsn_core import FlexSN, FlexSNKernel, counters
from flexsn_core import ops as flexsn_ops

CORES = {
    "lif_hard": (neurons.lif_hard, 1, 1, 1),
    "alif": (neurons.alif, 1, 2, 1),
    "izhikevich": (neurons.izhikevich, 1, 2, 2),
    "two_inputs": (neurons.two_inputs, 2, 1, 2),
}


def _inputs(name: str, T: int = 5, shape=(2, 7), seed: int = 0, grad: bool = False) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    _, ni, _, _ = CORES[name]
    scale, shift = (4.0, 10.0) if name == "izhikevich" else (1.5, 0.5)
    xs = [torch.randn((T, *shape), generator=g) * scale + shift for _ in range(ni)]
    return [x.requires_grad_(grad) for x in xs]


def _pair(name: str, **kw) -> tuple[FlexSN, FlexSN]:
    core, ni, ns, no = CORES[name]
    return FlexSN(core, ni, ns, no, backend="triton", **kw), FlexSN(core, ni, ns, no, backend="torch", **kw)


def _as_list(y) -> list[torch.Tensor]:  # noqa: ANN001
    return [y] if isinstance(y, torch.Tensor) else list(y)


def _init_izhikevich(fast: FlexSN, slow: FlexSN, shape=(2, 7)) -> None:
    v = torch.full(shape, -65.0)
    for m in (fast, slow):
        m.states = [v.clone(), 0.2 * v.clone()]


@pytest.mark.parametrize("store_state_seqs", [False, True])
@pytest.mark.parametrize("name", sorted(CORES))
def test_inference_matches_torch_and_states_carry_over(name: str, store_state_seqs: bool) -> None:
    fast, slow = _pair(name, store_state_seqs=store_state_seqs)
    if name == "izhikevich":
        _init_izhikevich(fast, slow)
    with torch.no_grad():
        for call in range(2):
            xs = _inputs(name, seed=call)
            for a, b in zip(_as_list(fast(*xs)), _as_list(slow(*xs))):
                torch.testing.assert_close(a, b)
            for a, b in zip(fast.states, slow.states):
                torch.testing.assert_close(a, b)
            if store_state_seqs:
                for a, b in zip(fast.state_seqs, slow.state_seqs):
                    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("store_state_seqs", [False, True])
@pytest.mark.parametrize("name", sorted(CORES))
def test_training_matches_torch(name: str, store_state_seqs: bool) -> None:
    fast, slow = _pair(name, store_state_seqs=store_state_seqs)
    if name == "izhikevich":
        _init_izhikevich(fast, slow)
        for m in (fast, slow):
            m.states = [s.requires_grad_() for s in m.states]
    grads = []
    for m in (fast, slow):
        xs = _inputs(name, grad=True)
        loss = sum(y.sum() for y in _as_list(m(*xs))) + sum((s * s).sum() for s in m.states)
        if store_state_seqs:
            loss = loss + sum(s.mean() for s in m.state_seqs)
        loss.backward()
        grads.append([x.grad for x in xs])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


def test_static_parameter_is_registered_and_trained() -> None:
    w = nn.Parameter(torch.randn(2, 7) * 0.3)
    fast = FlexSN(neurons.plif, 1, 1, 1, static_inputs=(w,))
    slow = FlexSN(neurons.plif, 1, 1, 1, static_inputs=(w,), backend="torch")
    assert [name for name, _ in fast.named_parameters()] == ["static_0"]
    x = torch.randn(6, 2, 7) + 0.5
    (gf,) = torch.autograd.grad(fast(x).sum() + fast.states[0].sum(), [w])
    (gs,) = torch.autograd.grad(slow(x).sum() + slow.states[0].sum(), [w])
    assert gf.abs().sum() > 0
    torch.testing.assert_close(gf, gs, atol=1e-5, rtol=1e-4)


def test_reset_and_zero_state_elision() -> None:
    fast, slow = _pair("alif")
    x = _inputs("alif")[0]
    with torch.no_grad():
        fast(x)
        first = fast.states[0].clone()
        fast(x)
        assert not torch.equal(fast.states[0], first)
        fast.reset()
        assert fast.states is None
        fast(x)
        torch.testing.assert_close(fast.states[0], first)


class ChargedLIF(FlexSN):
    """Custom initial states disable zero-state elision and are used by the kernels."""

    @staticmethod
    def init_states(num_states, step_mode, *args):  # noqa: ANN001, ANN205
        return [torch.full_like(args[0][0], 0.9) for _ in range(num_states)]


def test_overridden_init_states_are_used() -> None:
    x = torch.zeros(3, 4)
    with torch.no_grad():
        fast = ChargedLIF(neurons.lif_hard, 1, 1, 1)
        slow = ChargedLIF(neurons.lif_hard, 1, 1, 1, backend="torch")
        torch.testing.assert_close(fast(x), slow(x))


def test_single_step_mode_runs_the_core_per_call() -> None:
    m = FlexSN(neurons.lif_hard, 1, 1, 1, step_mode="s", backend="torch")
    ref = FlexSN(neurons.lif_hard, 1, 1, 1, backend="torch")
    x = torch.randn(4, 3) + 0.8
    ys = torch.stack([m(x[t]) for t in range(4)])
    torch.testing.assert_close(ys, ref(x))


def test_empty_sequences() -> None:
    x = torch.randn(0, 2, 3)
    fast = FlexSN(neurons.lif_hard, 1, 1, 1, store_state_seqs=True)
    y = fast(x)
    assert y.shape == (0, 2, 3) and fast.state_seqs[0].shape == (0, 2, 3)
    assert torch.equal(fast.states[0], torch.zeros(2, 3))
    template = (torch.zeros(2, 3),)
    for backend in ("torch", "hop"):
        m = FlexSN(neurons.lif_hard, 1, 1, 1, backend=backend, example_outputs=template)
        assert m(x).shape == (0, 2, 3)
    with pytest.raises(ValueError, match="requires example_outputs"):
        FlexSN(neurons.lif_hard, 1, 1, 1, backend="torch")(x)


def test_deepcopy_shares_kernels_but_not_states_or_parameters() -> None:
    w = nn.Parameter(torch.randn(2, 7) * 0.3)
    m = FlexSN(neurons.plif, 1, 1, 1, static_inputs=(w,))
    x = torch.randn(4, 2, 7) + 0.5
    with torch.no_grad():
        m(x)
    handle = next(iter(m._kernels.handles.values()))
    owners = flexsn_ops.lookup_handle(handle).owner_refs
    twin = copy.deepcopy(m)
    assert flexsn_ops.lookup_handle(handle).owner_refs == owners + 1
    assert twin.static_0 is not m.static_0 and torch.equal(twin.static_0, m.static_0)
    twin.states[0].add_(1.0)
    assert not torch.equal(twin.states[0], m.states[0])
    traces = counters()["traces"]
    with torch.no_grad():
        m.reset(), twin.reset()
        torch.testing.assert_close(twin(x), m(x))
    assert counters()["traces"] == traces  # the copy built nothing
    del twin
    gc.collect()
    assert flexsn_ops.lookup_handle(handle).owner_refs == owners


def test_handle_outlives_its_module_until_backward() -> None:
    before = flexsn_ops.live_handles()
    m = FlexSN(neurons.lif_soft, 1, 1, 1)
    x = (torch.randn(4, 5) + 0.5).requires_grad_()
    y = m(x)
    assert flexsn_ops.live_handles() == before + 1
    del m
    gc.collect()
    assert flexsn_ops.live_handles() == before + 1  # the graph still needs the kernels
    y.sum().backward()
    assert x.grad is not None
    del y
    gc.collect()
    assert flexsn_ops.live_handles() == before


def test_kernel_accessor_and_flexsnkernel() -> None:
    m = FlexSN(neurons.alif, 1, 2, 1)
    x = _inputs("alif")[0]
    v0, a0 = torch.zeros(2, 7), torch.zeros(2, 7)
    ref = FlexSN(neurons.alif, 1, 2, 1, backend="torch", store_state_seqs=True)
    with torch.no_grad():
        y_ref = ref(x)
        y, v_seq, a_seq = m.kernel(x, v0, a0)
        k = FlexSNKernel(neurons.alif, 1, 2, 1)
        y2, v2, a2 = k(x, v0, a0)
    for got in ((y, v_seq, a_seq), (y2, v2, a2)):
        torch.testing.assert_close(got[0], y_ref)
        torch.testing.assert_close(got[1], ref.state_seqs[0])
        torch.testing.assert_close(got[2], ref.state_seqs[1])
    with pytest.raises(ValueError, match="expected 3 tensors"):
        m.kernel(x, v0)
    with pytest.raises(TypeError, match="arg #2 is float"):
        m.kernel(x, v0, 1.0)
    xg = x.clone().requires_grad_()
    y3, _, _ = copy.deepcopy(k)(xg, v0, a0)
    y3.sum().backward()
    assert xg.grad is not None


def test_validation_errors_of_the_reference() -> None:
    with pytest.raises(ValueError, match="requires at least one input sequence"):
        FlexSN(neurons.lif_hard, 0, 1, 1)
    with pytest.raises(NotImplementedError, match="not a supported backend"):
        FlexSN(neurons.lif_hard, 1, 1, 1, backend="cupy")
    with pytest.raises(RuntimeError, match="require step_mode='m'"):
        FlexSN(neurons.lif_hard, 1, 1, 1, step_mode="s", backend="triton")
    with pytest.raises(ValueError, match="expected 1 example output tensors"):
        FlexSN(neurons.lif_hard, 1, 1, 1, example_outputs=(torch.zeros(1), torch.zeros(1)))
    with pytest.raises(TypeError, match="example output #0"):
        FlexSN(neurons.lif_hard, 1, 1, 1, example_outputs=(1.0,))
    with pytest.raises(ValueError, match="example_outputs to match"):
        FlexSN(neurons.lif_hard, 1, 1, 1, example_inputs=(torch.zeros(3), torch.zeros(3)),
               example_outputs=(torch.zeros(4),))
    with pytest.raises(ValueError, match="returned 3 values, but expected 2"):
        FlexSN(lambda x, v: (x, v, v), 1, 1, 1)
    with pytest.raises(TypeError, match="return #0 is"):
        FlexSN(lambda x, v: (1.0, v), 1, 1, 1)
    with pytest.raises(ValueError, match="same number of elements"):
        FlexSN(neurons.lif_hard, 1, 1, 1, example_inputs=(torch.zeros(3), torch.zeros(4)))


def test_cpu_without_interpreter_falls_back_to_hop_with_one_warning(monkeypatch, caplog) -> None:  # noqa: ANN001
    """Issue #11: a user must see that no kernels run (a warning, once per process, not per layer)."""
    import flexsn_core.module.flexsn as flexsn_module

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(flexsn_module, "_fallbacks_logged", set())
    m = FlexSN(neurons.lif_hard, 1, 1, 1)
    other = FlexSN(neurons.lif_soft, 1, 1, 1)
    ref = FlexSN(neurons.lif_hard, 1, 1, 1, backend="torch")
    x = torch.randn(5, 3) + 0.5
    with caplog.at_level(logging.WARNING, logger="flexsn_core"):
        with torch.no_grad():
            torch.testing.assert_close(m(x), ref(x))
            m(x)
            other(x)
    notes = [r for r in caplog.records if "using the HOP path" in r.message]
    assert len(notes) == 1 and notes[0].levelno == logging.WARNING
    assert "TRITON_INTERPRET=1" in notes[0].getMessage()


def test_capture_errors_surface_at_construction() -> None:
    weight = torch.ones(3)

    def bad(x, v):
        return x * weight, v

    with pytest.raises(TypeError, match="static_inputs"):
        FlexSN(bad, 1, 1, 1, example_inputs=(torch.zeros(3), torch.zeros(3)))
    # the torch and hop backends run any Python and need no capture
    FlexSN(bad, 1, 1, 1, backend="hop")


def test_custom_ops_pass_opcheck() -> None:
    m = FlexSN(neurons.lif_hard, 1, 1, 1)
    handle = next(iter(m._kernels.handles.values()))
    x = torch.randn(3, 4)
    v = torch.randn(4)
    for op, args in (
        (torch.ops.flexsn.inference.default, (handle, [x], [v], [])),
        (torch.ops.flexsn.inference_final.default, (handle, [x], [], [])),
        (torch.ops.flexsn.training.default, (handle, [x.requires_grad_()], [v.requires_grad_()], [], False)),
    ):
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def test_cuda_tensors_under_the_interpreter_are_a_clear_error(monkeypatch) -> None:  # noqa: ANN001
    """Issue #11: TRITON_INTERPRET=1 on a GPU machine. CUDA is faked: the device checks are what decide."""
    from types import SimpleNamespace

    import flexsn_core.module.kernel as kernel_module
    from flexsn_core.module import paths

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    cuda = torch.device("cuda", 0)
    with pytest.raises(RuntimeError, match="Unset TRITON_INTERPRET for GPU runs"):
        paths.kernels_usable(cuda)
    assert paths.default_device() == torch.device("cpu")  # no CUDA build by default under the interpreter
    m = FlexSN(neurons.lif_hard, 1, 1, 1)
    with pytest.raises(RuntimeError, match="cannot run on CUDA tensors while TRITON_INTERPRET=1"):
        m._kernel_handle([SimpleNamespace(device=cuda, dtype=torch.float32)])  # what forward asks
    monkeypatch.setattr(kernel_module, "default_device", lambda: cuda)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        FlexSNKernel(neurons.lif_hard, 1, 1, 1)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert paths.kernels_usable(cuda)
