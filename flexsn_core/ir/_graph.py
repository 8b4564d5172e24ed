"""Step 2 of reading an IR: check one graph node by node and rebuild it.

Ops are looked up by name in the lowering table (never imported, never
``getattr``); each op's arguments are bound to its aten schema and typed (node
references, numbers, tagged dtypes/devices/layouts/memory formats, the few
allowed strings); node names are plain identifiers (they become variable names
in generated source); references point to earlier nodes of the same graph.
Rebuilding creates ``torch.fx`` nodes with meta-device tensors as their
``meta["val"]`` and runs no Python generated from the IR (a ``GraphModule``
would compile its graph into Python, so :class:`RebuiltGraph` stands in for it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

from ..errors import IRError
from ._format import (
    DEVICES,
    DTYPES,
    FLOAT_TAGS,
    INT64_MAX,
    INT64_MIN,
    LAYOUTS,
    MEMORY_FORMATS,
    STRING_ARGS,
    IRLimits,
    arguments,
    is_valid_name,
    ops,
)

__all__ = ["RebuiltGraph", "ReadGraph", "read_graph", "fields", "read_int"]

_NODE_FIELDS = {
    "placeholder": {"name", "op", "meta"},
    "call_function": {"name", "op", "target", "args", "kwargs", "meta"},
    "get_attr": {"name", "op", "constant", "meta"},
    "output": {"name", "op", "args"},
}


class RebuiltGraph:
    """A graph rebuilt from IR, with what codegen reads from a ``GraphModule``.

    ``graph`` is a ``torch.fx.Graph``; each constant a ``get_attr`` node reads
    is an attribute named by its target (targets are chosen here, never taken
    from the IR). Unlike ``GraphModule`` it never turns the graph into Python.
    """

    def __init__(self, graph: fx.Graph, constants: dict[str, torch.Tensor]) -> None:
        self.graph = graph
        for target, value in constants.items():
            setattr(self, target, value)

    def __repr__(self) -> str:
        return f"RebuiltGraph(\n{self.graph}\n)"


def fields(obj: object, expected: set[str], where: str) -> dict[str, Any]:
    """``obj`` if it is a JSON object with exactly the ``expected`` fields."""
    if not isinstance(obj, dict):
        raise IRError(f"{where} must be a JSON object, not {_json_type(obj)}")
    unknown = set(obj) - expected
    if unknown:
        raise IRError(f"{where} has unknown field(s): {_names(unknown)}")
    missing = expected - set(obj)
    if missing:
        raise IRError(f"{where} lacks field(s): {_names(missing)}")
    return obj


def _names(names: set[str]) -> str:
    shown = ", ".join(f"{n!r:.40}" for n in sorted(names)[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return {dict: "an object", list: "an array", str: "a string", int: "an integer", float: "a float"}.get(
        type(value), type(value).__name__
    )


def read_int(value: object, where: str, lo: int, hi: int) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise IRError(f"{where} must be an integer in [{lo}, {hi}], not {value!r:.60}")
    return value


def _tag(value: object, tag: str, table: dict[str, Any], where: str) -> Any:
    """``{tag: name}`` -> ``table[name]``."""
    if not (isinstance(value, dict) and len(value) == 1 and tag in value):
        raise IRError(f"{where} must be {{{tag!r}: ...}}, not {value!r:.80}")
    name = value[tag]
    if not isinstance(name, str) or name not in table:
        raise IRError(f"{where}: {tag} {name!r:.60} is not one of {', '.join(sorted(table))}")
    return table[name]


def _dtype(value: object, where: str) -> torch.dtype:
    if not isinstance(value, str) or value not in DTYPES:
        raise IRError(f"{where}: dtype {value!r:.60} is not one of {', '.join(DTYPES)}")
    return DTYPES[value]


def _number(value: object, where: str) -> bool | int | float:
    if isinstance(value, (bool, int, float)):  # range and finiteness are checked by parse_ir
        return value
    if isinstance(value, dict) and value.keys() == {"float"}:
        return _tag(value, "float", FLOAT_TAGS, where)  # type: ignore[no-any-return]
    raise IRError(f'{where} must be a number (or {{"float": "inf" | "-inf" | "nan"}}), not {value!r:.80}')


class GraphBuilder:
    """Rebuilds one graph node by node; references resolve only to earlier nodes."""

    def __init__(self, kind: str, limits: IRLimits) -> None:
        self.kind = kind
        self.limits = limits
        self.graph = fx.Graph()
        self.by_name: dict[str, fx.Node] = {}
        self.placeholders: list[fx.Node] = []
        self.constants: dict[str, torch.Tensor] = {}
        self.returns: list[fx.Node | None] | None = None

    # ------------------------------------------------------------ values
    def ref(self, value: object, where: str) -> fx.Node:
        if not (isinstance(value, dict) and len(value) == 1 and "node" in value):
            raise IRError(f"{where} must be a node reference {{'node': NAME}}, not {value!r:.80}")
        node = self.by_name.get(value["node"]) if isinstance(value["node"], str) else None
        if node is None:
            raise IRError(
                f"{where} refers to {value['node']!r:.60}, which is not an earlier node of the "
                f"{self.kind} graph"
            )
        return node

    def typed(self, value: object, ty: str, arg: str, where: str) -> Any:
        """``value`` as an argument of schema type ``ty`` (``arg`` is the argument's name)."""
        if ty.startswith("Optional[") and ty.endswith("]"):
            if value is None:
                return None
            ty = ty[len("Optional[") : -1]
        if ty == "Tensor":
            # Tracing keeps Python scalars where an op takes a tensor (``x / 2.0`` is
            # ``aten.div.Tensor(x, 2.0)``): a tensor argument is a node or a number.
            if isinstance(value, dict) and value.keys() == {"node"}:
                return self.ref(value, where)
            if isinstance(value, (bool, int, float)) or (isinstance(value, dict) and value.keys() == {"float"}):
                return _number(value, where)
            raise IRError(f"{where} must be a node reference {{'node': NAME}} or a number, not {value!r:.80}")
        if ty == "number":
            return _number(value, where)
        if ty == "int":
            return read_int(value, where, INT64_MIN, INT64_MAX)
        if ty == "bool":
            if not isinstance(value, bool):
                raise IRError(f"{where} must be a boolean, not {_json_type(value)}")
            return value
        if ty == "List[int]":
            if not isinstance(value, list) or len(value) > self.limits.max_list_len:
                raise IRError(f"{where} must be a list of at most {self.limits.max_list_len} integers")
            return [read_int(v, where, INT64_MIN, INT64_MAX) for v in value]
        if ty == "ScalarType":
            return _tag(value, "dtype", DTYPES, where)
        if ty == "Device":
            return _tag(value, "device", DEVICES, where)
        if ty == "Layout":
            return _tag(value, "layout", LAYOUTS, where)
        if ty == "MemoryFormat":
            return _tag(value, "memory_format", MEMORY_FORMATS, where)
        if ty == "str":
            allowed = STRING_ARGS.get(arg, frozenset())
            if not isinstance(value, str) or value not in allowed:
                raise IRError(f"{where}: {value!r:.60} is not one of {sorted(allowed)}")
            return value
        raise IRError(f"{where}: arguments of type {ty} are not supported in the IR")

    def meta(self, value: object, where: str) -> torch.Tensor:
        meta = fields(value, {"dtype", "shape"}, f"{where} meta")
        dtype = _dtype(meta["dtype"], f"{where} meta")
        return torch.empty(self.shape(meta["shape"], f"{where} meta shape"), dtype=dtype, device="meta")

    def shape(self, value: object, where: str) -> list[int]:
        if not isinstance(value, list) or len(value) > self.limits.max_rank:
            raise IRError(f"{where} must be a list of at most {self.limits.max_rank} sizes")
        shape = [read_int(d, where, 0, self.limits.max_dim) for d in value]
        if math.prod(shape) > self.limits.max_dim:
            raise IRError(f"{where}: {shape} has more than {self.limits.max_dim} elements")
        return shape

    # ------------------------------------------------------------- nodes
    def add(self, index: int, obj: object) -> None:
        where = f"{self.kind} graph, node #{index}"
        op = obj.get("op") if isinstance(obj, dict) else None
        if not isinstance(op, str) or op not in _NODE_FIELDS:
            raise IRError(
                f"{where} must be an object whose op is one of {', '.join(_NODE_FIELDS)}, not {op!r:.60}"
            )
        data = fields(obj, _NODE_FIELDS[op], where)
        name = data["name"]
        if not is_valid_name(name, self.limits.max_name_len):
            raise IRError(
                f"{where}: node name {name!r:.80} is not a plain identifier of at most "
                f"{self.limits.max_name_len} characters (letters, digits, '_'; not a keyword)"
            )
        where = f"{self.kind} graph, node #{index} {name!r}"
        if name in self.by_name:
            raise IRError(f"{where}: the name is used twice")
        if self.returns is not None:
            raise IRError(f"{where}: nodes follow the output node")
        if op == "placeholder":
            if len(self.placeholders) != len(self.by_name):
                raise IRError(f"{where}: placeholders must come before every other node")
            node = self.graph.create_node("placeholder", name, name=name)
            node.meta["val"] = self.meta(data["meta"], where)
            self.placeholders.append(node)
        elif op == "call_function":
            node = self.call(data, name, where)
        elif op == "get_attr":
            node = self.get_attr(data, name, where)
        else:
            self.output(data["args"], where)
            return
        if node.name != name:
            # fx renames a node whose name is a builtin or one of its own names ('torch', 'inf').
            self.graph.erase_node(node)
            raise IRError(f"{where}: {name!r} is a reserved name")
        self.by_name[name] = node

    def call(self, data: dict[str, Any], name: str, where: str) -> fx.Node:
        target = data["target"]
        op = ops().get(target) if isinstance(target, str) else None
        if op is None:
            raise IRError(f"{where}: op {target!r:.80} is not in the lowering table")
        meta = self.meta(data["meta"], where)
        args, kwargs = data["args"], data["kwargs"]
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise IRError(f"{where}: args must be a list and kwargs an object")
        schema = arguments(target)
        positional = [a for a in schema if not a.kwarg_only]
        if len(args) > len(positional):
            raise IRError(f"{where}: {target} takes at most {len(positional)} positional arguments, not {len(args)}")
        by_name = {a.name: a for a in schema}
        for key in kwargs:
            if key not in by_name or any(a.name == key for a in positional[: len(args)]):
                raise IRError(f"{where}: {target} has no (further) argument {key!r:.60}")
        for a in schema[len(args) :]:
            if a.required and a.name not in kwargs:
                raise IRError(f"{where}: {target} needs the argument {a.name!r}")
        new_args = tuple(
            self.typed(v, a.type, a.name, f"{where} argument {a.name!r}") for v, a in zip(args, positional)
        )
        new_kwargs = {k: self.typed(v, by_name[k].type, k, f"{where} argument {k!r}") for k, v in kwargs.items()}
        node = self.graph.create_node("call_function", op, new_args, new_kwargs, name=name)
        node.meta["val"] = meta
        return node

    def get_attr(self, data: dict[str, Any], name: str, where: str) -> fx.Node:
        meta = self.meta(data["meta"], where)
        const = fields(data["constant"], {"dtype", "shape", "value"}, f"{where} constant")
        dtype = _dtype(const["dtype"], f"{where} constant")
        shape = self.shape(const["shape"], f"{where} constant shape")
        if math.prod(shape) != 1:
            raise IRError(f"{where}: a constant tensor must have exactly one element, not shape {shape}")
        if dtype != meta.dtype or shape != list(meta.shape):
            raise IRError(f"{where}: the constant's dtype and shape differ from the node's meta")
        value = const["value"]
        if dtype == torch.bool:
            ok = isinstance(value, bool)
        elif dtype.is_floating_point:
            ok = isinstance(value, float) or (isinstance(value, dict) and "float" in value)
        else:
            info = torch.iinfo(dtype)
            ok = type(value) is int and info.min <= value <= info.max
        if not ok:
            raise IRError(f"{where}: constant value {value!r:.60} does not fit dtype {const['dtype']}")
        scalar = _number(value, f"{where} constant value")
        target = f"_ir_constant{len(self.constants)}"  # our name: never an attribute taken from the IR
        self.constants[target] = torch.tensor(scalar, dtype=dtype).reshape(shape)
        node = self.graph.create_node("get_attr", target, name=name)
        node.meta["val"] = meta
        return node

    def output(self, args: object, where: str) -> None:
        if not (isinstance(args, list) and len(args) == 1 and isinstance(args[0], list)):
            raise IRError(f"{where}: an output node's args must be [[returns...]]")
        returns = [None if r is None else self.ref(r, f"{where} return #{i}") for i, r in enumerate(args[0])]
        self.graph.output(tuple(returns))
        self.returns = returns



@dataclass(frozen=True)
class ReadGraph:
    """A checked, rebuilt graph and its inputs and returns."""

    module: RebuiltGraph
    placeholders: list[fx.Node]
    returns: list[fx.Node | None]


def read_graph(data: object, kind: str, limits: IRLimits) -> ReadGraph:
    """Check the graph ``data`` (``{"nodes": [...]}``) and rebuild it."""
    graph = fields(data, {"nodes"}, f"the {kind} graph")
    nodes = graph["nodes"]
    if not isinstance(nodes, list) or not nodes:
        raise IRError(f"the {kind} graph's nodes must be a non-empty list")
    if len(nodes) > limits.max_nodes:
        raise IRError(f"the {kind} graph has {len(nodes)} nodes; the limit is {limits.max_nodes}")
    builder = GraphBuilder(kind, limits)
    for index, node in enumerate(nodes):
        builder.add(index, node)
    if builder.returns is None:
        raise IRError(f"the {kind} graph has no output node")
    return ReadGraph(RebuiltGraph(builder.graph, builder.constants), builder.placeholders, builder.returns)
