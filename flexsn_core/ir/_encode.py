"""Write a traced core as IR: plain JSON data, no Python objects.

This side runs where the core was traced (in the build jail, or on a trusted
machine); everything it writes is checked again by :mod:`._decode`.
"""

from __future__ import annotations

import json
import math
from typing import Any

import torch
import torch.fx as fx

from ..codegen.lower import op_name
from ..errors import IRError, UnsupportedOpError
from ..trace import GraphLike, TracedCore
from ._format import (
    DEVICES,
    DTYPES,
    INT64_MAX,
    INT64_MIN,
    IR_FORMAT,
    IR_VERSION,
    LAYOUTS,
    MEMORY_FORMATS,
    OP_NAME_RE,
    ops,
)

__all__ = ["traced_to_ir", "dumps_ir"]

_DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
_DEVICE_NAMES = {device: name for name, device in DEVICES.items()}
_LAYOUT_NAMES = {layout: name for name, layout in LAYOUTS.items()}
_MEMORY_FORMAT_NAMES = {fmt: name for name, fmt in MEMORY_FORMATS.items()}


def dumps_ir(ir: dict[str, Any]) -> str:
    """The canonical JSON text of an IR: sorted keys, no spaces, ASCII, no NaN literals.

    The same traced core gives the same bytes on every machine.
    """
    return json.dumps(ir, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def traced_to_ir(traced: TracedCore) -> dict[str, Any]:
    """The IR of a traced core (see :mod:`flexsn_core.ir` for the format)."""
    spec = traced.spec
    return {
        "format": IR_FORMAT,
        "version": IR_VERSION,
        "spec_key": spec.key,
        "inference": _graph(traced.inference, "inference"),
        "forward": None if traced.forward is None else _graph(traced.forward, "forward"),
        "backward": None if traced.backward is None else _graph(traced.backward, "backward"),
        "num_saved": traced.num_saved,
        "tangent_of": list(traced.tangent_of),
        # Only for messages: keep what a reader accepts rather than fail a build over it.
        "lines": {op: line for op, line in sorted(traced.lines.items()) if OP_NAME_RE.fullmatch(op)},
    }


def _graph(gm: GraphLike, kind: str) -> dict[str, Any]:
    return {"nodes": [_node(gm, node, kind) for node in gm.graph.nodes]}


def _node(gm: GraphLike, node: fx.Node, kind: str) -> dict[str, Any]:
    where = f"{kind} graph, node {node.name!r}"
    if node.op == "placeholder":
        return {"name": node.name, "op": "placeholder", "meta": _meta(node, where)}
    if node.op == "output":
        returns = node.args[0]
        if not isinstance(returns, (list, tuple)):
            raise IRError(f"{where}: the graph returns {type(returns).__name__}, not a tuple")
        return {"name": node.name, "op": "output", "args": [[_value(r, where) for r in returns]]}
    if node.op == "get_attr":
        return {
            "name": node.name,
            "op": "get_attr",
            "constant": _constant(getattr(gm, str(node.target)), where),
            "meta": _meta(node, where),
        }
    if node.op == "call_function":
        name = op_name(node.target)
        if ops().get(name) is not node.target:
            # The same message the code generator gives (an op only the backward uses).
            raise UnsupportedOpError(f"{name} has no Triton lowering in flexsn_core", op=name)
        return {
            "name": node.name,
            "op": "call_function",
            "target": name,
            "args": [_value(a, where) for a in node.args],
            "kwargs": {k: _value(v, where) for k, v in node.kwargs.items()},
            "meta": _meta(node, where),
        }
    raise IRError(f"{where}: {node.op} nodes cannot be written as IR")


def _meta(node: fx.Node, where: str) -> dict[str, Any]:
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        raise UnsupportedOpError(
            f"{op_name(node.target)} produced a non-tensor value", op=op_name(node.target)
        )
    return {"dtype": _dtype(val.dtype, where), "shape": [int(d) for d in val.shape]}


def _dtype(dtype: torch.dtype, where: str) -> str:
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        raise UnsupportedOpError(f"dtype {dtype} cannot be used inside a kernel", op=f"dtype {dtype}")
    return name


def _constant(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        raise UnsupportedOpError(
            "the core creates a constant tensor with more than one element; "
            "pass it as a static input instead",
            op="constant tensor",
        )
    return {
        "dtype": _dtype(value.dtype, where),
        "shape": [int(d) for d in value.shape],
        "value": _value(value.reshape(()).item(), where),
    }


def _value(value: Any, where: str) -> Any:
    """One argument as JSON: a node reference, a number, a tagged constant or a list."""
    if isinstance(value, fx.Node):
        return {"node": value.name}
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise IRError(f"{where}: integer {value} does not fit in 64 bits")
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return {"float": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if isinstance(value, torch.dtype):
        return {"dtype": _dtype(value, where)}
    if isinstance(value, (list, tuple)):
        return [_value(v, where) for v in value]
    for tag, names in (
        ("device", _DEVICE_NAMES),
        ("layout", _LAYOUT_NAMES),
        ("memory_format", _MEMORY_FORMAT_NAMES),
    ):
        try:
            name = names.get(value)  # type: ignore[call-overload]
        except TypeError:  # unhashable
            name = None
        if name is not None:
            return {tag: name}
    raise IRError(f"{where}: an argument of type {type(value).__name__} ({value!r}) cannot be written as IR")
