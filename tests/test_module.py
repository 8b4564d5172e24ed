"""The FlexSN module on the Triton backend matches its PyTorch backend."""

from __future__ import annotations

import neurons
import torch

from flexsn_core import FlexSN


def _pair(core, ni, ns, no, **kw):
    return FlexSN(core, ni, ns, no, backend="triton", **kw), FlexSN(core, ni, ns, no, backend="torch", **kw)


def test_lif_inference_and_states_carry_over() -> None:
    fast, slow = _pair(neurons.lif_hard, 1, 1, 1)
    x = torch.randn(6, 2, 5) + 0.5
    with torch.no_grad():
        for _ in range(2):  # the second call starts from the first call's states
            assert torch.equal(fast(x), slow(x))
            assert torch.equal(fast.states[0], slow.states[0])
    fast.reset()
    assert fast.states is None


def test_training_gradients_match_including_static_parameter() -> None:
    w = torch.nn.Parameter(torch.randn(2, 5) * 0.3)
    fast, slow = _pair(neurons.plif, 1, 1, 1, static_inputs=(w,), store_state_seqs=True)
    x1 = (torch.randn(7, 2, 5) + 0.5).requires_grad_()
    x2 = x1.detach().clone().requires_grad_()
    y1, y2 = fast(x1), slow(x2)
    assert torch.allclose(y1, y2)
    assert torch.allclose(fast.state_seqs[0], slow.state_seqs[0], atol=1e-6)
    (y1.sum() + fast.states[0].sum()).backward()
    g_fast = (x1.grad.clone(), w.grad.clone())
    w.grad = None
    (y2.sum() + slow.states[0].sum()).backward()
    assert torch.allclose(g_fast[0], x2.grad, atol=1e-5)
    assert torch.allclose(g_fast[1], w.grad, atol=1e-5)
