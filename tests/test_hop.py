"""flex_sn_scan: the eager HigherOrderOperator scan."""

from __future__ import annotations

import neurons
import pytest
import torch

from flexsn_core import flex_sn_scan
from flexsn_core.hop import eager_scan, eager_scan_final_state


def smooth_core(x, v, w):
    """A differentiable core with a lifted (static) tensor, for gradcheck."""
    h = torch.tanh(v * w + x)
    return h * 2.0, 0.5 * v + h


def test_gradcheck_through_the_hop_with_lifted_tensor() -> None:
    T, n = 4, 3
    x = torch.randn(T, n, dtype=torch.double, requires_grad=True)
    v0 = torch.randn(n, dtype=torch.double, requires_grad=True)
    w = torch.randn(n, dtype=torch.double, requires_grad=True)

    def run(x, v0, w):  # noqa: ANN001, ANN202
        return flex_sn_scan(smooth_core, 1, 1, 1, x, v0, w)

    assert torch.autograd.gradcheck(run, (x, v0, w))


def test_matches_a_python_loop_and_final_state_variant() -> None:
    x = torch.randn(6, 4) + 0.5
    v0 = torch.zeros(4)
    y_seq, v_seq = flex_sn_scan(neurons.lif_hard, 1, 1, 1, x, v0)
    v = v0
    for t in range(6):
        y, v = neurons.lif_hard(x[t], v)
        assert torch.equal(y_seq[t], y) and torch.equal(v_seq[t], v)
    y2, v_final = eager_scan_final_state(neurons.lif_hard, 1, 1, 1, x, v0)
    assert torch.equal(y2, y_seq) and torch.equal(v_final, v_seq[-1])


def test_empty_sequence_uses_templates_without_running_the_core() -> None:
    def never(x, v):  # noqa: ANN001, ANN202
        raise AssertionError("core must not run for T == 0")

    x = torch.zeros(0, 2, 3)
    v0 = torch.ones(2, 3)
    y, v_seq = flex_sn_scan(never, 1, 1, 1, x, v0, output_template_specs=(((2, 3), torch.float16),))
    assert y.shape == (0, 2, 3) and y.dtype == torch.float16 and v_seq.shape == (0, 2, 3)
    y, v_final = eager_scan_final_state(never, 1, 1, 1, x, v0, output_template_specs=(((2, 3), torch.float32, torch.device("cpu")),))
    assert torch.equal(v_final, v0) and v_final is not v0
    with pytest.raises(ValueError, match="output templates"):
        eager_scan(never, 1, 1, 1, x, v0)


def test_argument_errors() -> None:
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="at least one input sequence"):
        eager_scan(neurons.lif_hard, 0, 1, 1, torch.zeros(2))
    with pytest.raises(ValueError, match="expected at least 2 tensor args"):
        eager_scan(neurons.lif_hard, 1, 1, 1, x)
    with pytest.raises(ValueError, match="leading dim 4, expected 3"):
        eager_scan(neurons.two_inputs, 2, 1, 2, x, torch.zeros(4, 2), torch.zeros(2))
    with pytest.raises(ValueError, match="cannot take 3"):
        eager_scan(neurons.lif_hard, 1, 1, 1, x, torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError, match="core returned 2 values, but expected 3"):
        eager_scan(lambda x, v: (x, v), 1, 1, 2, x, torch.zeros(2))
