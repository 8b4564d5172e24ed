"""The scan contract is checked the same way by every backend (flexsn_core.contract)."""

from __future__ import annotations

import neurons
import pytest
import torch

from flexsn_core import FlexSN, FlexSNKernel, flex_sn_scan


def test_count_errors_read_the_same_on_every_path() -> None:
    with pytest.raises(ValueError, match="FlexSN HOP backend requires at least one input or state tensor"):
        FlexSN(neurons.lif_hard, 0, 0, 1, backend="hop", step_mode="s")
    with pytest.raises(ValueError, match="flex_sn_scan requires at least one input sequence to derive T"):
        flex_sn_scan(neurons.lif_hard, 0, 1, 1, torch.zeros(3))
    with pytest.raises(ValueError, match="Triton path.*requires at least one input sequence to derive T"):
        FlexSNKernel(lambda v: (v, v), 0, 1, 1)


def test_return_errors_read_the_same_on_every_path() -> None:
    def three(x, v):  # noqa: ANN001, ANN202
        return x, v, v

    with pytest.raises(ValueError, match=r"FlexSN core returned 3 values, but expected 2 \(= num_outputs"):
        FlexSN(three, 1, 1, 1)
    with pytest.raises(ValueError, match=r"flex_sn_scan core returned 3 values, but expected 2 \(= num_outputs"):
        flex_sn_scan(three, 1, 1, 1, torch.zeros(2, 3), torch.zeros(3))
    with pytest.raises(TypeError, match="flex_sn_scan core return #0 is"):
        flex_sn_scan(lambda x, v: (1.0, v), 1, 1, 1, torch.zeros(2, 3), torch.zeros(3))


def test_kernels_refuse_inputs_and_states_of_another_layout() -> None:
    """The kernels index every buffer by the first input's T and N: a smaller tensor would be overrun."""
    m = FlexSN(neurons.two_inputs, 2, 1, 2)
    x = torch.randn(4, 3, 5)
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"input sequence #1 is \(\(4, 3\), .*must match input #0 \(\(4, 3, 5\)"):
            m(x, torch.randn(4, 3))
        with pytest.raises(ValueError, match=r"input sequence #1 is .*torch.float16"):
            m(x, x.half())
        m.states = [torch.zeros(3, 4)]
        with pytest.raises(ValueError, match=r"state #0 is \(\(3, 4\).*one step of input #0 \(\(3, 5\)"):
            m(x, x)
        m.reset()
        m(x, x)  # the same layout runs
    k = FlexSNKernel(neurons.lif_hard, 1, 1, 1)
    with pytest.raises(ValueError, match="state #0"):
        k(torch.randn(2, 6), torch.zeros(5))
