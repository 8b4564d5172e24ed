"""The traced graphs of a core as a declarative, versioned JSON IR.

Tracing executes the core (user code); the service does it only inside its
build jail. The jail's only output is this IR: plain data that the server
validates (:func:`ir_to_traced`) before generating and compiling kernels from
it (:func:`generate_from_ir`), so nothing user code produces is ever read as a
path, a pickle or code. Local builds take the same road
(:func:`flexsn_core.artifacts.generate`), so a local build and a service build
give the same source, byte for byte.

Format (``version`` = :data:`IR_VERSION`)::

    {"format": "flexsn-ir", "version": 1,
     "spec_key": "<64 hex: the spec this IR was traced from>",
     "inference": GRAPH,                  # make_fx: (*inputs, *states, *statics) -> (*outputs, *new_states)
     "forward": GRAPH | null,             # AOTAutograd; null when no return is differentiable
     "backward": GRAPH | null,
     "num_saved": int,                    # values the forward returns for the backward
     "tangent_of": [int | null, ...],     # per output and new state: its tangent's index
     "lines": {"aten.add.Tensor": 3, ...}}  # first core line of each op, for messages

    GRAPH = {"nodes": [NODE, ...]}        # in order; placeholders first, output last
    NODE  = {"name": ID, "op": "placeholder", "meta": META}
          | {"name": ID, "op": "call_function", "target": "aten.add.Tensor",
             "args": [ARG, ...], "kwargs": {"alpha": ARG}, "meta": META}
          | {"name": ID, "op": "get_attr", "constant": {"dtype": D, "shape": [1], "value": NUM}, "meta": META}
          | {"name": ID, "op": "output", "args": [[{"node": ID} | null, ...]]}
    META  = {"dtype": D, "shape": [int, ...]}
    ARG   = {"node": ID} | int | float | {"float": "inf" | "-inf" | "nan"} | bool | null
          | {"dtype": D} | {"device": "cpu" | "meta"} | {"layout": "strided"}
          | {"memory_format": "contiguous_format" | ...} | "floor" | "trunc" | [ARG, ...]

``target`` is looked up in the lowering table (``codegen.lower.LOWERINGS``) by
name, and each op's arguments are checked against its aten schema. The save
plan is *not* part of the IR: the server derives it from the forward graph
(``codegen.partition.plan_saved``), which is strictly safer than taking it
from the jail.
"""

from __future__ import annotations

from typing import Any

from ..codegen.kernels import GeneratedKernels, generate_kernels
from ..errors import IRError
from ..spec import KernelSpec
from ..trace import TracedCore, trace_core
from ._decode import decode_ir
from ._encode import dumps_ir, traced_to_ir
from ._format import DEFAULT_LIMITS, IR_FORMAT, IR_VERSION, IRLimits
from ._graph import RebuiltGraph
from ._json import parse_ir

__all__ = [
    "IR_FORMAT",
    "IR_VERSION",
    "IRLimits",
    "DEFAULT_LIMITS",
    "RebuiltGraph",
    "trace_to_ir",
    "traced_to_ir",
    "dumps_ir",
    "ir_to_traced",
    "generate_from_ir",
]

IRInput = dict[str, Any] | str | bytes


def trace_to_ir(spec: KernelSpec) -> dict[str, Any]:
    """Trace ``spec``'s core and return its IR (plain JSON data).

    This EXECUTES the core: call it only inside the build jail or on a trusted
    machine. Code is generated once from the traced graphs as a check, so a
    core the code generator cannot handle fails here, where it was traced, with
    its :class:`~flexsn_core.errors.CoreError` (op name and line), rather than
    later as an :class:`~flexsn_core.errors.IRError` on the server.
    """
    traced = trace_core(spec)
    generate_kernels(traced)
    return traced_to_ir(traced)


def ir_to_traced(spec: KernelSpec, ir: IRInput, *, limits: IRLimits = DEFAULT_LIMITS) -> TracedCore:
    """Validate an IR (untrusted) against ``spec`` and rebuild its graphs.

    Raises :class:`~flexsn_core.errors.IRError`, naming the problem, for
    anything malformed, unsupported or over ``limits``; never runs code taken
    from the IR.
    """
    if not isinstance(spec, KernelSpec):
        raise TypeError(f"spec must be a KernelSpec, not {type(spec).__name__}")
    try:
        return decode_ir(spec, parse_ir(ir, limits), limits)
    except IRError:
        raise
    except RecursionError as exc:
        raise IRError("the IR is nested too deeply") from exc
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError, OverflowError) as exc:
        # Every field is checked above; this is the net under those checks.
        raise IRError(f"malformed IR: {type(exc).__name__}: {exc}") from exc


def generate_from_ir(spec: KernelSpec, ir: IRInput, *, limits: IRLimits = DEFAULT_LIMITS) -> GeneratedKernels:
    """The kernel module of ``spec`` generated from a validated IR.

    ``generate_kernels(ir_to_traced(spec, ir))``: runs no user code. The jail
    already generated code from the same graphs (:func:`trace_to_ir`), so a
    failure here means the IR is not what tracing produced: it is reported as
    an :class:`~flexsn_core.errors.IRError`.
    """
    traced = ir_to_traced(spec, ir, limits=limits)
    try:
        return generate_kernels(traced)
    except Exception as exc:  # noqa: BLE001 - any failure on validated data is the IR's
        raise IRError(f"code generation rejected the IR: {type(exc).__name__}: {exc}") from exc
