"""Trace a core into FX graphs on CPU (no GPU needed).

* ``inference``: ``make_fx`` over fake tensors, ``(*inputs, *states,
  *statics) -> (*outputs, *new_states)``.
* ``forward`` / ``backward``: AOTAutograd with the min-cut partitioner, run on
  fake tensors too, so tracing never computes on real data. Which saved values the backward *kernel* reads is
  decided later by :mod:`flexsn_core.codegen.partition`, with a cost model that
  knows what a time-step scan already keeps in memory.

While tracing, a dispatch mode checks every aten op against the lowering
table, so an unsupported op fails with the op's name and the core's line, and
data-dependent Python control flow fails with a message saying what to use
instead.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from .counters import bump
from .codegen.lower import is_supported, op_name
from .errors import (
    CoreError,
    CoreReturnTypeError,
    CoreSignatureError,
    CoreTraceError,
    UnsupportedOpError,
)
from .spec import KernelSpec

__all__ = ["GraphLike", "TracedCore", "trace_core", "TRACE_NUMEL"]

#: Element count of the example tensors the core is traced with.
TRACE_NUMEL = 4

_UNSUPPORTED_HINTS = {
    "any": "reductions mix neurons; to decide per neuron use torch.where(cond, a, b) instead of `if`",
    "all": "reductions mix neurons; to decide per neuron use torch.where(cond, a, b) instead of `if`",
    "sort": "a core is elementwise: each neuron sees only its own values",
    "mm": "matrix products belong outside the neuron (e.g. in the Linear layer before it)",
    "matmul": "matrix products belong outside the neuron (e.g. in the Linear layer before it)",
    "dot": "matrix products belong outside the neuron (e.g. in the Linear layer before it)",
    "mv": "matrix products belong outside the neuron (e.g. in the Linear layer before it)",
    "sum": "reductions mix neurons; a core must be elementwise",
    "mean": "reductions mix neurons; a core must be elementwise",
}


class GraphLike(Protocol):
    """What code generation reads from a graph module: its ``graph`` (and, for
    ``get_attr`` nodes, the constant attribute the node names).

    Tracing gives ``fx.GraphModule``s; graphs rebuilt from an IR are
    :class:`flexsn_core.ir.RebuiltGraph`s, which never compile Python.
    """

    graph: fx.Graph


@dataclass
class TracedCore:
    """The graphs of one core, ready for code generation."""

    spec: KernelSpec
    inference: GraphLike
    forward: GraphLike | None
    backward: GraphLike | None
    num_saved: int
    #: per returned value (outputs then new states): its tangent's index, or None
    tangent_of: tuple[int | None, ...]
    #: first line of the spec source that produced each aten op
    lines: dict[str, int]

    @property
    def differentiable(self) -> bool:
        return self.backward is not None


class _OpGuard(TorchDispatchMode):
    """Reject unsupported aten ops as they happen, naming the core's line."""

    def __init__(self, filename: str) -> None:
        super().__init__()
        self.filename = filename
        self.lines: dict[str, int] = {}

    def current_line(self) -> int | None:
        frame = sys._getframe(1)
        while frame is not None:
            if frame.f_code.co_filename == self.filename:
                return frame.f_lineno
            frame = frame.f_back
        return None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        name = op_name(func)
        line = self.current_line()
        if line is not None and name not in self.lines:
            self.lines[name] = line
        if func in _TO_PYTHON_OPS:
            raise CoreTraceError(_branch_message(self.filename, line))
        result = func(*args, **(kwargs or {}))
        # Ops returning no tensor (device or size queries) never reach a graph.
        produces_tensor = any(isinstance(r, torch.Tensor) for r in pytree.tree_leaves(result))
        if line is not None and produces_tensor and not is_supported(func):
            raise UnsupportedOpError(_unsupported_message(name, line, self.filename), op=name, line=line)
        return result


def _source_line(filename: str, line: int | None) -> str:
    import linecache

    if line is None:
        return ""
    text = linecache.getline(filename, line).strip()
    return f" `{text}`" if text else ""


def _unsupported_message(name: str, line: int | None, filename: str) -> str:
    short = name.split(".")[1] if name.count(".") >= 2 else name
    hint = _UNSUPPORTED_HINTS.get(short, "see the README for the ops a core may use")
    where = f" at line {line} of the core source{_source_line(filename, line)}" if line else ""
    return f"unsupported op {name}{where}: {hint}"


