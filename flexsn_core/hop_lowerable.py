"""The FlexSN scan as one loop node: PyTorch's ``scan`` and ``while_loop`` operators.

Same contract as :func:`flexsn_core.hop.eager_scan` (and ``*_final_state`` as
:func:`~flexsn_core.hop.eager_scan_final_state`), but the time loop stays one
``scan`` / ``while_loop`` node under ``torch.compile`` instead of ``T`` copies
of the core: compile time no longer grows with ``T``. ``FlexSN(backend="hop")``
uses them inside ``torch.compile`` for inference (no grad) when
``FLEXSN_HOP_LOWERING`` is ``while_loop`` or ``scan`` (:func:`compiled_scan`);
by default, and whenever gradients are needed, the loop is unrolled.

* ``lowerable_scan``: ``torch._higher_order_ops.scan`` carries the states and
  slices the inputs itself.
* ``lowerable_while_loop_scan``: ``torch._higher_order_ops.while_loop`` with
  fixed-shape carries: a step counter, the states, and one ``[T, ...]`` buffer
  per output (and state) written with ``index_copy``; inputs are read with
  ``index_select``. The first step runs before the loop, which tells the
  buffers' shapes and dtypes.

Both operators are private PyTorch APIs: :func:`lowerable_scan_available` and
:func:`lowerable_while_loop_available` say whether this PyTorch has them, and
:func:`compiled_scan` falls back to the unrolled loop (with a debug log) when
the chosen one is missing. With ``T == 0`` no loop runs; outputs come from
``output_template_specs`` as in the eager forms.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .contract import as_tuple, check_returns
from .hop import OutputTemplateSpecs, _split, eager_scan, eager_scan_final_state, empty_outputs, flex_sn_scan
from .hop_dynamo import registered as _dynamo_registered
from .settings import hop_lowering

try:
    from torch._higher_order_ops.scan import scan as _torch_scan
except (ImportError, AttributeError):  # pragma: no cover - older or newer PyTorch
    _torch_scan = None
try:
    from torch._higher_order_ops.while_loop import while_loop as _torch_while_loop
except (ImportError, AttributeError):  # pragma: no cover - older or newer PyTorch
    _torch_while_loop = None

__all__ = [
    "lowerable_scan",
    "lowerable_scan_final_state",
    "lowerable_scan_available",
    "lowerable_while_loop_scan",
    "lowerable_while_loop_scan_final_state",
    "lowerable_while_loop_available",
    "compiled_scan",
]

logger = logging.getLogger("flexsn_core.hop")
if _torch_scan is None or _torch_while_loop is None:
    logger.debug("this PyTorch lacks scan (%s) or while_loop (%s); FLEXSN_HOP_LOWERING falls back to unrolling",
                 _torch_scan is not None, _torch_while_loop is not None)


def lowerable_scan_available() -> bool:
    """Whether this PyTorch has the ``scan`` operator."""
    return _torch_scan is not None


def lowerable_while_loop_available() -> bool:
    """Whether this PyTorch has the ``while_loop`` operator."""
    return _torch_while_loop is not None


def _empty(inputs: Sequence[torch.Tensor], states: Sequence[torch.Tensor], num_outputs: int,
           specs: OutputTemplateSpecs | None, keep_seqs: bool) -> tuple[torch.Tensor, ...]:
    outs = empty_outputs(inputs, num_outputs, specs)
    if keep_seqs:
        return (*outs, *(s.new_empty((0, *s.shape)) for s in states))
    return (*outs, *(s.clone() for s in states))


def _step(core_fn: Callable[..., Any], num_outputs: int, num_states: int, args: Sequence[torch.Tensor]) -> tuple:
    results = as_tuple(core_fn(*args))
    check_returns("flex_sn_scan", results, num_outputs, num_states)
    return results


# ---------------------------------------------------------------------- scan
def _scan(core_fn, num_inputs, num_states, num_outputs, flat_args, specs, keep_seqs):  # noqa: ANN001, ANN202
    if _torch_scan is None:
        raise RuntimeError("this PyTorch has no scan operator (torch._higher_order_ops.scan)")
    inputs, states, lifted, T = _split(core_fn, num_inputs, num_states, flat_args)
    if T == 0:
        return _empty(inputs, states, num_outputs, specs, keep_seqs)
    # scan needs at least one carry: a core without states carries a dummy scalar.
    init = list(states) if num_states else [inputs[0].new_zeros(())]

    def combine(carry: list[torch.Tensor], xs: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        results = _step(core_fn, num_outputs, num_states, [*xs, *(carry if num_states else ()), *lifted])
        # Nothing returned may alias the carry or the step's inputs (a core may pass a value
        # through): clones, which the compiled loop body elides.
        new_states = [r.clone() for r in results[num_outputs:]]
        ys = [r.clone() for r in results[:num_outputs]]
        if keep_seqs:
            ys += [s.clone() for s in new_states]
        return (new_states if num_states else [carry[0].clone()]), ys

    final, ys = _torch_scan(combine, init, [x.contiguous() for x in inputs])
    if keep_seqs:
        return tuple(ys)
    return (*ys, *(final if num_states else ()))


def lowerable_scan(
    core_fn: Callable[..., Any], num_inputs: int, num_states: int, num_outputs: int, *flat_args: torch.Tensor,
    output_template_specs: OutputTemplateSpecs | None = None,
) -> tuple[torch.Tensor, ...]:
    """``(*output_seqs, *state_seqs)`` through PyTorch's ``scan`` operator."""
    return _scan(core_fn, num_inputs, num_states, num_outputs, flat_args, output_template_specs, True)


