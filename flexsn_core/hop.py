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

Under ``torch.compile`` the operator is registered with Dynamo
(:mod:`flexsn_core.hop_dynamo`): a call becomes one ``flex_sn_scan`` node whose
body is the core traced as a graph, and AOTAutograd unrolls it into the
core's ops (forward and backward). :mod:`flexsn_core.hop_lowerable` has the
loop forms built on PyTorch's own ``scan`` / ``while_loop`` operators.

The arity check (``inspect.signature``) runs in eager mode and, under Dynamo,
at trace time as a constant (``torch.compiler.assume_constant_result``):
Dynamo cannot trace ``inspect.signature(...).bind`` itself.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, Union

import torch
from torch._ops import HigherOrderOperator

from . import hop_dynamo
from .contract import as_tuple, check_counts, check_returns

__all__ = [
    "flex_sn_scan",
    "FlexSNScan",
    "eager_scan",
    "eager_scan_final_state",
    "empty_outputs",
    "traced_scan",
    "dynamo_hop_available",
    "scan_arity_error",
    "OutputTemplateSpecs",
]

OutputTemplateSpec = Union[
    tuple[Sequence[int], torch.dtype],
    tuple[Sequence[int], torch.dtype, torch.device],
]
OutputTemplateSpecs = Sequence[OutputTemplateSpec]


class FlexSNScan(HigherOrderOperator):
    """HigherOrderOperator running a single-step core over a leading time axis."""

    def __init__(self) -> None:
        # Not SpikingJelly's "flex_sn_scan": both may be loaded in one process, and a
        # HigherOrderOperator is registered (and found by Dynamo) under its name.
        super().__init__("flexsn_core_scan")

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


# ------------------------------------------------------------------ arity
def _positional_range(core_fn: Callable[..., Any]) -> tuple[int, int | None, list[str]] | None:
    """(required, capacity or None for ``*args``, required keyword-only names); None if unknowable."""
    target = core_fn.forward if isinstance(core_fn, torch.nn.Module) else core_fn
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature
        return None
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = sum(1 for p in positional if p.default is p.empty)
    capacity = None if any(p.kind == p.VAR_POSITIONAL for p in params) else len(positional)
    kwonly = [p.name for p in params if p.kind == p.KEYWORD_ONLY and p.default is p.empty]
    return required, capacity, kwonly


def scan_arity_error(
    core_fn: Callable[..., Any], num_inputs: int, num_states: int, total: int, who: str = "flex_sn_scan",
    extra: str = "lifted",
) -> str | None:
    """Why ``core_fn`` cannot be called with ``total`` positional tensors, or None if it can.

    ``total`` counts the inputs, the states and the ``extra`` tensors (lifted
    ones, or static inputs). Not traceable by Dynamo: call it in eager code or
    at trace time.
    """
    arity = _positional_range(core_fn)
    if arity is None:
        return None
    required, capacity, kwonly = arity
    if not kwonly and required <= total and (capacity is None or total <= capacity):
        return None
    expected = num_inputs + num_states
    lifted = total - expected
    name = getattr(core_fn, "__name__", type(core_fn).__name__)
    takes = f"{required}" if capacity == required else f"{required}..{'any' if capacity is None else capacity}"
    reason = f"requires keyword-only {kwonly}" if kwonly else f"takes {takes} positional arguments"
    return (
        f"{who} expected {expected} tensor args (num_inputs={num_inputs} + num_states={num_states})"
        + (f" plus {lifted} {extra}" if lifted else "")
        + f", got {total}: the core {name!r} {reason}, so it cannot take {total} positional arguments"
    )


def _arity_error_constant(core_fn: Callable[..., Any], num_inputs: int, num_states: int, total: int) -> str | None:
    # Marked with torch.compiler.assume_constant_result once Dynamo loads (hop_dynamo.install):
    # Dynamo then calls it at trace time and bakes in the result, so the check is no graph break.
    return scan_arity_error(core_fn, num_inputs, num_states, total)


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
    # Checked even when T == 0, where the core never runs (a wrong core is wrong at any length).
    # A GraphModule is a body Dynamo traced, checked when it was traced. Under Dynamo the check
    # runs at trace time as a constant (inspect.signature cannot be traced); skipping it there
    # instead would be wrong: Dynamo also traces this function when it runs as a nested frame.
    if not isinstance(core_fn, torch.fx.GraphModule):
        error = _arity_error_constant(core_fn, num_inputs, num_states, len(flat_args))
        if error is not None:
            raise ValueError(error)
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


def run_scan(core_fn, num_inputs, num_states, num_outputs, flat_args, output_template_specs, keep_seqs):  # noqa: ANN001, ANN201
    """The Python time loop behind every eager form: state sequences (``keep_seqs``) or final states."""
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
    return run_scan(core_fn, num_inputs, num_states, num_outputs, flat_args, output_template_specs, True)


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
    return run_scan(core_fn, num_inputs, num_states, num_outputs, flat_args, output_template_specs, False)


def traced_scan(
    core_fn: Callable[..., Any],
    num_inputs: int,
    num_states: int,
    num_outputs: int,
    *flat_args: torch.Tensor,
    output_template_specs: OutputTemplateSpecs | None = None,
    arity_error: str | None = None,
) -> tuple[torch.Tensor, ...]:
    """:func:`eager_scan` as Dynamo traces it when ``flex_sn_scan`` is not one graph node.

    ``arity_error`` is the arity check's verdict, made at trace time. With
    ``T == 0`` and no templates, the core runs once on an empty step to learn
    the output shapes (inside a compiled graph those ops are dead code).
    """
    if arity_error is not None:
        raise ValueError(arity_error)
    inputs = flat_args[:num_inputs]
    if output_template_specs is None and num_outputs and inputs and inputs[0].shape[0] == 0:
        step = [x.new_empty(x.shape[1:]) for x in inputs]
        probe = as_tuple(core_fn(*step, *flat_args[num_inputs:]))
        output_template_specs = tuple((tuple(o.shape), o.dtype) for o in probe[:num_outputs])
    return run_scan(core_fn, num_inputs, num_states, num_outputs, flat_args, output_template_specs, True)


def dynamo_hop_available() -> bool:
    """Whether ``flex_sn_scan`` is registered with Dynamo (so ``torch.compile`` traces it as one node).

    Imports Dynamo if it is not loaded yet (registration otherwise waits for
    Dynamo's first import, so ``import flexsn_core`` does not pay for it).
    """
    return hop_dynamo.ensure_registered()


# The HOP dispatches through Autograd even for tensors that need no grad;
# re-entering the eager loop there builds an ordinary per-step autograd graph,
# and under AOTAutograd (make_fx) it unrolls the scan into the core's ops.
flex_sn_scan.py_impl(torch._C.DispatchKey.CompositeExplicitAutograd)(eager_scan)
flex_sn_scan.py_impl(torch._C.DispatchKey.Autograd)(eager_scan)
hop_dynamo.install(flex_sn_scan, constants=(_arity_error_constant,))
