"""Behaviours SpikingJelly's own FlexSN tests revealed (tests/upstream), checked here without SpikingJelly."""

from __future__ import annotations

import pytest
import torch

from flexsn_core import CoreSignatureError, FlexSN, flex_sn_scan
from flexsn_core.hop import eager_scan


def lif(x, v):  # noqa: ANN001, ANN201
    h = v + (x - v) / 2.0
    s = (h >= 1.0).to(h.dtype)
    return s, h * (1.0 - s)


def test_flex_sn_scan_wrong_arity_names_the_expected_count() -> None:
    x, v0, extra = torch.randn(4, 8), torch.zeros(8), torch.zeros(8)
    with pytest.raises(ValueError, match="expected 2 tensor args .* got 3: the core 'lif' takes 2 positional"):
        flex_sn_scan(lif, 1, 1, 1, x, v0, extra)


def test_arity_is_checked_for_an_empty_sequence() -> None:
    specs = (((8,), torch.float32),)
    with pytest.raises(ValueError, match="expected 2 tensor args"):
        eager_scan(lif, 1, 1, 1, torch.empty(0, 8), torch.zeros(8), torch.zeros(8), output_template_specs=specs)


def test_flexsn_checks_arity_at_construction() -> None:
    with pytest.raises(CoreSignatureError, match="expected 2 tensor args .* takes 3 positional"):
        FlexSN(lambda x, v, w: (x, v), 1, 1, 1, backend="hop")


def test_single_step_with_several_outputs_returns_a_tuple() -> None:
    m = FlexSN(lambda x, v: (x, x + 1, v + x), 1, 1, 2, step_mode="s", backend="torch")
    out = m(torch.zeros(3))
    assert isinstance(out, tuple) and len(out) == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"example_inputs": (torch.zeros(3),)}, "expected 2 example inputs"),
        ({"requires_grad": [True]}, "requires_grad must have 2 entries"),
        ({"requires_grad": [True, False, True]}, "requires_grad must have 2 entries"),
    ],
)
def test_wrong_lengths_are_value_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FlexSN(lif, 1, 1, 1, backend="triton", **kwargs)


def smooth(x, v):  # noqa: ANN001, ANN201
    return torch.sigmoid(x + v), x * 0.5 + v * 0.5


def test_triton_and_inductor_labels_give_the_same_gradients() -> None:
    grads = []
    for backend in ("triton", "inductor"):
        x = (torch.randn(4, 6, generator=torch.Generator().manual_seed(3)) + 1).requires_grad_()
        m = FlexSN(smooth, 1, 1, 1, backend=backend)
        m(x).sum().backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1], atol=0, rtol=0)
