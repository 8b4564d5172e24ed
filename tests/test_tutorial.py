"""SpikingJelly's FlexSN tutorial flows, as written there, on every backend (issue #13).

The cores are the tutorial's (tests/surrogate_cores.py): the complicated LIF
with ``surrogate.ATan()`` in a closure, the minimal training example with
``surrogate.Sigmoid(alpha=4.0)``, and a closure-generated core; plus
``torch.compile(Sequential(Linear, FlexSN, Linear), fullgraph=True)``. CPU
runs use Triton's interpreter for the kernel backends; the ``gpu`` variants run
the same flows on CUDA (``pytest -m gpu`` on the GPU machine; skipped here).
"""

from __future__ import annotations

import pytest
import surrogate_cores as sc
import torch
from torch import nn

from flexsn_core import FlexSN

BACKENDS = ["torch", "hop", "triton", "inductor"]  # "inductor": the tutorial's label for the kernel path


def _device(gpu: bool) -> str:
    return "cuda" if gpu else "cpu"


def _complicated_lif(backend: str, device: str) -> None:
    core = sc.complicated_lif_core_generator(beta=0.5, gamma=0.8)  # spike_fn=surrogate.ATan()
    results = []
    for b in ("torch", backend):
        m = FlexSN(core, num_inputs=2, num_states=2, num_outputs=2, step_mode="m", backend=b).to(device)
        torch.manual_seed(1)
        x = (torch.randn(6, 4, 9, device=device) + 0.8).requires_grad_()
        y = torch.randn(6, 4, 9, device=device).requires_grad_()
        s1, s2 = m(x, y)
        (s1.sum() + 2 * s2.sum() + m.states[0].square().sum()).backward()
        results.append((s1, s2, x.grad, y.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def _training(backend: str, device: str) -> None:
    """A few SGD steps of Linear -> FlexSN(lif with Sigmoid(alpha=4.0)) -> Linear equal the torch backend's."""
    losses = {}
    for b in ("torch", backend):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 8), FlexSN(sc.lif_core_sg, 1, 1, 1, backend=b), nn.Linear(8, 2)).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        x = torch.randn(4, 3, 5, device=device) * 2
        target = torch.randn(4, 3, 2, device=device)
        losses[b] = []
        for _ in range(3):
            model[1].reset()
            opt.zero_grad()
            loss = (model(x) - target).square().mean()
            loss.backward()
            opt.step()
            losses[b].append(loss.item())
    assert losses[backend] == pytest.approx(losses["torch"], rel=1e-5, abs=1e-6)
    assert losses["torch"][-1] != losses["torch"][0]  # the surrogate gradient reached the first layer


def _closure_inference(backend: str, device: str) -> None:
    core = sc.lif_single_step_inference_closure(tau=4.0, v_th=0.5)
    x = torch.rand(8, 2, 16, device=device)
    with torch.no_grad():
        expected = FlexSN(core, 1, 1, 1, backend="torch")(x)
        got = FlexSN(core, 1, 1, 1, backend=backend).to(device)(x)
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


def _compiled_sequential(backend: str, device: str) -> None:
    """torch.compile(Sequential(Linear, FlexSN, Linear), fullgraph=True): no graph break, equal to eager."""
    def model() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(6, 8), FlexSN(sc.lif_core_sg, 1, 1, 1, backend=backend),
                             nn.Linear(8, 3)).to(device)

    x = torch.randn(5, 4, 6, device=device)
    torch._dynamo.reset()
    assert torch._dynamo.explain(model())(x).graph_break_count == 0
    torch._dynamo.reset()
    eager, compiled_model = model(), model()
    compiled = torch.compile(compiled_model, fullgraph=True, backend="aot_eager" if device == "cpu" else "inductor")
    xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    ye, yc = eager(xe), compiled(xc)
    torch.testing.assert_close(yc, ye, atol=1e-5, rtol=1e-5)
    ye.square().sum().backward()
    yc.square().sum().backward()
    torch.testing.assert_close(xc.grad, xe.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(compiled_model[0].weight.grad, eager[0].weight.grad, atol=1e-5, rtol=1e-4)


FLOWS = {
    "complicated_lif_atan": _complicated_lif,
    "training_sigmoid": _training,
    "closure_core": _closure_inference,
    "compile_sequential": _compiled_sequential,
}


# "inductor" runs the same kernels as "triton": on CPU, one flow checks the label.
CPU_CASES = [(flow, b) for flow in FLOWS for b in BACKENDS[:3]] + [("compile_sequential", "inductor")]


@pytest.mark.parametrize(("flow", "backend"), CPU_CASES)
def test_tutorial_flow_on_cpu(flow: str, backend: str) -> None:
    FLOWS[flow](backend, "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("flow", list(FLOWS))
def test_tutorial_flow_on_gpu(flow: str, backend: str) -> None:
    FLOWS[flow](backend, "cuda")
