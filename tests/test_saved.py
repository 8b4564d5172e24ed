"""What a FlexSN training step keeps alive for its backward is exactly the save plan.

Counted through ``torch.autograd.graph.saved_tensors_hooks`` (unique storages of
everything autograd saves during the forward), so a hidden extra saved tensor
(an input the backward kernel never reads, an output, a workspace) fails here.
"""

from __future__ import annotations

import pytest
import torch
from neurons import MODELS

from flexsn_core import FlexSN, ops
from flexsn_core.runtime.index import PlanView

T, SHAPE = 6, (4, 8)
N = 32


def _saved_bytes(m: FlexSN, x: torch.Tensor) -> tuple[int, torch.Tensor]:
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = m(x)
    return sum(storages.values()), out


def _plan(m: FlexSN) -> PlanView:
    (handle,) = m._kernels.handles.values()
    return ops.lookup_handle(handle).plan


@pytest.mark.parametrize("mode", ["stored", "recompute"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("name", ["lif_hard", "alif"])
def test_autograd_keeps_exactly_the_plan(name: str, dtype: torch.dtype, mode: str, monkeypatch) -> None:
    monkeypatch.setenv("FLEXSN_BACKWARD", mode)
    # Fixed data: with bf16 states a spike near the threshold may flip against the fp32 reference, and
    # whichever data a worker's RNG state happened to give made this fail now and then under xdist.
    torch.manual_seed(0)
    model = MODELS[name]
    m = FlexSN(model.core, model.num_inputs, model.num_states, model.num_outputs, backend="triton",
               example_inputs=(torch.zeros(SHAPE, dtype=dtype),) * (1 + model.num_states))
    x = (torch.randn(T, *SHAPE) + 0.8).to(dtype).requires_grad_()
    saved, out = _saved_bytes(m, x)
    plan = _plan(m)
    if mode == "stored":
        per_step = plan.held_bytes_per_step
        assert per_step == sum(dt.itemsize for dt in plan.extras) + len(plan.state_seqs) * dtype.itemsize
    else:
        per_step = len(plan.recompute_inputs) * dtype.itemsize  # just the input
    assert saved == per_step * T * N, (saved, per_step)
    # ... and the backward runs on what was kept: the gradient matches the torch backend's
    g = torch.randn(T, *SHAPE).to(dtype)
    (grad,) = torch.autograd.grad(out, x, g)
    ref_m = FlexSN(model.core, model.num_inputs, model.num_states, model.num_outputs, backend="torch")
    xr = x.detach().float().requires_grad_()
    (ref,) = torch.autograd.grad(ref_m(xr), xr, g.float())
    tol = 1e-5 if dtype == torch.float32 else 0.1
    assert (grad.float() - ref).abs().max().item() <= tol * max(1.0, ref.abs().max().item())


def test_stored_plan_bytes_per_neuron() -> None:
    """LIF keeps one fp32 stream (h) in fp32, h in bf16 + the spike mask (3 bytes) in bf16; ALIF adds its
    adaptation sequence. Recompute mode keeps the input alone."""
    expected = {("lif_hard", torch.float32): 4, ("lif_hard", torch.bfloat16): 3,
                ("alif", torch.float32): 8, ("alif", torch.bfloat16): 5}
    for (name, dtype), held in expected.items():
        model = MODELS[name]
        m = FlexSN(model.core, 1, model.num_states, 1, backend="triton",
                   example_inputs=(torch.zeros(4, dtype=dtype),) * (1 + model.num_states))
        plan = _plan(m)
        assert plan.held_bytes_per_step == held, (name, dtype)
        assert plan.recompute_inputs == (0,)


def test_auto_mode_recomputes_when_that_keeps_fewer_bytes(monkeypatch) -> None:
    monkeypatch.delenv("FLEXSN_BACKWARD", raising=False)
    lif = FlexSN(MODELS["lif_hard"].core, 1, 1, 1, backend="triton", example_inputs=(torch.zeros(4),) * 2)
    alif = FlexSN(MODELS["alif"].core, 1, 2, 1, backend="triton", example_inputs=(torch.zeros(4),) * 3)
    (h_lif,) = lif._kernels.handles.values()
    (h_alif,) = alif._kernels.handles.values()
    assert not ops.choose_recompute(h_lif)  # h (4 B) vs x (4 B): the stored plan reads less
    assert ops.choose_recompute(h_alif)  # a state sequence + h (8 B) vs x (4 B)
    monkeypatch.setenv("FLEXSN_BACKWARD", "recompute")
    assert ops.choose_recompute(h_lif)
    monkeypatch.setenv("FLEXSN_BACKWARD", "sometimes")
    with pytest.raises(ValueError, match="FLEXSN_BACKWARD"):
        ops.choose_recompute(h_lif)


def test_backward_refuses_a_call_without_a_buffer_the_plan_reads() -> None:
    """bench/gpu_sweep.py's bf16 'fp32x' variant (every extra kept exact) reads LIF's input and
    state sequence; the sweep passed no state sequence and the backward read T * N elements past
    the dummy pointer (an illegal address on the H200). run_backward now refuses such a call;
    given what the plan reads, the gradient is autograd's."""
    from reference import run_reference

    from flexsn_core import KernelSpec
    from flexsn_core.artifacts import build_artifacts
    from flexsn_core.codegen.kernels import generate_kernels
    from flexsn_core.runtime import KernelSet, run_backward, run_forward
    from flexsn_core.trace import trace_core

    model = MODELS["lif_hard"]
    spec = KernelSpec.from_core(model.core, 1, 1, 1, dtype=torch.bfloat16)
    gen = generate_kernels(trace_core(spec), round_extras=False)
    ks = KernelSet(build_artifacts(spec, targets=(), generated=gen).manifest, generated=gen)
    assert ks.plan.state_seqs == (0,) and ks.plan.inputs == (0,)
    xs, _, _ = model.make_inputs(T, (N,), torch.bfloat16, seed=2)
    g = torch.randn(T, N).to(torch.bfloat16)
    outs, sseqs, _, extras = run_forward(ks, xs, [None], store_state_seqs=False)
    with pytest.raises(ValueError, match="state sequence 0"):
        run_backward(ks, xs, [None], [], [None], None, extras, [g], [None], [None])
    with pytest.raises(ValueError, match="input 0"):
        run_backward(ks, [None], [None], [], [None], sseqs, extras, [g], [None], [None], shape=(T, N),
                     device=torch.device("cpu"))
    (grad,), _, _ = run_backward(ks, xs, [None], [], [None], sseqs, extras, [g], [None], [None])
    ref = run_reference(model.core, 1, xs, [torch.zeros(N).to(torch.bfloat16)], [], grads=([g], [None], [None]))
    (expected,) = ref["grad_inputs"]
    assert (grad.float() - expected.float()).abs().max().item() <= 0.05 * max(1.0, expected.abs().max().item())