# Ops that turn a tensor into a Python value: `if x > 0:`, `x.item()`, `bool(x)`.
_TO_PYTHON_OPS = {
    torch.ops.aten._local_scalar_dense.default,
    torch.ops.aten.is_nonzero.default,
}


# What PyTorch says when a multi-element tensor is turned into a Python value.
_TO_PYTHON_MESSAGES = (
    "more than one value is ambiguous",
    "cannot be converted to Scalar",
    "only one element tensors can be converted",
)


def _branch_message(filename: str, line: int | None) -> str:
    where = f" at line {line} of the core source{_source_line(filename, line)}" if line else ""
    return (
        f"the core branches on (or reads) a tensor value{where}. A kernel runs the same "
        "code for every neuron, so `if`/`while`/`.item()` on tensors cannot be compiled; "
        "use torch.where(condition, a, b) instead"
    )


def _traceback_line(exc: BaseException, filename: str) -> int | None:
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _is_data_dependent(exc: BaseException) -> bool:
    from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException
    from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

    return isinstance(
        exc, (GuardOnDataDependentSymNode, DataDependentOutputException, DynamicOutputShapeException)
    )


def _translate(exc: Exception, spec: KernelSpec) -> CoreError:
    """Turn an exception raised while tracing into an actionable CoreError."""
    if isinstance(exc, CoreError):
        return exc
    line = _traceback_line(exc, spec.filename)
    where = f" at line {line} of the core source{_source_line(spec.filename, line)}" if line else ""
    if _is_data_dependent(exc) or any(text in str(exc) for text in _TO_PYTHON_MESSAGES):
        return CoreTraceError(_branch_message(spec.filename, line))
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return CoreTraceError(f"the core raised {type(exc).__name__}{where}: {first}")


def _check_arity(core: Callable[..., Any], spec: KernelSpec) -> None:
    try:
        sig = inspect.signature(core)
    except (TypeError, ValueError):  # pragma: no cover - builtins only
        return
    try:
        sig.bind(*range(spec.num_args))
    except TypeError as exc:
        raise CoreSignatureError(
            f"the core {spec.entry}{sig} cannot take {spec.num_args} positional arguments "
            f"(num_inputs={spec.num_inputs} + num_states={spec.num_states} + "
            f"num_static={spec.num_static}): {exc}"
        ) from exc


def _normalize_returns(result: Any) -> tuple[Any, ...]:
    if isinstance(result, torch.Tensor):
        return (result,)
    if isinstance(result, (tuple, list)):
        return tuple(result)
    raise CoreReturnTypeError(
        f"the core returned a {type(result).__name__}; it must return a tensor or a tuple "
        "of tensors (*outputs, *new_states)"
    )


def _step_function(core: Callable[..., Any], dtype: torch.dtype) -> Callable[..., tuple[Any, ...]]:
    """The core with its returns normalized to a tuple of fresh tensors of the spec's dtype.

    The clone gives each returned value its own graph node, so an output that
    aliases an argument (a state passed through unchanged) or a value returned
    twice is handled like any other output. A floating-point return of another
    dtype (``(h >= 1).float()`` in a bf16 core) is cast to ``dtype`` instead,
    as every backend does; only such cores get the extra cast in their graphs.
    """

    def fresh(r: Any) -> Any:
        if not isinstance(r, torch.Tensor):
            return r
        if r.dtype != dtype and r.dtype.is_floating_point:
            return r.to(dtype)
        return r.clone()

    @functools.wraps(core)
    def step(*args: torch.Tensor) -> tuple[Any, ...]:
        return tuple(fresh(r) for r in _normalize_returns(core(*args)))

    return step


def _validate_returns(graph: fx.GraphModule, spec: KernelSpec) -> None:
    output = next(n for n in graph.graph.nodes if n.op == "output")
    returns = output.args[0]
    expected = spec.num_outputs + spec.num_states
    if len(returns) != expected:
        raise CoreSignatureError(
            f"FlexSN core returned {len(returns)} values, but expected {expected} "
            f"(= num_outputs + num_states = {spec.num_outputs} + {spec.num_states})."
        )
    for i, value in enumerate(returns):
        meta = value.meta.get("val") if isinstance(value, fx.Node) else value
        if not isinstance(meta, torch.Tensor):
            raise CoreReturnTypeError(
                f"FlexSN core return #{i} is {type(meta).__name__}; every output and new "
                "state must be a tensor"
            )
        if tuple(meta.shape) != (TRACE_NUMEL,):
            raise CoreSignatureError(
                f"FlexSN core return #{i} does not have the shape of its inputs (traced with "
                f"{TRACE_NUMEL} elements, it has shape {tuple(meta.shape)}); a core must be "
                "elementwise and return one value per neuron"
            )
        if meta.dtype != spec.torch_dtype:
            raise CoreSignatureError(
                f"FlexSN core return #{i} has dtype {meta.dtype}, but the spec's dtype is "
                f"{spec.torch_dtype}; cast it back (e.g. `spike.to(x.dtype)`)"
            )


