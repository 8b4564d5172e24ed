"""Checks that need a CUDA GPU (skipped elsewhere; run on the GPU machine with `pytest -m gpu`)."""

from __future__ import annotations

import neurons
import pytest
import torch
from reference import run_reference

from flexsn_core import FlexSN, counters

pytestmark = pytest.mark.gpu

CASES = [
    (neurons.lif_hard, 1, 1, 1),
    (neurons.alif, 1, 2, 1),
    (neurons.two_inputs, 2, 1, 2),
    (neurons.synaptic_refractory, 1, 3, 1),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0].__name__)
def test_flexsn_on_cuda_matches_torch(case, dtype) -> None:  # noqa: ANN001
    core, ni, ns, no = case
    examples = tuple(torch.zeros(5, device="cuda", dtype=dtype) for _ in range(ni + ns))
    fast = FlexSN(core, ni, ns, no, example_inputs=examples)
    xs = [(torch.randn(8, 1000, 33, device="cuda") + 0.5).to(dtype) for _ in range(ni)]
    inits = [torch.zeros(1000, 33, device="cuda", dtype=dtype) for _ in range(ns)]
    g_outs = [torch.ones(8, 1000, 33, device="cuda", dtype=dtype) for _ in range(no)]
    # The plain PyTorch loop (for bf16: each step in fp32, stored in bf16, as the kernels do).
    ref = run_reference(core, no, xs, inits, [], grads=(g_outs, [None] * ns, [None] * ns))
    xg = [x.clone().requires_grad_() for x in xs]
    ys = fast(*xg)
    ys = [ys] if isinstance(ys, torch.Tensor) else list(ys)
    for a, b in zip(ys, ref["outs"]):
        assert (a.detach() != b).float().mean() < 1e-4  # spikes may flip on ulp-level ties
    got = torch.autograd.grad([y for y in ys], xg, g_outs)
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    for a, b in zip(got, ref["grad_inputs"]):
        off = (a.float() - b.float()).abs() > tol * b.float().abs().max()
        # A spike that flips on an ulp-level tie (exp and the sigmoid's reciprocal are
        # approximate on the GPU) changes that neuron's gradient path: allow a handful.
        assert off.float().mean() < 1e-3, f"{off.float().mean().item():.2e} of gradients differ"


def test_second_module_with_same_core_builds_nothing() -> None:
    FlexSN(neurons.lif_soft, 1, 1, 1, example_inputs=(torch.zeros(4, device="cuda"),) * 2)
    before = counters()
    FlexSN(neurons.lif_soft, 1, 1, 1, example_inputs=(torch.zeros(4, device="cuda"),) * 2)
    after = counters()
    assert after["traces"] == before["traces"] and after["compiles"] == before["compiles"]
