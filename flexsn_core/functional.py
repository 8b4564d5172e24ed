"""Helpers for running modules over time (SpikingJelly's functional API).

Sequences are ``[T, batch, ...]`` unless the name says ``t_last``
(``[batch, ..., T]``). Exceptions raised by the wrapped modules propagate
unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Union

import torch
from torch import Tensor, nn

__all__ = [
    "multi_step_forward",
    "t_last_multi_step_forward",
    "chunk_multi_step_forward",
    "seq_to_ann_forward",
    "t_last_seq_to_ann_forward",
]

Modules = Union[nn.Module, Sequence[nn.Module], Callable[[Tensor], Tensor]]


def _apply(x: Tensor, modules: Modules) -> Tensor:
    if isinstance(modules, (list, tuple, nn.Sequential)):
        for m in modules:
            x = m(x)
        return x
    return modules(x)  # type: ignore[operator]


def multi_step_forward(x_seq: Tensor, single_step_module: Modules) -> Tensor:
    """Run single-step module(s) at each of the ``T`` steps of ``x_seq`` and stack the results."""
    return torch.stack([_apply(x_seq[t], single_step_module) for t in range(x_seq.shape[0])])


def t_last_multi_step_forward(x_seq: Tensor, single_step_module: Modules) -> Tensor:
    """:func:`multi_step_forward` for sequences whose time axis is the last one."""
    steps = [_apply(x_seq[..., t], single_step_module) for t in range(x_seq.shape[-1])]
    return torch.stack(steps, dim=-1)


def chunk_multi_step_forward(split_size: int, x_seq: Tensor, multi_step_module: nn.Module) -> Tensor:
    """Feed ``x_seq`` to a multi-step module in chunks of ``split_size`` steps, concatenating outputs.

    The module's states carry over between chunks, so the result equals one
    call on the whole sequence while peak memory follows the chunk size.
    """
    return torch.cat([multi_step_module(x) for x in torch.split(x_seq, split_size)], dim=0)


def seq_to_ann_forward(x_seq: Tensor, stateless_module: Modules) -> Tensor:
    """Run stateless module(s) on ``[T * batch, ...]`` at once and restore ``[T, batch, ...]``."""
    T, batch = x_seq.shape[0], x_seq.shape[1]
    y = _apply(x_seq.flatten(0, 1), stateless_module)
    return y.view(T, batch, *y.shape[1:])


def t_last_seq_to_ann_forward(x_seq: Tensor, stateless_module: Modules) -> Tensor:
    """Run a stateless module over every step of a ``[batch, ..., T]`` sequence in parallel (vmap)."""
    if isinstance(stateless_module, (list, tuple)) and not isinstance(stateless_module, nn.Sequential):
        return t_last_multi_step_forward(x_seq, stateless_module)
    return torch.vmap(stateless_module, in_dims=-1, out_dims=-1)(x_seq)
