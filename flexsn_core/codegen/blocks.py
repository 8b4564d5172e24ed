"""Building blocks of the generated kernels: loads, stores, parameters, graph emission.

Shared by the forward-running kernels (:mod:`.forward`) and the backward kernel
(:mod:`.backward`). A :class:`KernelBuilder` accumulates one kernel function's
parameter list and body; :class:`CommonParams` adds the parameters every kind
takes (input sequences, initial states and their flags, static inputs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx

from ..trace import GraphLike
from .lower import Emitter, Val, physical

__all__ = [
    "PTR_TYPE",
    "KernelDef",
    "KernelBuilder",
    "CommonParams",
    "load_expr",
    "convert_expr",
    "store_line",
    "placeholders",
    "returns_of",
    "needed_nodes",
    "emit_graph",
]

PTR_TYPE = {
    torch.float32: "*fp32",
    torch.float16: "*fp16",
    torch.bfloat16: "*bf16",
    torch.bool: "*i1",
    torch.float64: "*fp64",
    torch.int8: "*i8",
    torch.uint8: "*u8",
    torch.int16: "*i16",
    torch.int32: "*i32",
    torch.int64: "*i64",
}


@dataclass(frozen=True)
class KernelDef:
    kind: str
    name: str
    params: tuple[tuple[str, str], ...]  # (name, Triton signature type); BLOCK is "constexpr"


def convert_expr(raw: str, dtype: torch.dtype) -> str:
    """A loaded value of ``dtype`` as the fp32 (or its own) register type."""
    if dtype == torch.bfloat16:
        emulated = f"({raw}.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)"
        return f"({emulated} if INTERPRET else {raw}.to(tl.float32))"
    if dtype == torch.float16:
        return f"{raw}.to(tl.float32)"
    return raw


def load_expr(ptr: str, dtype: torch.dtype, mask: str) -> str:
    return convert_expr(f"tl.load({ptr}, mask={mask}, other=0)", dtype)


def store_line(ptr: str, value: Val, dtype: torch.dtype, mask: str, e: Emitter) -> str:
    expr = e.as_(value, physical(dtype))
    if dtype == torch.bfloat16:
        # Round to nearest even: natively when compiled; in the interpreter round
        # exactly (emulated), after which dropping the low half is exact.
        rounded = e.tmp(e.round_to(expr, dtype))
        emulated = f"({rounded}.to(tl.uint32, bitcast=True) >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)"
        expr = f"({emulated} if INTERPRET else {_paren_name(expr)}.to(tl.bfloat16))"
    elif dtype == torch.float16:
        expr = f"({expr}).to(tl.float16)"
    return f"tl.store({ptr}, {expr}, mask={mask})"


def _paren_name(expr: str) -> str:
    return expr if expr.isidentifier() else f"({expr})"


class KernelBuilder:
    """Accumulates the parameter list and body of one kernel function.

    The body is written at the indentation of a kernel that owns one block
    (``offs``, ``mask``); :meth:`render` wraps it in a grid-stride loop over
    blocks, so a launch may use fewer programs than blocks (persistent
    programs) and one program per block is just one iteration.
    """

    def __init__(self, kind: str, spec_dtype: torch.dtype) -> None:
        self.kind = kind
        self.name = f"flexsn_{kind}"
        self.dtype = spec_dtype
        self.params: list[tuple[str, str]] = []
        self.body: list[str] = []
        self._loop_at: int | None = None  # where the time loop starts (prefetches go before it)
        self._reverse = False
        self._streams = 0

    def param(self, name: str, ty: str) -> str:
        self.params.append((name, ty))
        return name

    def ptr(self, name: str, dtype: torch.dtype | None = None) -> str:
        return self.param(name, PTR_TYPE[dtype or self.dtype])

    def emitter(self, indent: str, prefix: str) -> Emitter:
        return Emitter(self.body, indent, prefix)

    def line(self, text: str, indent: str = "    ") -> None:
        self.body.append(indent + text)

    # ------------------------------------------------------------ the time loop
    def time_loop(self, *, reverse: bool) -> None:
        """Open the loop over time steps (``t``, ``row = t * N``); reverse runs T-1 .. 0."""
        self._loop_at = len(self.body)
        self._reverse = reverse
        if reverse:
            self.line("for i in range(T):")
            self.line("t = T - 1 - i", "        ")
        else:
            self.line("for t in range(T):")
        self.line("row = t * N", "        ")

    def stream(
        self, e: Emitter, ptr: str, dtype: torch.dtype, mask: str, shift: int = 0, *, stride: str = "N",
        col: str = "offs",
    ) -> str:
        """Load this step's element of a ``[T, N]`` buffer at row ``t + shift`` (shift 0 or -1).

        ``stride``/``col``: the row stride and column of a buffer laid out
        otherwise (a recompute-mode scratch buffer: ``SRS``, ``soffs``).

        With the ``PREFETCH`` constexpr the next step's element is loaded one
        iteration ahead (the first one before the loop), so each thread keeps a
        second load in flight per stream while it computes; the values are the
        same. ``mask`` must not depend on ``t``; rows outside ``0 .. T-1`` are
        masked off. Returns the name of the value in its register type.
        """
        assert self._loop_at is not None, "stream() outside the time loop"
        self._streams += 1
        nxt, cur = f"pf{self._streams}", f"ld{self._streams}"
        back = f" - {stride}" if shift == -1 else ""
        here = "row" if stride == "N" else f"t * {stride}"

        def load(t: str, row: str, edge: str | None) -> str:
            conds = ([f"{t} > 0"] if shift == -1 else []) + ([edge] if edge else [])
            full = mask + "".join(f" & ({c})" for c in conds)
            return f"tl.load({ptr} + {row}{back} + {col}, mask={full}, other=0)"

        if self._reverse:
            first = load("(T - 1)", f"(T - 1) * {stride}", "T > 0")
            ahead = load("(t - 1)", f"({here} - {stride})", "t > 0")
        else:
            first = load("0", "0", "T > 0")
            ahead = load("(t + 1)", f"({here} + {stride})", "t + 1 < T")
        prologue = ["    if PREFETCH:", f"        {nxt} = {first}"]
        self.body[self._loop_at : self._loop_at] = prologue
        self._loop_at += len(prologue)
        e.line("if PREFETCH:")
        e.line(f"    {cur} = {nxt}")
        e.line(f"    {nxt} = {ahead}")
        e.line("else:")
        e.line(f"    {cur} = {load('t', here, None)}")
        return e.tmp(convert_expr(cur, dtype))

    def render(self) -> tuple[str, KernelDef]:
        self.params.append(("T", "i32"))
        self.params.append(("N", "i64"))
        self.params.append(("BLOCK", "constexpr"))
        # True only in Triton's interpreter: selects exact bf16 emulation (see lower.py).
        self.params.append(("INTERPRET", "constexpr"))
        # Load each streamed buffer one time step ahead (KernelConfig.prefetch).
        self.params.append(("PREFETCH", "constexpr"))
        args = ",\n    ".join(
            f"{n}: tl.constexpr" if t == "constexpr" else n for n, t in self.params
        )
        head = [
            f"def {self.name}(\n    {args},\n):",
            # (N + BLOCK - 1) // BLOCK, not tl.cdiv: a jit function, which TRITON_INTERPRET=1 at import
            # turns into an interpreted one that the real compiler cannot call
            "    for blk in range(tl.program_id(0), (N + BLOCK - 1) // BLOCK, tl.num_programs(0)):",
            # int64 offsets (the interpreter's loop variable is a Python int)
            "        offs = (blk if INTERPRET else blk.to(tl.int64)) * BLOCK + tl.arange(0, BLOCK)",
            "        mask = offs < N",
        ]
        body = [("    " + line) if line else line for line in self.body]
        text = "\n".join(head + body) + "\n"
        return text, KernelDef(self.kind, self.name, tuple(self.params))


def placeholders(gm: GraphLike) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if n.op == "placeholder"]


def returns_of(gm: GraphLike) -> list[fx.Node]:
    output = next(n for n in gm.graph.nodes if n.op == "output")
    return list(output.args[0])


def needed_nodes(nodes: list[fx.Node], stop: set[fx.Node]) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    stack = [n for n in nodes if isinstance(n, fx.Node)]
    while stack:
        node = stack.pop()
        if node in seen or node in stop:
            continue
        seen.add(node)
        stack.extend(node.all_input_nodes)
    return seen


def emit_graph(e: Emitter, gm: GraphLike, wanted: set[fx.Node]) -> None:
    e.graph_module = gm
    for node in gm.graph.nodes:
        if node in wanted and node.op in ("call_function", "get_attr") and node not in e.env:
            e.emit_node(node)


class CommonParams:
    """Parameters and prologue shared by the forward-running kernels."""

    def __init__(self, k: KernelBuilder, spec) -> None:  # noqa: ANN001
        self.k = k
        self.spec = spec
        ni, ns, nc = spec.num_inputs, spec.num_states, spec.num_static
        self.inputs = [k.ptr(f"in{i}") for i in range(ni)]
        self.inits = [k.ptr(f"init{j}") for j in range(ns)]
        self.init_flags = [k.param(f"init{j}_flag", "i32") for j in range(ns)]
        self.statics = [k.ptr(f"st{c}") for c in range(nc)]
        self.strides = [k.param(f"st{c}_stride", "i32") for c in range(nc)]

    def load_statics(self, e: Emitter) -> list[Val]:
        vals = []
        for c, (ptr, stride) in enumerate(zip(self.statics, self.strides)):
            name = e.tmp(load_expr(f"{ptr} + offs * {stride}", self.k.dtype, "mask"))
            vals.append(Val(name, self.k.dtype))
        return vals

    def load_inits(self, e: Emitter, prefix: str) -> list[Val]:
        vals = []
        for j, (ptr, flag) in enumerate(zip(self.inits, self.init_flags)):
            name = f"{prefix}{j}"
            e.line(f"{name} = " + load_expr(f"{ptr} + offs", self.k.dtype, f"mask & ({flag} != 0)"))
            vals.append(Val(name, self.k.dtype))
        return vals
