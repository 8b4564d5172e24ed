"""Checks that need a CUDA GPU (skipped elsewhere; run on the GPU machine with `pytest -m gpu`)."""

from __future__ import annotations

import neurons
import pytest
import torch

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
    slow = FlexSN(core, ni, ns, no, backend="torch")
    xs = [(torch.randn(8, 1000, 33, device="cuda") + 0.5).to(dtype).requires_grad_() for _ in range(ni)]
    grads = []
    for m in (fast, slow):
        ys = m(*xs)
        ys = [ys] if isinstance(ys, torch.Tensor) else ys
        grads.append(torch.autograd.grad(sum(y.float().sum() for y in ys), xs))
        if m is fast:
            fast_out = [y.detach() for y in ys]
        else:
            for a, b in zip(fast_out, ys):
                assert (a != b.detach()).float().mean() < 1e-4  # spikes may flip on ulp-level ties
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    for a, b in zip(*grads):
        assert ((a.float() - b.float()).abs().max() / b.float().abs().max()) < tol


def test_second_module_with_same_core_builds_nothing() -> None:
    FlexSN(neurons.lif_soft, 1, 1, 1, example_inputs=(torch.zeros(4, device="cuda"),) * 2)
    before = counters()
    FlexSN(neurons.lif_soft, 1, 1, 1, example_inputs=(torch.zeros(4, device="cuda"),) * 2)
    after = counters()
    assert after["traces"] == before["traces"] and after["compiles"] == before["compiles"]
