"""The forward paths of ``FlexSN`` over a ``[T, ...]`` sequence, one per kind of backend.

| path | backends | what runs |
| --- | --- | --- |
| :func:`torch_forward` | ``"torch"`` | a Python time loop over the core |
| :func:`hop_forward` | ``"hop"``, and kernel backends without kernels | the ``flex_sn_scan`` HigherOrderOperator |
| :func:`kernel_forward` | ``"triton"``, ``"inductor"``, ``"remote-cache"``, any provider | the ``flexsn::*`` custom ops |

Each takes the module and updates its ``states`` (and ``state_seqs``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from .. import ops
from ..contract import as_tuple, cast_returns, check_scan_call
from ..hop import eager_scan_final_state, empty_outputs, flex_sn_scan
from ..hop_lowerable import compiled_scan
from ..settings import interpreter_enabled

if TYPE_CHECKING:
    from .flexsn import FlexSN

__all__ = [
    "torch_forward", "hop_forward", "kernel_forward", "run_kernel", "kernels_usable", "default_device",
    "INTERPRETER_ON_CUDA",
]

#: Why CUDA tensors and TRITON_INTERPRET=1 do not mix (issue #11: `pytest -m gpu` under a forced
#: TRITON_INTERPRET=1 failed in triton.compile). The variable switches all of Triton, Inductor's
#: kernels included, to its CPU interpreter; a GPU run must not have it.
INTERPRETER_ON_CUDA = (
    "FlexSN kernels cannot run on CUDA tensors while TRITON_INTERPRET=1 is set: it switches all of Triton "
    "(FlexSN's kernels and Inductor's) to its CPU interpreter, which only runs CPU tensors. Unset "
    "TRITON_INTERPRET for GPU runs (it is for CPU tensors: tests and CI), or run this model on CPU tensors."
)


def kernels_usable(device: torch.device) -> bool:
    """Kernels run on CUDA tensors, and on CPU tensors in Triton's interpreter.

    CUDA tensors under ``TRITON_INTERPRET=1`` are a configuration error (see
    :data:`INTERPRETER_ON_CUDA`), raised as a ``RuntimeError``.
    """
    if device.type == "cuda":
        if interpreter_enabled():
            raise RuntimeError(INTERPRETER_ON_CUDA)
        return True
    return device.type == "cpu" and interpreter_enabled()


def default_device() -> torch.device:
    """Where kernels are built when no example says: CPU under the interpreter, else CUDA if present."""
    if interpreter_enabled() or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def _check_call(m: FlexSN, args: Sequence[torch.Tensor], states: Sequence[torch.Tensor] | None) -> None:
    check_scan_call(args, states or (), m.static_tensors(), m.num_inputs, m.num_states, len(m._static_names))


def _casting(core: Any, dtype: torch.dtype) -> Any:
    """The core with floating-point returns cast to ``dtype`` (what the kernels do; see cast_returns)."""

    @functools.wraps(core)
    def step(*args: torch.Tensor) -> Any:
        return cast_returns(as_tuple(core(*args)), dtype)

    return step


def requires_grad(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.requires_grad
    if isinstance(value, (list, tuple)):
        return any(requires_grad(v) for v in value)
    return False


def _init_and_check(m: FlexSN, args: Sequence[torch.Tensor]) -> None:
    """States initialized if absent, then the call checked (before any step runs)."""
    if m.states is None:
        _check_call(m, args, None)  # init_states reads the inputs
        m.states = m.init_states(m.num_states, "m", *args)
    _check_call(m, args, m.states)


def torch_forward(m: FlexSN, args: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    _init_and_check(m, args)
    T = args[0].shape[0]
    if T == 0:
        if m.num_outputs > 0 and m._output_templates is None:
            raise ValueError(
                f"FlexSN backend='{m.backend}' requires example_outputs for empty multi-step inputs so "
                "output shapes and dtypes match core's per-step return contract without executing core."
            )
        outs = list(empty_outputs(args, m.num_outputs, m._output_templates))
        if m.store_state_seqs:
            m.state_seqs = [s.new_empty((0, *s.shape)) for s in m.states]
        return outs
    statics = m.static_tensors()
    outs: list[list[torch.Tensor]] = [[] for _ in range(m.num_outputs)]
    seqs: list[list[torch.Tensor]] = [[] for _ in range(m.num_states)]
    states = m.states
    dtype = args[0].dtype
    for t in range(T):
        results = cast_returns(as_tuple(m.core(*(x[t] for x in args), *states, *statics)), dtype)
        for i in range(m.num_outputs):
            outs[i].append(results[i])
        states = list(results[m.num_outputs :])
        if m.store_state_seqs:
            for j, s in enumerate(states):
                seqs[j].append(s)
    m.states = states
    if m.store_state_seqs:
        m.state_seqs = [torch.stack(s) for s in seqs]
    return [torch.stack(o) for o in outs]


def hop_forward(m: FlexSN, args: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    _init_and_check(m, args)
    flat = [*args, *(s.contiguous() for s in m.states), *m.static_tensors()]
    if torch.compiler.is_compiling():
        scan = compiled_scan(m.store_state_seqs)
    else:
        scan = flex_sn_scan if m.store_state_seqs else eager_scan_final_state
    results = scan(
        _casting(m.core, args[0].dtype), m.num_inputs, m.num_states, m.num_outputs, *flat,
        output_template_specs=m._output_templates,
    )
    outs = list(results[: m.num_outputs])
    tail = list(results[m.num_outputs :])
    if m.store_state_seqs:
        m.state_seqs = tail
        m.states = [seq[-1] if seq.shape[0] else m.states[j] for j, seq in enumerate(tail)]
    else:
        m.states = tail
    return outs


def kernel_forward(m: FlexSN, handle: int, args: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    no, ns = m.num_outputs, m.num_states
    inputs = list(args)
    states = [] if m.states is None else list(m.states)
    statics = m.static_tensors()
    grad = torch.is_grad_enabled() and (requires_grad(inputs) or requires_grad(states) or requires_grad(statics))
    store = m.store_state_seqs
    if grad and ops.lookup_handle(handle).trainable:
        res = torch.ops.flexsn.training(handle, inputs, states, statics, store, ops.choose_recompute(handle))
        m.states = list(res[no : no + ns])
        if store:
            m.state_seqs = list(res[no + ns : no + 2 * ns])
        return list(res[:no])
    # Outside torch.compile, call the op's implementation directly: the
    # dispatcher round trip costs more than the kernel on small inputs.
    eager = not torch.compiler.is_compiling()
    if store:
        res = (ops.inference if eager else torch.ops.flexsn.inference)(handle, inputs, states, statics)
        seqs = list(res[no:])
        m.state_seqs = seqs
        T = inputs[0].shape[0]
        if T:
            m.states = [s[-1] for s in seqs]
        elif not states:
            m.states = m.init_states(ns, "m", *inputs)
        return list(res[:no])
    res = (ops.inference_final if eager else torch.ops.flexsn.inference_final)(handle, inputs, states, statics)
    m.states = list(res[no:])
    return list(res[:no])


def run_kernel(
    handle: int, ni: int, no: int, ns: int, args: Sequence[torch.Tensor], statics: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, ...]:
    """``(*input_seqs, *init_states) -> (*output_seqs, *state_seqs)`` on a handle's kernels."""
    inputs, states = list(args[:ni]), list(args[ni:])
    grad = torch.is_grad_enabled() and (requires_grad(args) or requires_grad(statics))
    if grad and ops.lookup_handle(handle).trainable:
        res = torch.ops.flexsn.training(handle, inputs, states, list(statics), True, ops.choose_recompute(handle))
        return (*res[:no], *res[no + ns : no + 2 * ns])
    return tuple(torch.ops.flexsn.inference(handle, inputs, states, list(statics)))
