"""torch.compile(fullgraph=True) runs a FlexSN model with no graph break."""

from __future__ import annotations

import neurons
import pytest
import torch
from torch import nn

from flexsn_core import FlexSN


def _model(device: str = "cpu") -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 8), FlexSN(neurons.lif_hard, 1, 1, 1, example_inputs=(torch.zeros(8, device=device),) * 2),
        nn.Linear(8, 3),
    ).to(device)


def _reset(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, FlexSN):
            m.reset()


def _check(backend: str, device: str = "cpu") -> None:
    model = _model(device)
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    x = torch.randn(5, 4, 6, device=device)
    with torch.no_grad():
        _reset(model)
        expected = model(x)
        _reset(model)
        torch.testing.assert_close(compiled(x), expected)
    grads = []
    for m in (model, compiled):
        _reset(model)
        model.zero_grad()
        xg = x.clone().requires_grad_()
        m(xg).square().sum().backward()
        grads.append((xg.grad.clone(), model[0].weight.grad.clone()))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_aot_eager_fullgraph_inference_and_training() -> None:
    _check("aot_eager")


@pytest.mark.gpu
def test_inductor_fullgraph_on_gpu() -> None:
    _check("inductor", "cuda")


def test_inductor_fullgraph_on_cpu() -> None:
    """Inductor compiles the layers around the opaque FlexSN ops (C++ codegen on CPU)."""
    _check("inductor")


def _graph_targets(fn, *args) -> list[str]:  # noqa: ANN001
    from torch._dynamo import explain

    torch._dynamo.reset()
    explanation = explain(fn)(*args)
    assert explanation.graph_break_count == 0
    return [str(node.target) for graph in explanation.graphs for node in graph.graph.nodes]


def test_compiled_graphs_use_the_final_state_ops_and_no_zero_state_tensor() -> None:
    """What SpikingJelly checks of its own ops on CUDA (tests/upstream: those cases name its
    op namespace): no-grad inference without state sequences is one inference_final call
    from implicit zero states; training is one training call."""
    neuron = FlexSN(neurons.lif_hard, 1, 1, 1, example_inputs=(torch.zeros(8),) * 2).eval()
    x = torch.randn(4, 8)
    with torch.no_grad():
        targets = _graph_targets(neuron, x)
    assert targets.count("flexsn.inference_final") == 1, targets
    assert not any("zeros" in t or "full" in t for t in targets), targets  # zero states elided
    neuron.reset()
    targets = _graph_targets(lambda inp: neuron(inp).sum(), x.clone().requires_grad_())
    assert targets.count("flexsn.training") == 1, targets
