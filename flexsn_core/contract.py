"""The scan contract, checked in one place for every backend.

A core maps one time step: ``core(*inputs, *states, *statics) -> (*outputs,
*new_states)``. ``FlexSN`` (every backend), ``FlexSNKernel``, ``flex_sn_scan``
and the custom ops check the parts of that contract they rely on through these
functions, so a mistake reads the same wherever it is caught. ``who`` names the
caller in the message (``"FlexSN"``, ``"flex_sn_scan"``, ...).

| check | where |
| --- | --- |
| :func:`check_counts` | FlexSN (all backends), FlexSNKernel, flex_sn_scan |
| :func:`check_returns` | construction of a kernel backend (one probe step), every step of flex_sn_scan |
| :func:`validate_examples` | construction of a kernel backend: one probe step on small CPU tensors |
| :func:`check_call_args` | ``FlexSN.kernel``, ``FlexSNKernel.__call__`` |
| :func:`check_step_tensors` | every kernel launch (custom ops): inputs and states share one per-step layout |
| :func:`output_templates` | ``example_outputs`` of FlexSN |
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .spec import SUPPORTED_DTYPES

__all__ = [
    "KERNEL_PATH",
    "as_tuple",
    "broadcast_shape",
    "check_counts",
    "check_returns",
    "check_call_args",
    "check_step_tensors",
    "validate_examples",
    "output_templates",
    "check_outputs_match",
]

#: how messages name the kernel backends
KERNEL_PATH = "FlexSN Triton path (backend='triton'/'inductor')"


def as_tuple(result: Any) -> tuple[Any, ...]:
    return (result,) if isinstance(result, torch.Tensor) else tuple(result)


def broadcast_shape(*shapes: Sequence[int]) -> tuple[int, ...]:
    """NumPy broadcasting of shapes (torch.broadcast_shapes imports sympy: half a second)."""
    ndim = max(len(s) for s in shapes)
    result = [1] * ndim
    for shape in shapes:
        for i, size in enumerate(shape, start=ndim - len(shape)):
            if size != 1:
                if result[i] not in (1, size):
                    raise ValueError(f"shapes {[tuple(s) for s in shapes]} do not broadcast")
                result[i] = size
    return tuple(result)


def check_counts(who: str, num_inputs: int, num_states: int) -> None:
    """At least one tensor, and at least one input sequence (it gives T)."""
    if num_inputs + num_states == 0:
        raise ValueError(f"{who} requires at least one input or state tensor.")
    if num_inputs == 0:
        raise ValueError(f"{who} requires at least one input sequence to derive T.")


def check_returns(who: str, returns: Sequence[Any], num_outputs: int, num_states: int) -> None:
    """A step returns ``num_outputs + num_states`` tensors."""
    expected = num_outputs + num_states
    if len(returns) != expected:
        raise ValueError(
            f"{who} core returned {len(returns)} values, but expected {expected} (= num_outputs + num_states)."
        )
    for i, tensor in enumerate(returns):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{who} core return #{i} is {type(tensor)!r}; scan backends require tensor outputs.")


def check_call_args(where: str, args: Sequence[Any], expected: int, detail: str) -> None:
    """``expected`` positional tensors."""
    if len(args) != expected:
        raise ValueError(f"{where} expected {expected} tensors ({detail}), but got {len(args)}.")
    for i, arg in enumerate(args):
        if not isinstance(arg, torch.Tensor):
            raise TypeError(f"{where} expected tensor arguments, but arg #{i} is {type(arg).__name__}.")


def check_step_tensors(who: str, inputs: Sequence[torch.Tensor], states: Sequence[torch.Tensor]) -> None:
    """Every input sequence is shaped like the first, every state like one of its steps.

    The kernels index every buffer with the first input's ``T`` and element
    count, so a smaller tensor would be read or written out of bounds.
    """
    # Per call on the eager path: device compared by index, the step shape made only if needed.
    x0 = inputs[0]
    dtype, where = x0.dtype, x0.get_device()
    for i in range(1, len(inputs)):
        x = inputs[i]
        if x.shape != x0.shape or x.dtype != dtype or x.get_device() != where:
            raise ValueError(
                f"{who}: input sequence #{i} is ({tuple(x.shape)}, {x.dtype}, {x.device}); every input "
                f"sequence must match input #0 ({tuple(x0.shape)}, {dtype}, {x0.device})."
            )
    if states:
        step = x0.shape[1:]
        for j, s in enumerate(states):
            if s.shape != step or s.dtype != dtype or s.get_device() != where:
                raise ValueError(
                    f"{who}: state #{j} is ({tuple(s.shape)}, {s.dtype}, {s.device}); every state must be "
                    f"one step of input #0 ({tuple(step)}, {dtype}, {x0.device})."
                )


def validate_examples(
    who: str,
    core: Callable[..., Any],
    num_inputs: int,
    num_states: int,
    num_outputs: int,
    example_inputs: Sequence[torch.Tensor] | None,
    statics: Sequence[torch.Tensor],
    default_device: torch.device,
) -> tuple[torch.Tensor, ...]:
    """The checks SpikingJelly's Triton path makes, running the core once; returns the examples.

    Without ``example_inputs`` one step of a neuron is a zeros tensor on
    ``default_device`` broadcast with the statics (a per-neuron parameter fixes
    the shape).
    """
    check_counts(who, num_inputs, num_states)
    if example_inputs is None:
        shape = broadcast_shape((1,), *(s.shape for s in statics))
        examples = tuple(torch.zeros(shape, device=default_device) for _ in range(num_inputs + num_states))
    else:
        examples = tuple(x.detach().clone() for x in example_inputs)
        if len(examples) != num_inputs + num_states:
            raise ValueError(
                f"FlexSN expected {num_inputs + num_states} example inputs (num_inputs + num_states), "
                f"got {len(examples)}."
            )
    first = examples[0]
    for i, tensor in enumerate(examples[1:], start=1):
        if tensor.numel() != first.numel():
            raise ValueError(
                f"{who} currently requires every example input and state tensor to have the same number of "
                f"elements as the first example tensor ({first.numel()}), but example #{i} has "
                f"{tensor.numel()} elements."
            )
        if tensor.dtype != first.dtype:
            raise ValueError(
                f"{who} currently requires every example input and state tensor to match the first example "
                f"tensor's dtype ({first.dtype}), but example #{i} has dtype {tensor.dtype}."
            )
    if first.dtype not in SUPPORTED_DTYPES.values():
        raise ValueError(f"FlexSN Triton path supports float32, float16 and bfloat16 tensors, got {first.dtype}.")
    with torch.no_grad():
        # Run the core once on CPU zeros (big examples shrunk to the smallest shape the
        # statics allow: a core is elementwise): the same counts, shapes and dtypes,
        # without big allocations or loading GPU kernels at construction.
        shape = first.shape
        if first.numel() > 1 << 16:
            shape = broadcast_shape((1,) * first.dim(), *(s.shape for s in statics))
        probe = torch.zeros(shape, dtype=first.dtype)
        probes = [torch.zeros(shape, dtype=x.dtype) for x in examples]
        returns = as_tuple(core(*probes, *(s.detach().cpu() for s in statics)))
    check_returns("FlexSN", returns, num_outputs, num_states)
    for i, tensor in enumerate(returns):
        if tensor.shape != probe.shape:
            raise ValueError(
                f"{who} currently requires every per-step output and updated state to have the same shape as "
                f"the first example tensor {tuple(probe.shape)}, but return #{i} has shape {tuple(tensor.shape)}."
            )
        if tensor.dtype != probe.dtype or tensor.device != probe.device:
            raise ValueError(
                f"{who} currently requires every per-step output and updated state to match the first example "
                f"tensor's dtype/device ({probe.dtype}, {probe.device}), but return #{i} is "
                f"({tensor.dtype}, {tensor.device})."
            )
    return examples


OutputTemplates = tuple[tuple[tuple[int, ...], torch.dtype, torch.device], ...]


def output_templates(num_outputs: int, example_outputs: Sequence[torch.Tensor] | None) -> OutputTemplates | None:
    """``(shape, dtype, device)`` per example output (used for ``T == 0``), checked."""
    if example_outputs is None:
        return None
    if len(example_outputs) != num_outputs:
        raise ValueError(f"FlexSN expected {num_outputs} example output tensors, but got {len(example_outputs)}.")
    specs = []
    for i, tensor in enumerate(example_outputs):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"FlexSN example output #{i} is {type(tensor)!r}; expected a tensor.")
        specs.append((tuple(tensor.shape), tensor.dtype, tensor.device))
    return tuple(specs)


def check_outputs_match(who: str, templates: OutputTemplates, first: torch.Tensor) -> None:
    """Kernel backends: every example output has the per-step shape and dtype of the first example input."""
    for i, (shape, dtype, _) in enumerate(templates):
        if tuple(shape) != tuple(first.shape) or dtype != first.dtype:
            raise ValueError(
                f"{who} requires example_outputs to match the first example input's per-step shape and dtype "
                f"({tuple(first.shape)}, {first.dtype}), but example output #{i} is ({tuple(shape)}, {dtype})."
            )
