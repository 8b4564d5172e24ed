"""Under torch.compile a FlexSN layer's input is recomputed in the backward, not saved (flexsn_core.remat).

A BatchNorm output feeding FlexSN is a pointwise chain over the BatchNorm
input, which BatchNorm's backward keeps anyway; the Inductor pass tags that
chain so the partitioner recomputes it, which saves one full tensor per layer
(issue #14: what a compiled plain-PyTorch loop saves). A chain whose root the
backward would not keep is left alone.
"""

from __future__ import annotations

import neurons
import pytest
import torch
from torch import nn
from torch._functorch.aot_autograd import aot_module_simplified
from torch._functorch.partitioners import min_cut_rematerialization_partition
from torch._inductor.decomposition import select_decomp_table
from functorch.compile import make_boxed_func

from flexsn_core import FlexSN, remat

T, B, C = 4, 3, 16


class _Net(nn.Module):
    """Linear -> BatchNorm (time folded into the batch) -> FlexSN -> Linear, or a plain
    affine map instead of BatchNorm (``norm=False``: its root, the Linear output, is not
    kept by any backward)."""

    def __init__(self, norm: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(6, C), nn.Linear(C, 3)
        self.bn = nn.BatchNorm1d(C) if norm else None
        self.neuron = FlexSN(neurons.lif_hard, 1, 1, 1, example_inputs=(torch.zeros(C),) * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x.flatten(0, 1))
        h = self.bn(h) if self.bn is not None else h * 2.0 + 1.0
        return self.fc2(self.neuron(h.unflatten(0, (T, B))))


def _boxed(gm: torch.fx.GraphModule, _example_inputs: list) -> object:
    return make_boxed_func(gm)


def _marked_in_joint_graph(net: nn.Module) -> list[int]:
    counts: list[int] = []

    def partition(joint: torch.fx.GraphModule, inputs, **kwargs):  # noqa: ANN001, ANN202
        counts.append(remat.mark_recomputable_inputs(joint.graph))
        return min_cut_rematerialization_partition(joint, inputs, **kwargs)

    def backend(gm: torch.fx.GraphModule, example_inputs):  # noqa: ANN001, ANN202
        # Inductor's decompositions: BatchNorm becomes the pointwise ops the pass looks for
        return aot_module_simplified(gm, example_inputs, fw_compiler=_boxed, bw_compiler=_boxed,
                                     partition_fn=partition, decompositions=select_decomp_table())

    torch._dynamo.reset()
    torch.compile(net, backend=backend, fullgraph=True)(torch.randn(T, B, 6)).sum().backward()
    return counts


def test_the_pass_marks_a_batchnorm_output_and_leaves_other_chains_alone() -> None:
    assert _marked_in_joint_graph(_Net(norm=True)) == [1]
    # h * 2 + 1 over a Linear output: recomputing would make the partitioner keep the
    # Linear output instead, which no backward reads: no gain, so no mark.
    assert _marked_in_joint_graph(_Net(norm=False)) == [0]


def test_the_pass_is_installed_in_inductor_and_chains_a_pass_already_there(monkeypatch) -> None:
    from torch._inductor import config

    assert isinstance(config.joint_custom_post_pass, remat.RecomputeFlexSNInputs)
    seen: list[str] = []

    class Theirs(torch._inductor.custom_graph_pass.CustomGraphPass):
        def __call__(self, graph: torch.fx.Graph) -> None:
            seen.append("theirs")

        def uuid(self) -> str:
            return "theirs-1"

    with config.patch(joint_custom_post_pass=Theirs()):
        remat.install()
        ours = config.joint_custom_post_pass
    assert isinstance(ours, remat.RecomputeFlexSNInputs)
    ours(torch.fx.Graph())
    assert seen == ["theirs"]
    assert ours.uuid()[-1] == "theirs-1"
    on = ours.uuid()
    monkeypatch.setenv("FLEXSN_COMPILE_REMAT", "0")
    assert ours.uuid() != on  # the setting is part of Inductor's cache key


def _saved_bytes_and_grads(compiled: nn.Module, net: nn.Module, x: torch.Tensor) -> tuple[int, list[torch.Tensor]]:
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    net.neuron.reset()
    net.zero_grad()
    xg = x.clone().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = compiled(xg)
    out.square().sum().backward()
    return sum(storages.values()), [xg.grad, net.fc1.weight.grad, net.bn.weight.grad]


def test_inductor_recomputes_the_flexsn_input_and_gradients_stay_exact(monkeypatch) -> None:
    """End to end through Inductor (C++ on CPU): one [T, B, C] fp32 tensor less is saved,
    and the gradients equal the eager torch backend's."""
    x = torch.randn(T, B, 6)
    net = _Net()
    net.neuron.backend = "torch"
    _, expected = _saved_bytes_and_grads(net, net, x)
    expected = [g.clone() for g in expected]
    net.neuron.backend = "triton"
    saved = {}
    for setting in ("0", "1"):
        monkeypatch.setenv("FLEXSN_COMPILE_REMAT", setting)
        torch._dynamo.reset()
        compiled = torch.compile(net, backend="inductor", fullgraph=True)
        saved[setting], grads = _saved_bytes_and_grads(compiled, net, x)
        for got, want in zip(grads, expected):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    # one [T, B, C] fp32 tensor fewer, give or take a per-channel statistic kept instead
    assert 0 <= T * B * C * 4 - (saved["0"] - saved["1"]) <= 2 * C * 4, saved
