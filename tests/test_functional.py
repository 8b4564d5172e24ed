"""The functional helpers of SpikingJelly's API."""

from __future__ import annotations

import neurons
import torch
from torch import nn

from flexsn_core import FlexSN
from flexsn_core.functional import (
    chunk_multi_step_forward,
    multi_step_forward,
    seq_to_ann_forward,
    t_last_multi_step_forward,
    t_last_seq_to_ann_forward,
)


def test_multi_step_forward_single_and_many_modules() -> None:
    lin, act = nn.Linear(3, 4), nn.ReLU()
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(multi_step_forward(x, lin), torch.stack([lin(x[t]) for t in range(5)]))
    torch.testing.assert_close(multi_step_forward(x, [lin, act]), act(lin(x)))
    torch.testing.assert_close(multi_step_forward(x, nn.Sequential(lin, act)), act(lin(x)))


def test_t_last_variants() -> None:
    lin = nn.Linear(3, 4)
    x = torch.randn(2, 3, 5)  # [batch, features, T]
    expected = torch.stack([lin(x[..., t]) for t in range(5)], dim=-1)
    torch.testing.assert_close(t_last_multi_step_forward(x, lin), expected)
    torch.testing.assert_close(t_last_seq_to_ann_forward(x, lin), expected)
    torch.testing.assert_close(t_last_seq_to_ann_forward(x, [lin]), expected)


def test_seq_to_ann_forward_flattens_time_and_batch() -> None:
    conv = nn.Conv2d(2, 3, 3, padding=1)
    x = torch.randn(4, 5, 2, 6, 6)
    y = seq_to_ann_forward(x, conv)
    assert y.shape == (4, 5, 3, 6, 6)
    torch.testing.assert_close(y[2], conv(x[2]))


def test_chunked_forward_equals_one_call_because_states_carry_over() -> None:
    x = torch.randn(10, 3, 4) + 0.5
    whole = FlexSN(neurons.lif_hard, 1, 1, 1)
    chunked = FlexSN(neurons.lif_hard, 1, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(chunk_multi_step_forward(3, x, chunked), whole(x))