def _example_args(spec: KernelSpec, *, grad: bool, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    args = []
    for i in range(spec.num_args):
        t = torch.randn(TRACE_NUMEL, generator=gen).to(spec.torch_dtype)
        if grad:
            is_state = spec.num_inputs <= i < spec.num_inputs + spec.num_states
            t.requires_grad_(is_state or spec.requires_grad[i])  # type: ignore[index]
        args.append(t)
    return args


def _trace_inference(step: Callable[..., Any], spec: KernelSpec, guard: _OpGuard) -> fx.GraphModule:
    from torch.fx.experimental.proxy_tensor import make_fx

    with guard:
        return make_fx(step, tracing_mode="fake")(*_example_args(spec, grad=False))


def _trace_training(
    step: Callable[..., Any], spec: KernelSpec
) -> tuple[fx.GraphModule | None, fx.GraphModule | None, tuple[int | None, ...]]:
    from functorch.compile import make_boxed_func
    from torch._functorch.aot_autograd import aot_function
    from torch._functorch.partitioners import min_cut_rematerialization_partition

    graphs: dict[str, fx.GraphModule] = {}

    def capture(kind: str) -> Callable[..., Any]:
        def compiler(gm: fx.GraphModule, _example: Any) -> Any:
            graphs[kind] = gm
            return make_boxed_func(gm.forward)

        return compiler

    traced = aot_function(
        step,
        fw_compiler=capture("forward"),
        bw_compiler=capture("backward"),
        # "inductor" lets the partitioner recompute pointwise ops instead of saving them.
        partition_fn=functools.partial(min_cut_rematerialization_partition, compiler="inductor"),
    )
    # Fake tensors: the user's core never computes on real data (no real
    # allocations or arithmetic), even while AOTAutograd runs its graphs.
    from torch._subclasses.fake_tensor import FakeTensorMode

    with torch.enable_grad(), FakeTensorMode():
        args = _example_args(spec, grad=True)
        outs = traced(*args)
        needs = [o for o in outs if isinstance(o, torch.Tensor) and o.requires_grad]
        if not needs:
            return None, None, (None,) * len(outs)
        torch.autograd.backward(needs, [torch.ones_like(o) for o in needs])
    tangent_of: list[int | None] = []
    k = 0
    for o in outs:
        if o.requires_grad:
            tangent_of.append(k)
            k += 1
        else:
            tangent_of.append(None)
    bw = graphs["backward"]
    num_tangents = sum(1 for n in bw.graph.nodes if n.op == "placeholder" and n.name.startswith("tangents"))
    if num_tangents != k:  # pragma: no cover - AOTAutograd contract changed
        raise CoreTraceError(
            f"internal: AOTAutograd produced {num_tangents} tangents for {k} differentiable outputs"
        )
    return graphs["forward"], bw, tuple(tangent_of)


def trace_core(spec: KernelSpec) -> TracedCore:
    """Trace the core rebuilt from ``spec.source``.

    Tracing the rebuilt core (never the caller's function object) guarantees
    that what is compiled is exactly what the spec says, wherever it is built.
    """
    core = spec.load_core()
    _check_arity(core, spec)
    step = _step_function(core, spec.torch_dtype)
    guard = _OpGuard(spec.filename)
    try:
        inference = _trace_inference(step, spec, guard)
        _validate_returns(inference, spec)
        forward, backward, tangent_of = _trace_training(step, spec)
    except CoreError:
        raise
    except Exception as exc:
        raise _translate(exc, spec) from exc
    bump("traces")
    num_saved = 0
    if forward is not None:
        out = next(n for n in forward.graph.nodes if n.op == "output")
        num_saved = len(out.args[0]) - (spec.num_outputs + spec.num_states)
    return TracedCore(
        spec=spec,
        inference=inference,
        forward=forward,
        backward=backward,
        num_saved=num_saved,
        tangent_of=tangent_of,
        lines=dict(guard.lines),
    )
