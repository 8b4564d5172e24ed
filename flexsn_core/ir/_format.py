"""The IR's vocabulary: its version, its limits, and the fixed tables that every
string of an IR is looked up in.

Nothing here is derived from an IR: an IR string is only ever a *key* into one
of these tables (op names, dtypes, devices, layouts, memory formats, the few
string arguments ops take), or a node name checked against :data:`NAME_RE`.
"""

from __future__ import annotations

import functools
import keyword
import re
from dataclasses import dataclass
from typing import NamedTuple

import torch

from ..codegen.lower import LOWERINGS, op_name

__all__ = [
    "IR_FORMAT",
    "IR_VERSION",
    "IRLimits",
    "DEFAULT_LIMITS",
    "DTYPES",
    "DEVICES",
    "LAYOUTS",
    "MEMORY_FORMATS",
    "STRING_ARGS",
    "NAME_RE",
    "OP_NAME_RE",
    "INT64_MIN",
    "INT64_MAX",
    "FLOAT_TAGS",
    "ops",
    "Argument",
    "arguments",
    "is_valid_name",
]

#: Value of the IR's ``format`` field: says what the document is.
IR_FORMAT = "flexsn-ir"
#: Bumped whenever the IR's layout or meaning changes; a reader accepts only its own.
IR_VERSION = 1


@dataclass(frozen=True)
class IRLimits:
    """Bounds on an IR read from an untrusted source (the build jail).

    The defaults are 20-80x what the test neurons need (the largest IR, op_mix_a
    in bf16, is 49 kB with 175 nodes in its largest graph), so an honest core
    never meets them while a hostile IR cannot make validation or code
    generation expensive.
    """

    #: encoded size of the whole IR (UTF-8 JSON)
    max_bytes: int = 4 * 2**20
    #: nodes of one graph, output node included
    max_nodes: int = 4096
    #: a node name (it becomes part of a variable name in generated source; the
    #: inference graph's placeholders are named after the core's parameters)
    max_name_len: int = 128
    #: any other string (op names, tags, keys)
    max_string_len: int = 256
    #: one list argument of an op (e.g. the sizes of a view)
    max_list_len: int = 64
    #: nesting of JSON containers (the format itself needs 8)
    max_depth: int = 10
    #: JSON values in the whole document
    max_values: int = 500_000
    #: dimensions of a shape, and the largest dimension and element count (meta only: nothing is allocated)
    max_rank: int = 8
    max_dim: int = 2**31 - 1
    #: entries of ``lines`` (op name -> source line) and the largest line number
    max_lines: int = 1024
    max_line: int = 1_000_000


DEFAULT_LIMITS = IRLimits()

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

#: Element dtypes a value may have inside a kernel (the code generator's register types).
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bool": torch.bool,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
}
#: Tracing runs on CPU fake tensors; creation ops name the device they were traced on.
DEVICES: dict[str, torch.device] = {"cpu": torch.device("cpu"), "meta": torch.device("meta")}
LAYOUTS: dict[str, torch.layout] = {"strided": torch.strided}
MEMORY_FORMATS: dict[str, torch.memory_format] = {
    "contiguous_format": torch.contiguous_format,
    "preserve_format": torch.preserve_format,
    "channels_last": torch.channels_last,
    "channels_last_3d": torch.channels_last_3d,
}
#: The only ``str`` arguments of ops in the lowering table, by argument name, and their values.
STRING_ARGS: dict[str, frozenset[str]] = {"rounding_mode": frozenset({"floor", "trunc"})}
#: Non-finite floats are tagged explicitly (JSON has no inf/nan).
FLOAT_TAGS: dict[str, float] = {"inf": float("inf"), "-inf": float("-inf"), "nan": float("nan")}

#: A node name: an ASCII Python identifier (``re.fullmatch``, so no trailing newline).
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: An op name as :func:`flexsn_core.codegen.lower.op_name` writes it.
OP_NAME_RE = re.compile(r"aten\.[A-Za-z0-9_]+\.[A-Za-z0-9_]+")


def is_valid_name(name: object, max_len: int) -> bool:
    return (
        isinstance(name, str)
        and len(name) <= max_len
        and NAME_RE.fullmatch(name) is not None
        and not keyword.iskeyword(name)
    )


@functools.cache
def ops() -> dict[str, torch._ops.OpOverload]:
    """The lowering table by op name: the only ops an IR may call."""
    table = {op_name(target): target for target in LOWERINGS}
    if len(table) != len(LOWERINGS):  # pragma: no cover - two overloads with one name
        raise AssertionError("internal: op names in the lowering table are not unique")
    return table  # type: ignore[return-value]


class Argument(NamedTuple):
    """One argument of an aten schema, as the IR checks it."""

    name: str
    type: str  # e.g. "Tensor", "number", "Optional[ScalarType]", "List[int]"
    kwarg_only: bool
    required: bool


@functools.cache
def arguments(name: str) -> tuple[Argument, ...]:
    """The schema arguments of the lowering-table op called ``name`` (a key of :func:`ops`)."""
    return tuple(
        Argument(a.name, str(a.real_type), a.kwarg_only, not a.has_default_value())
        for a in ops()[name]._schema.arguments
    )