def lowerable_scan_final_state(
    core_fn: Callable[..., Any], num_inputs: int, num_states: int, num_outputs: int, *flat_args: torch.Tensor,
    output_template_specs: OutputTemplateSpecs | None = None,
) -> tuple[torch.Tensor, ...]:
    """``(*output_seqs, *final_states)`` through PyTorch's ``scan`` operator."""
    return _scan(core_fn, num_inputs, num_states, num_outputs, flat_args, output_template_specs, False)


# ---------------------------------------------------------------- while_loop
def _while(core_fn, num_inputs, num_states, num_outputs, flat_args, specs, keep_seqs):  # noqa: ANN001, ANN202
    if _torch_while_loop is None:
        raise RuntimeError("this PyTorch has no while_loop operator (torch._higher_order_ops.while_loop)")
    inputs, states, lifted, T = _split(core_fn, num_inputs, num_states, flat_args)
    if T == 0:
        return _empty(inputs, states, num_outputs, specs, keep_seqs)
    inputs = tuple(x.contiguous() for x in inputs)
    first = _step(core_fn, num_outputs, num_states, [*(x[0] for x in inputs), *states, *lifted])
    # One [T, ...] buffer per recorded value, every slot holding step 0's value until written.
    recorded = first if keep_seqs else first[:num_outputs]
    buffers = [r.unsqueeze(0).expand(T, *r.shape).contiguous() for r in recorded]
    new_states = [s.contiguous() for s in first[num_outputs:]]
    t0 = torch.ones((), dtype=torch.int64, device=inputs[0].device)
    nb = len(buffers)

    def cond_fn(t: torch.Tensor, *carry: torch.Tensor) -> torch.Tensor:
        return t < T

    def body_fn(t: torch.Tensor, *carry: torch.Tensor) -> tuple[torch.Tensor, ...]:
        at = t.reshape(1)
        cur_states, bufs = carry[:num_states], carry[num_states:]
        step = [x.index_select(0, at).squeeze(0) for x in inputs]
        results = _step(core_fn, num_outputs, num_states, [*step, *cur_states, *lifted])
        values = results if keep_seqs else results[:num_outputs]
        bufs = tuple(b.index_copy(0, at, v.unsqueeze(0)) for b, v in zip(bufs, values))
        return (t + 1, *(s.contiguous().clone() for s in results[num_outputs:]), *bufs)

    final = _torch_while_loop(cond_fn, body_fn, (t0, *new_states, *buffers))
    final_states, bufs = final[1 : 1 + num_states], final[1 + num_states : 1 + num_states + nb]
    if keep_seqs:
        return tuple(bufs)
    return (*bufs, *final_states)


def lowerable_while_loop_scan(
    core_fn: Callable[..., Any], num_inputs: int, num_states: int, num_outputs: int, *flat_args: torch.Tensor,
    output_template_specs: OutputTemplateSpecs | None = None,
) -> tuple[torch.Tensor, ...]:
    """``(*output_seqs, *state_seqs)`` through PyTorch's ``while_loop`` operator."""
    return _while(core_fn, num_inputs, num_states, num_outputs, flat_args, output_template_specs, True)


def lowerable_while_loop_scan_final_state(
    core_fn: Callable[..., Any], num_inputs: int, num_states: int, num_outputs: int, *flat_args: torch.Tensor,
    output_template_specs: OutputTemplateSpecs | None = None,
) -> tuple[torch.Tensor, ...]:
    """``(*output_seqs, *final_states)`` through PyTorch's ``while_loop`` operator."""
    return _while(core_fn, num_inputs, num_states, num_outputs, flat_args, output_template_specs, False)


# --------------------------------------------------------------- the choice
_LOWERED = {
    ("scan", True): (lowerable_scan, lowerable_scan_available),
    ("scan", False): (lowerable_scan_final_state, lowerable_scan_available),
    ("while_loop", True): (lowerable_while_loop_scan, lowerable_while_loop_available),
    ("while_loop", False): (lowerable_while_loop_scan_final_state, lowerable_while_loop_available),
}


def compiled_scan(keep_seqs: bool) -> Callable[..., tuple[torch.Tensor, ...]]:
    """The scan ``FlexSN(backend="hop")`` uses inside ``torch.compile``.

    Inference (no grad) with ``FLEXSN_HOP_LOWERING=while_loop`` or ``scan`` and
    the operator available: that loop node. Otherwise the unrolled loop:
    ``flex_sn_scan`` (one node Dynamo unrolls) for state sequences, the eager
    final-state loop for final states.
    """
    lowering = hop_lowering()
    if lowering != "unroll" and not torch.is_grad_enabled():
        scan, available = _LOWERED[(lowering, keep_seqs)]
        if available():  # else the unrolled loop (logged once, at import: no logging in traced code)
            return scan
    if not keep_seqs:
        return eager_scan_final_state
    return flex_sn_scan if _dynamo_registered() else eager_scan
