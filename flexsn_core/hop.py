"""``flex_sn_scan``: the FlexSN time-step scan as a HigherOrderOperator.

    flex_sn_scan(core, num_inputs, num_states, num_outputs, *flat_args,
                 output_template_specs=None) -> (*output_seqs, *state_seqs)

``flat_args`` are ``num_inputs`` input sequences ``[T, ...]``, then
``num_states`` initial states, then any lifted tensors (static inputs, or
tensors a traced core closed over), passed unchanged to ``core`` at every
step. The eager implementation is a Python loop; autograd flows through it
naturally (indexing and ``torch.stack`` are differentiable), which
``gradcheck`` verifies. When ``T == 0`` no core runs: outputs are built from
``output_template_specs`` (``(shape, dtype)`` or ``(shape, dtype, device)``
per output) and state sequences are empty.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, Union

import torch
from torch._ops import HigherOrderOperator

from .contract import as_tuple, check_counts, check_returns

__all__ = ["flex_sn_scan", "FlexSNScan", "eager_scan", "eager_scan_final_state", "OutputTemplateSpecs"]

OutputTemplateSpec = Union[
    tuple[Sequence[int], torch.dtype],
    tuple[Sequence[int], torch.dtype, torch.device],
]
OutputTemplateSpecs = Sequence[OutputTemplateSpec]


class FlexSNScan(HigherOrderOperator):
    """HigherOrderOperator running a single-step core over a leading time axis."""

    def __init__(self) -> None:
        super().__init__("flex_sn_scan")

    def __call__(
        self,
        core_fn: Callable[..., Any],
        num_inputs: int,
        num_states: int,
        num_outputs: int,
        *flat_args: torch.Tensor,
        output_template_specs: OutputTemplateSpecs | None = None,
    ) -> tuple[torch.Tensor, ...]:
        return super().__call__(
            core_fn, num_inputs, num_states, num_outputs, *flat_args, output_template_specs=output_template_specs
        )


flex_sn_scan = FlexSNScan()


def _check_arity(core_fn: Callable[..., Any], total: int, expected: int, num_inputs: int, num_states: int) -> None:
    target = core_fn.forward if isinstance(core_fn, torch.nn.Module) else core_fn
    try:
        inspect.signature(target).bind(*range(total))
    except TypeError as exc:
        raise ValueError(
            f"flex_sn_scan expected a core taking {expected} tensor args (num_inputs={num_inputs} + "
            f"num_states={num_states}) plus {total - expected} lifted ones, but it cannot take {total}: {exc}"
        ) from None
    except ValueError:  # builtins without a signature
        pass


def _split(
    core_fn: Callable[..., Any], num_inputs: int, num_states: int, flat_args: Sequence[torch.Tensor]
) -> tuple[tuple[torch.Tensor, ...], list[torch.Tensor], tuple[torch.Tensor, ...], int]:
    expected = num_inputs + num_states
    check_counts("flex_sn_scan", num_inputs, num_states)
    if len(flat_args) < expected:
        raise ValueError(
            f"flex_sn_scan expected at least {expected} tensor args "
            f"(num_inputs={num_inputs} + num_states={num_states}), got {len(flat_args)}"
        )
    inputs = tuple(flat_args[:num_inputs])
    states = list(flat_args[num_inputs:expected])
    lifted = tuple(flat_args[expected:])
    T = inputs[0].shape[0]
    for i, x in enumerate(inputs):
        if x.shape[0] != T:
            raise ValueError(f"input {i} has leading dim {x.shape[0]}, expected {T}")
    if T > 0:
        _check_arity(core_fn, len(flat_args), expected, num_inputs, num_states)
    return inputs, states, lifted, T


def empty_outputs(
    inputs: Sequence[torch.Tensor], num_outputs: int, output_template_specs: OutputTemplateSpecs | None
) -> tuple[torch.Tensor, ...]:
    """Zero-length output sequences for ``T == 0`` (no core call)."""
    if num_outputs == 0:
        return ()
    if output_template_specs is None:
        raise ValueError(
            "an empty sequence (T == 0) needs output templates to build output shapes without "
            "running the core: pass example_outputs (FlexSN) or output_template_specs"
        )
    if len(output_template_specs) != num_outputs:
        raise ValueError(f"expected {num_outputs} output template specs, got {len(output_template_specs)}")
    outs = []
    for spec in output_template_specs:
        shape, dtype = spec[0], spec[1]
        device = spec[2] if len(spec) > 2 else inputs[0].device  # type: ignore[misc]
        outs.append(torch.empty((0, *shape), dtype=dtype, device=device))
    return tuple(outs)


def _run(core_fn, num_inputs, num_states, num_outputs, flat_args, output_template_specs, keep_seqs):  # noqa: ANN001, ANN202
    inputs, states, lifted, T = _split(core_fn, num_inputs, num_states, flat_args)
    if T == 0:
        outs = empty_outputs(inputs, num_outputs, output_template_specs)
        if keep_seqs:
            return (*outs, *(s.new_empty((0, *s.shape)) for s in states))
        return (*outs, *(s.clone() for s in states))
    out_buffers: list[list[torch.Tensor]] = [[] for _ in range(num_outputs)]
    state_buffers: list[list[torch.Tensor]] = [[] for _ in range(num_states)]
    for t in range(T):
        results = as_tuple(core_fn(*(x[t] for x in inputs), *states, *lifted))
        check_returns("flex_sn_scan", results, num_outputs, num_states)
        for i in range(num_outputs):
            out_buffers[i].append(results[i])
        states = list(results[num_outputs:])
        if keep_seqs:
            for j, s in enumerate(states):
                state_buffers[j].append(s)
    outs = tuple(torch.stack(b) for b in out_buffers)
    if keep_seqs:
        return (*outs, *(torch.stack(b) for b in state_buffers))
    return (*outs, *states)


def eager_scan(
    core_fn: Callable[..., Any],
    num_inputs: int,
    num_states: int,
    num_outputs: int,
    *flat_args: torch.Tensor,
    output_template_specs: OutputTemplateSpecs | None = None,
) -> tuple[torch.Tensor, ...]:
    """Python time loop: ``(*output_seqs, *state_seqs)``."""
    return _run(core_fn, num_inputs, num_states, num_outputs, flat_args, output_template_specs, True)


def eager_scan_final_state(
    core_fn: Callable[..., Any],
    num_inputs: int,
    num_states: int,
    num_outputs: int,
    *flat_args: torch.Tensor,
    output_template_specs: OutputTemplateSpecs | None = None,
) -> tuple[torch.Tensor, ...]:
    """Python time loop keeping only final states: ``(*output_seqs, *final_states)``.

    With ``T == 0`` the initial states are cloned into the final states.
    """
    return _run(core_fn, num_inputs, num_states, num_outputs, flat_args, output_template_specs, False)


# The HOP dispatches through Autograd even for tensors that need no grad;
# re-entering the eager loop there builds an ordinary per-step autograd graph.
flex_sn_scan.py_impl(torch._C.DispatchKey.CompositeExplicitAutograd)(eager_scan)
flex_sn_scan.py_impl(torch._C.DispatchKey.Autograd)(eager_scan)
