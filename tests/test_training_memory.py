"""What a training step keeps alive around FlexSN's backward (issue #14: peak memory).

A memory module keeps its final states, which no loss reaches in a usual
training step: their gradient must arrive as "absent" (a flag to the kernel),
not as a zeros tensor the size of a step that autograd materializes and keeps
for the whole backward. A memory module's fresh zero states require no
gradient: none is allocated or computed for them. Gradients stay those of the
torch backend.
"""

from __future__ import annotations

import neurons
import pytest
import torch

from flexsn_core import FlexSN, ops

T, B, C = 5, 2, 7


class _Spy:
    """Wraps ``run_backward`` inside the ops: records what each backward call was given."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.real = ops.run_backward

    def __call__(self, *args, **kwargs):
        self.calls.append({"grad_finals": args[9], "want_init": kwargs.get("want_init", True)})
        return self.real(*args, **kwargs)


def _pair() -> tuple[FlexSN, FlexSN]:
    example = (torch.zeros(C),) * 3
    fast = FlexSN(neurons.alif, 1, 2, 1, example_inputs=example, backend="triton")
    slow = FlexSN(neurons.alif, 1, 2, 1, example_inputs=example, backend="torch")
    for m in (fast, slow):
        m.step_mode = "m"
    return fast, slow


def _grad(module, x: torch.Tensor, extra_loss=None) -> torch.Tensor:  # noqa: ANN001
    x = x.clone().requires_grad_()
    module.reset()
    loss = module(x).sum()
    if extra_loss is not None:
        loss = loss + extra_loss(module)
    loss.backward()
    return x.grad


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_unused_final_states_and_fresh_states_cost_no_gradient_buffers(monkeypatch, compiled: bool) -> None:
    spy = _Spy()
    monkeypatch.setattr(ops, "run_backward", spy)
    fast, slow = _pair()
    x = torch.randn(T, B, C, generator=torch.Generator().manual_seed(3)) * 2.0
    forward = fast
    if compiled:
        torch._dynamo.reset()
        forward = torch.compile(fast, fullgraph=True)
        forward.reset = fast.reset  # type: ignore[attr-defined]
    got = _grad(forward, x)
    want = _grad(slow, x)
    torch.testing.assert_close(got, want)
    assert spy.calls, "the kernel backward did not run"
    call = spy.calls[-1]
    assert call["want_init"] is False  # fresh zero states: no initial-state gradients
    if not compiled:
        # eager: absent, not zeros (under torch.compile AOTAutograd materializes its tangents itself)
        assert all(g is None for g in call["grad_finals"]), call["grad_finals"]


def test_final_states_in_the_loss_and_states_that_require_grad_still_get_gradients(monkeypatch) -> None:
    spy = _Spy()
    monkeypatch.setattr(ops, "run_backward", spy)
    fast, slow = _pair()
    x = torch.randn(T, B, C, generator=torch.Generator().manual_seed(4)) * 2.0
    grads = []
    for m in (fast, slow):
        m.reset()
        v0 = torch.full((B, C), 0.3, requires_grad=True)
        m.states = [v0, torch.zeros(B, C)]
        xg = x.clone().requires_grad_()
        (m(xg).sum() + (m.states[1] ** 2).sum()).backward()
        grads.append((xg.grad, v0.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])
    call = spy.calls[-1]
    assert call["want_init"] is True
    assert call["grad_finals"][0] is None and call["grad_finals"][1] is not None
