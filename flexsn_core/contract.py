"""The scan contract, checked in one place for every backend.

A core maps one time step: ``core(*inputs, *states, *statics) -> (*outputs,
*new_states)``. ``FlexSN`` (every backend), ``FlexSNKernel``, ``flex_sn_scan``
and the custom ops check the parts of that contract they rely on through these
functions, so a mistake reads the same wherever it is caught. ``who`` names the
caller in the message (``"FlexSN"``, ``"flex_sn_scan"``, ...).

| check | where |
| --- | --- |
| :func:`check_counts` | FlexSN (all backends), FlexSNKernel, flex_sn_scan |
| :func:`check_capture` | construction of a kernel backend, before the probe step |
| :func:`check_returns` | construction of a kernel backend (one probe step), every step of flex_sn_scan |
| :func:`validate_examples` | construction of a kernel backend: one probe step on small CPU tensors |
| :func:`check_call_args` | ``FlexSN.kernel``, ``FlexSNKernel.__call__`` |
| :func:`check_scan_call` | every multi-step call, before anything runs: FlexSN forward on every backend (torch and hop paths), ``FlexSN.kernel``, ``FlexSNKernel``, the custom ops (real and fake implementations) |
| :func:`cast_returns` | every step of FlexSN's torch and hop paths (kernels cast in their traced graph) |
| :func:`output_templates` | ``example_outputs`` of FlexSN |

Errors about the core are :class:`~flexsn_core.errors.CoreSignatureError`
(a ``ValueError``) or :class:`~flexsn_core.errors.CoreReturnTypeError` (also a
``TypeError``), as the README's error table says; errors about the tensors of a
call are plain ``ValueError``s whose text is the same on every path.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .capture import capture_core
from .errors import CoreReturnTypeError, CoreSignatureError, CoreSourceError
from .spec import SUPPORTED_DTYPES

__all__ = [
    "KERNEL_PATH",
    "as_tuple",
    "broadcast_shape",
    "check_counts",
    "check_returns",
    "check_call_args",
    "check_arity",
    "check_capture",
    "check_scan_call",
    "cast_returns",
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
        raise CoreSignatureError(
            f"{who} core returned {len(returns)} values, but expected {expected} (= num_outputs + num_states)."
        )
    for i, tensor in enumerate(returns):
        if not isinstance(tensor, torch.Tensor):
            raise CoreReturnTypeError(
                f"{who} core return #{i} is {type(tensor)!r}; scan backends require tensor outputs."
            )


def check_arity(who: str, core: Callable[..., Any], num_args: int, detail: str) -> None:
    """The core can be called with ``num_args`` positional tensors (else CoreSignatureError)."""
    try:
        signature = inspect.signature(core)
    except (TypeError, ValueError):  # builtins without a signature: the call itself will tell
        return
    try:
        signature.bind(*range(num_args))
    except TypeError as exc:
        name = getattr(core, "__name__", type(core).__name__)
        raise CoreSignatureError(
            f"{who}: the core {name}{signature} cannot take {num_args} positional arguments ({detail}): {exc}"
        ) from None


def check_capture(core: Callable[..., Any]) -> None:
    """Raise the CoreCaptureError a kernel build would raise, before the core runs on examples.

    A captured non-scalar tensor broadcasts the probe step to its own shape,
    which validation would report as a confusing shape mismatch (issue #11). A
    core whose source cannot be read (a lambda) is reported when kernels are
    built; the HOP fallback runs it meanwhile.
    """
    try:
        capture_core(core)  # surrogates included: they are data the spec carries
    except CoreSourceError:
        pass


def cast_returns(returns: tuple[Any, ...], dtype: torch.dtype) -> tuple[Any, ...]:
    """Floating-point returns of another dtype cast to ``dtype``.

    ``(h >= 1).float()`` in a bf16 core is the common way to write a spike;
    every backend casts such a value to the core's dtype, as the kernels do
    where values leave a step. Anything else is returned as is.
    """
    for r in returns:
        if isinstance(r, torch.Tensor) and r.dtype != dtype:
            break
    else:
        return returns  # the common case: one pass, no new tuple
    return tuple(
        r.to(dtype) if isinstance(r, torch.Tensor) and r.dtype != dtype and r.dtype.is_floating_point else r
        for r in returns
    )


def check_call_args(where: str, args: Sequence[Any], expected: int, detail: str) -> None:
    """``expected`` positional tensors."""
    if len(args) != expected:
        raise ValueError(f"{where} expected {expected} tensors ({detail}), but got {len(args)}.")
    for i, arg in enumerate(args):
        if not isinstance(arg, torch.Tensor):
            raise TypeError(f"{where} expected tensor arguments, but arg #{i} is {type(arg).__name__}.")


def _describe(t: torch.Tensor) -> str:
    return f"({tuple(t.shape)}, {t.dtype}, {t.device})"


def check_scan_call(
    inputs: Sequence[torch.Tensor],
    states: Sequence[torch.Tensor],
    statics: Sequence[torch.Tensor],
    num_inputs: int,
    num_states: int,
    num_static: int,
) -> None:
    """The tensors of one multi-step call fit the scan contract; ``ValueError`` otherwise.

    ``num_inputs`` input sequences ``[T, ...]`` with the first one's shape,
    dtype and device; no states (the kernels' zero-state elision) or
    ``num_states`` states, each one step of input #0 with its dtype and device;
    ``num_static`` static inputs on input #0's device (a 0-dim CPU tensor is
    allowed, as in PyTorch) that broadcast to one step. The kernels index every
    buffer with input #0's ``T`` and element count, so a smaller tensor would be
    read out of bounds: this runs before any launch, on every path, with the
    same messages. It costs a few attribute reads per tensor (the eager hot path
    calls it once per forward).
    """
    if len(inputs) != num_inputs or num_inputs == 0:
        raise ValueError(f"FlexSN expected {num_inputs} input sequences, but got {len(inputs)}.")
    if len(states) not in (0, num_states):
        raise ValueError(f"FlexSN expected {num_states} states, but got {len(states)}.")
    if len(statics) != num_static:
        raise ValueError(f"FlexSN expected {num_static} static inputs, but got {len(statics)}.")
    x0 = inputs[0]
    if x0.dim() == 0:
        raise ValueError("FlexSN: input sequences are [T, ...] tensors; input #0 has no time dimension.")
    shape, dtype, where = x0.shape, x0.dtype, x0.device
    for i in range(1, len(inputs)):
        x = inputs[i]
        if x.shape != shape or x.dtype != dtype or x.device != where:
            raise ValueError(
                f"FlexSN: input sequence #{i} is {_describe(x)}; every input sequence must match "
                f"input #0 {_describe(x0)}."
            )
    if states:
        step = shape[1:]
        for j, s in enumerate(states):
            if s.shape != step or s.dtype != dtype or s.device != where:
                raise ValueError(
                    f"FlexSN: state #{j} is {_describe(s)}; every state must be one step of input #0 "
                    f"({tuple(step)}, {dtype}, {x0.device})."
                )
    for k, c in enumerate(statics):
        device = c.device
        if device != where and not (device.type == "cpu" and c.dim() == 0):
            raise ValueError(
                f"FlexSN: static input #{k} is on {c.device}, but input #0 is on {x0.device}; move it there "
                "(module.to(device) moves a FlexSN's static inputs)."
            )
        cshape = c.shape
        if cshape != shape[1:] and c.numel() != 1:
            step = tuple(shape[1:])
            try:
                fits = broadcast_shape(tuple(cshape), step) == step
            except ValueError:
                fits = False
            if not fits:
                raise ValueError(
                    f"FlexSN: static input #{k} of shape {tuple(cshape)} does not broadcast to the per-step "
                    f"shape {step} of input #0 {tuple(shape)}."
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
    check_arity(
        who, core, num_inputs + num_states + len(statics),
        f"num_inputs={num_inputs} + num_states={num_states} + {len(statics)} static inputs",
    )
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
            raise CoreSignatureError(
                f"{who} currently requires every per-step output and updated state to have the same shape as "
                f"the first example tensor {tuple(probe.shape)}, but return #{i} has shape {tuple(tensor.shape)}."
            )
        # A floating-point return of another dtype is cast to the core's dtype (see cast_returns).
        if (tensor.dtype != probe.dtype and not tensor.dtype.is_floating_point) or tensor.device != probe.device:
            raise CoreSignatureError(
                f"{who} currently requires every per-step output and updated state to match the first example "
                f"tensor's dtype/device ({probe.dtype}, {probe.device}), but return #{i} is "
                f"({tensor.dtype}, {tensor.device}); cast it (e.g. `spike.to(x.dtype)`)."
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
