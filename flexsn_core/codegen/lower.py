"""Lower FX graph nodes (aten ops) to Triton expressions.

Numerics:

* every floating value lives in an fp32 register (fp64 for fp64 nodes), so
  transcendentals run in fp32; for fp16/bf16 cores one time step computes in
  fp32 and values are rounded to the dtype where they leave the step (stored
  outputs, state sequences, saved buffers, and the states and state gradients
  carried to the next step) -- what ``torch.compile`` does for a fused
  elementwise chain; fp32 cores match PyTorch eager op for op;
* bf16 rounding, loads and stores use the native conversions when compiled
  and exact integer bit operations (round-to-nearest-even) in Triton's
  interpreter, whose own bf16 conversion is wrong; a constexpr ``INTERPRET``
  picks one, so the generated source is the same for both;
* division is IEEE (``div_rn``), square roots are correctly rounded.

Functions that ``tl`` lacks in the interpreter (tanh, atan, expm1, log1p,
round...) are expanded inline from exp/log with guarded branches, so the same
generated source runs under ``TRITON_INTERPRET=1`` and on a GPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx

from ..errors import UnsupportedOpError
from . import straight_through

if TYPE_CHECKING:
    from ..trace import GraphLike

__all__ = ["Val", "Emitter", "LOWERINGS", "is_supported", "op_name"]

aten = torch.ops.aten

_TL_NAME: dict[torch.dtype, str] = {
    torch.float32: "tl.float32",
    torch.float64: "tl.float64",
    torch.float16: "tl.float16",
    torch.bfloat16: "tl.bfloat16",
    torch.bool: "tl.int1",
    torch.int8: "tl.int8",
    torch.uint8: "tl.uint8",
    torch.int16: "tl.int16",
    torch.int32: "tl.int32",
    torch.int64: "tl.int64",
}


def physical(dtype: torch.dtype) -> torch.dtype:
    """Register type holding a value of logical ``dtype``."""
    if dtype in (torch.float16, torch.bfloat16, torch.float32):
        return torch.float32
    if dtype not in _TL_NAME:
        raise UnsupportedOpError(
            f"dtype {dtype} cannot be used inside a kernel", op=f"dtype {dtype}"
        )
    return dtype


def tl_type(dtype: torch.dtype) -> str:
    return _TL_NAME[dtype]


def op_name(target: object) -> str:
    name = getattr(target, "__name__", None) or str(target)
    if isinstance(target, torch._ops.OpOverload):
        return f"aten.{target._opname}.{target._overloadname}"
    return name


def float_literal(value: float) -> str:
    if math.isnan(value):
        return 'float("nan")'
    if math.isinf(value):
        return 'float("inf")' if value > 0 else 'float("-inf")'
    text = repr(float(value))
    return f"({text})" if text.startswith("-") else text


def _paren(expr: str) -> str:
    if expr.isidentifier() or expr.replace(".", "", 1).replace("e", "", 1).isdigit():
        return expr
    if expr.startswith("(") and expr.endswith(")") and _balanced_outer(expr):
        return expr
    return f"({expr})"


def _balanced_outer(expr: str) -> bool:
    depth = 0
    for i, ch in enumerate(expr):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0 and i != len(expr) - 1:
                return False
    return True


@dataclass(frozen=True)
class Val:
    """A value in generated code: a variable/expression, or a Python scalar."""

    expr: str
    dtype: torch.dtype | None  # logical dtype; None for a Python scalar literal
    py: bool | int | float | None = None

    @property
    def is_literal(self) -> bool:
        return self.dtype is None


def literal(value: bool | int | float) -> Val:
    if isinstance(value, bool):
        return Val(repr(value), None, value)
    if isinstance(value, int):
        return Val(repr(value) if value >= 0 else f"({value})", None, value)
    return Val(float_literal(value), None, float(value))


class Emitter:
    """Appends lines of Triton code, naming values deterministically."""

    def __init__(self, lines: list[str], indent: str, prefix: str, block: str = "BLOCK") -> None:
        self.lines = lines
        self.indent = indent
        self.prefix = prefix
        self.block = block
        self._n = 0
        self.env: dict[fx.Node, Val] = {}
        self.graph_module: GraphLike | None = None

    # ------------------------------------------------------------- basics
    def line(self, text: str) -> None:
        self.lines.append(self.indent + text)

    def fresh(self) -> str:
        self._n += 1
        return f"{self.prefix}{self._n}"

    def tmp(self, expr: str) -> str:
        name = self.fresh()
        self.line(f"{name} = {expr}")
        return name

    def val(self, arg: Any) -> Val:
        if isinstance(arg, fx.Node):
            return self.env[arg]
        if isinstance(arg, (bool, int, float)):
            return literal(arg)
        raise TypeError(f"unexpected argument {arg!r}")

    # -------------------------------------------------------- conversions
    def as_(self, v: Val, phys: torch.dtype) -> str:
        """``v`` as an expression of register type ``phys``."""
        if v.is_literal:
            py = v.py
            if phys == torch.bool:
                return repr(bool(py))
            if phys.is_floating_point:
                return float_literal(float(py))  # type: ignore[arg-type]
            return repr(int(py)) if int(py) >= 0 else f"({int(py)})"  # type: ignore[arg-type]
        assert v.dtype is not None
        have = physical(v.dtype)
        if have == phys:
            return v.expr
        if phys == torch.bool:
            return f"({_paren(v.expr)} != 0)"
        return f"{_paren(v.expr)}.to({tl_type(phys)})"

    def round_to(self, expr: str, dtype: torch.dtype) -> str:
        """Round an fp32 register expression to ``dtype``'s precision."""
        if dtype == torch.float16:
            return f"{_paren(expr)}.to(tl.float16).to(tl.float32)"
        if dtype == torch.bfloat16:
            # Native conversion when compiled; exact integer emulation in the
            # interpreter, whose own bf16 rounding is wrong (INTERPRET is a constexpr:
            # only one side of the conditional is ever compiled or run).
            x = self.tmp(expr)
            u = f"{x}.to(tl.uint32, bitcast=True)"
            emulated = f"tl.where({x} != {x}, {x}, (({u} + 0x7FFF + (({u} >> 16) & 1)) & 0xFFFF0000).to(tl.float32, bitcast=True))"
            return f"({emulated} if INTERPRET else {x}.to(tl.bfloat16).to(tl.float32))"
        return expr

    def assign(self, node: fx.Node, expr: str, dtype: torch.dtype | None = None) -> Val:
        # fp16/bf16 values stay in fp32 registers within a step (no rounding here);
        # they are rounded where they are stored or carried to the next step.
        dtype = dtype or node_dtype(node)
        name = f"{self.prefix}_{node.name}"
        self.line(f"{name} = {expr}")
        return Val(name, dtype)

    def full(self, value: bool | int | float, dtype: torch.dtype) -> str:
        phys = physical(dtype)
        lit = self.as_(literal(value), phys)
        if dtype in (torch.float16, torch.bfloat16):
            # The constant itself must be representable in the node's dtype.
            rounded = torch.tensor(float(value), dtype=dtype).item()
            lit = float_literal(rounded)
        return f"tl.full([{self.block}], {lit}, {tl_type(phys)})"

    # ------------------------------------------------------------ graphs
    def emit_node(self, node: fx.Node) -> Val:
        if node.op == "get_attr":
            return self._get_attr(node)
        lower = LOWERINGS.get(node.target)  # type: ignore[arg-type]
        if lower is None:
            raise UnsupportedOpError(
                f"{op_name(node.target)} has no Triton lowering in flexsn_core",
                op=op_name(node.target),
            )
        val = lower(self, node)
        self.env[node] = val
        return val

    def _get_attr(self, node: fx.Node) -> Val:
        assert self.graph_module is not None
        value = getattr(self.graph_module, str(node.target))
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise UnsupportedOpError(
                "the core creates a constant tensor with more than one element; "
                "pass it as a static input instead",
                op="constant tensor",
            )
        scalar = value.reshape(()).item()
        val = Val(self.full(scalar, value.dtype), value.dtype)
        name = self.tmp(val.expr)
        val = Val(name, value.dtype)
        self.env[node] = val
        return val


def node_dtype(node: fx.Node) -> torch.dtype:
    meta = node.meta.get("val")
    if isinstance(meta, torch.Tensor):
        return meta.dtype
    raise UnsupportedOpError(
        f"{op_name(node.target)} produced a non-tensor value", op=op_name(node.target)
    )


def _arg_dtype(arg: Any) -> torch.dtype | None:
    if isinstance(arg, fx.Node):
        meta = arg.meta.get("val")
        if isinstance(meta, torch.Tensor):
            return meta.dtype
    return None


def _promote(*args: Any) -> torch.dtype:
    """PyTorch's result dtype for an op over tensors and Python scalars."""
    operands: list[Any] = []
    for a in args:
        if isinstance(a, fx.Node):
            meta = a.meta.get("val")
            operands.append(torch.empty((), dtype=meta.dtype) if isinstance(meta, torch.Tensor) else meta)
        else:
            operands.append(a)
    result = operands[0]
    if not isinstance(result, torch.Tensor):
        result = torch.tensor(result)
    for other in operands[1:]:
        dt = torch.result_type(result, other)
        result = torch.empty((), dtype=dt)
    return result.dtype


# --------------------------------------------------------------------------
# lowering table
# --------------------------------------------------------------------------
Lowering = Callable[[Emitter, fx.Node], Val]
LOWERINGS: dict[object, Lowering] = {}


def lowers(*targets: object) -> Callable[[Lowering], Lowering]:
    def register(fn: Lowering) -> Lowering:
        for target in targets:
            LOWERINGS[target] = fn
        return fn

    return register


def is_supported(target: object) -> bool:
    return target in LOWERINGS


def _kw(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _compute_type(node: fx.Node) -> torch.dtype:
    return physical(node_dtype(node))


def _operands(e: Emitter, node: fx.Node, phys: torch.dtype, *indices: int) -> list[str]:
    return [_paren(e.as_(e.val(node.args[i]), phys)) for i in indices]


# identity / view ops: the kernel works on flat element streams
@lowers(
    aten.detach.default,
    aten.clone.default,
    aten.alias.default,
    aten.lift_fresh_copy.default,
    aten.view.default,
    aten.reshape.default,
    aten._unsafe_view.default,
    aten.expand.default,
    aten.squeeze.default,
    aten.squeeze.dim,
    aten.squeeze.dims,
    aten.unsqueeze.default,
    aten.flatten.using_ints,
    aten.contiguous.default,
    aten.positive.default,
    aten.conj_physical.default,
    aten.resolve_conj.default,
    aten.resolve_neg.default,
)
def _identity(e: Emitter, node: fx.Node) -> Val:
    src = e.val(node.args[0])
    want = node_dtype(node)
    if src.dtype == want:
        return src
    return e.assign(node, e.as_(src, physical(want)))


@lowers(aten._to_copy.default, aten.to.dtype, aten.type_as.default)
def _to_copy(e: Emitter, node: fx.Node) -> Val:
    src = e.val(node.args[0])
    want = node_dtype(node)
    if src.dtype == want:
        return src
    return e.assign(node, e.as_(src, physical(want)))


@lowers(aten.copy.default)
def _copy(e: Emitter, node: fx.Node) -> Val:
    return e.assign(node, e.as_(e.val(node.args[1]), _compute_type(node)))


def _alpha(node: fx.Node) -> Any:
    return node.kwargs.get("alpha", 1)


@lowers(aten.add.Tensor, aten.add.Scalar)
def _add(e: Emitter, node: fx.Node) -> Val:
    c = _compute_type(node)
    spike = straight_through.match(node)
    if spike is not None:  # sg + (h - sg) == h, bit for bit (straight_through.py says why)
        y, h = (_paren(e.as_(e.val(n), c)) for n in spike)
        return e.assign(node, f"tl.where({y} != {y}, {y}, {h})")
    a, b = _operands(e, node, c, 0, 1)
    alpha = _alpha(node)
    if alpha != 1:
        b = f"{b} * {e.as_(literal(alpha), c)}"
    return e.assign(node, f"{a} + {b}")


@lowers(aten.sub.Tensor, aten.sub.Scalar)
def _sub(e: Emitter, node: fx.Node) -> Val:
    c = _compute_type(node)
    a, b = _operands(e, node, c, 0, 1)
    alpha = _alpha(node)
    if alpha != 1:
        b = f"{b} * {e.as_(literal(alpha), c)}"
    return e.assign(node, f"{a} - {b}")


@lowers(aten.rsub.Tensor, aten.rsub.Scalar)
def _rsub(e: Emitter, node: fx.Node) -> Val:
    c = _compute_type(node)
    a, b = _operands(e, node, c, 0, 1)
    alpha = _alpha(node)
    if alpha != 1:
        a = f"{a} * {e.as_(literal(alpha), c)}"
    return e.assign(node, f"{b} - {a}")


@lowers(aten.mul.Tensor, aten.mul.Scalar)
def _mul(e: Emitter, node: fx.Node) -> Val:
    c = _compute_type(node)
    a, b = _operands(e, node, c, 0, 1)
    if c == torch.bool:
        return e.assign(node, f"{a} & {b}")
    return e.assign(node, f"{a} * {b}")


def _fdiv(a: str, b: str, c: torch.dtype) -> str:
    if c == torch.float32:
        return f"tl.math.div_rn({a}, {b})"
    return f"{a} / {b}"


def _power_of_two_reciprocal(value: object) -> float | None:
    """1/value when that is exact (value a power of two), else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value != 0:
        mantissa, _ = math.frexp(float(value))
        if abs(mantissa) == 0.5 and math.isfinite(value):
            return 1.0 / float(value)
    return None


@lowers(aten.div.Tensor, aten.div.Scalar, aten.true_divide.Tensor)
def _div(e: Emitter, node: fx.Node) -> Val:
    c = _compute_type(node)
    a, b = _operands(e, node, c, 0, 1)
    reciprocal = _power_of_two_reciprocal(node.args[1])
    if reciprocal is not None:
        # x / 2**k == x * 2**-k exactly; a multiply instead of an IEEE division.
        return e.assign(node, f"{a} * {float_literal(reciprocal)}")
    return e.assign(node, _fdiv(a, b, c))


@lowers(aten.div.Tensor_mode, aten.div.Scalar_mode)
def _div_mode(e: Emitter, node: fx.Node) -> Val:
    c = _compute_type(node)
    mode = node.kwargs.get("rounding_mode", _kw(node, 2, "rounding_mode"))
    if not c.is_floating_point:
        raise UnsupportedOpError(
            "integer division is not supported in a core; divide floating tensors",
            op=op_name(node.target),
        )
    a, b = _operands(e, node, c, 0, 1)
    q = e.tmp(_fdiv(a, b, c))
    if mode == "floor":
        return e.assign(node, f"tl.floor({q})")
    if mode == "trunc":
        return e.assign(node, f"tl.where({q} < 0, tl.ceil({q}), tl.floor({q}))")
    return e.assign(node, q)


@lowers(aten.remainder.Tensor, aten.remainder.Scalar)
def _remainder(e: Emitter, node: fx.Node) -> Val:
    c = _compute_type(node)
    a, b = _operands(e, node, c, 0, 1)
    q = e.tmp(f"tl.floor({_fdiv(a, b, c)})")
    return e.assign(node, f"{a} - {b} * {q}")


@lowers(aten.fmod.Tensor, aten.fmod.Scalar)
def _fmod(e: Emitter, node: fx.Node) -> Val:
    c = _compute_type(node)
    a, b = _operands(e, node, c, 0, 1)
    q = e.tmp(_fdiv(a, b, c))
    t = e.tmp(f"tl.where({q} < 0, tl.ceil({q}), tl.floor({q}))")
    return e.assign(node, f"{a} - {b} * {t}")


@lowers(aten.neg.default)
def _neg(e: Emitter, node: fx.Node) -> Val:
    (a,) = _operands(e, node, _compute_type(node), 0)
    return e.assign(node, f"-{a}")


@lowers(aten.reciprocal.default)
def _reciprocal(e: Emitter, node: fx.Node) -> Val:
    c = _compute_type(node)
    (a,) = _operands(e, node, c, 0)
    return e.assign(node, _fdiv(e.as_(literal(1.0), c), a, c))


@lowers(aten.addcmul.default)
def _addcmul(e: Emitter, node: fx.Node) -> Val:
    c = _compute_type(node)
    s, t1, t2 = _operands(e, node, c, 0, 1, 2)
    value = node.kwargs.get("value", 1)
    prod = f"{t1} * {t2}" if value == 1 else f"{e.as_(literal(value), c)} * {t1} * {t2}"
    return e.assign(node, f"{s} + {prod}")


@lowers(aten.addcdiv.default)
def _addcdiv(e: Emitter, node: fx.Node) -> Val:
    c = _compute_type(node)
    s, t1, t2 = _operands(e, node, c, 0, 1, 2)
    value = node.kwargs.get("value", 1)
    q = _fdiv(t1, t2, c)
    prod = q if value == 1 else f"{e.as_(literal(value), c)} * {q}"
    return e.assign(node, f"{s} + {prod}")


@lowers(aten.lerp.Scalar, aten.lerp.Tensor)
def _lerp(e: Emitter, node: fx.Node) -> Val:
    c = _compute_type(node)
    a, b, w = _operands(e, node, c, 0, 1, 2)
    return e.assign(node, f"{a} + {w} * ({b} - {a})")


# ------------------------------------------------------------------ powers
def _int_power(e: Emitter, base: str, n: int, c: torch.dtype) -> str:
    if n == 0:
        return e.full(1.0, c) if c.is_floating_point else e.full(1, c)
    result = base
    for _ in range(abs(n) - 1):
        result = f"{result} * {base}"
    if n < 0:
        return _fdiv(e.as_(literal(1.0), c), _paren(result), c)
    return result


def _general_pow(e: Emitter, base: str, exponent: str, c: torch.dtype) -> str:
    """x ** y for tensors, IEEE-style: negative bases need an integer exponent."""
    ax = e.tmp(f"tl.abs({base})")
    mag = e.tmp(f"tl.exp2({exponent} * tl.log2({ax}))")
    is_int = e.tmp(f"tl.floor({exponent}) == {exponent}")
    half = e.tmp(f"{exponent} * 0.5")
    odd = e.tmp(f"{is_int} & (tl.floor({half}) != {half})")
    neg = e.tmp(f"tl.where({odd}, -{mag}, {mag})")
    nan = 'float("nan")'
    one = e.as_(literal(1.0), c)
    # pow(x, 0) == 1 for every x, nan included.
    return (
        f"tl.where({exponent} == 0, {one}, tl.where({base} < 0, tl.where({is_int}, {neg}, {nan}), {mag}))"
    )


@lowers(aten.pow.Tensor_Scalar)
def _pow_tensor_scalar(e: Emitter, node: fx.Node) -> Val:
    c = _compute_type(node)
    (base,) = _operands(e, node, c, 0)
    exp = node.args[1]
    if isinstance(exp, (int, float)) and float(exp).is_integer() and abs(exp) <= 8:
        return e.assign(node, _int_power(e, base, int(exp), c))
    if exp == 0.5:
        return e.assign(node, f"tl.sqrt_rn({base})" if c == torch.float32 else f"tl.sqrt({base})")
    if exp == -0.5:
        return e.assign(node, f"tl.math.rsqrt({base})")
    return e.assign(node, _general_pow(e, base, e.as_(literal(exp), c), c))


@lowers(aten.pow.Tensor_Tensor, aten.pow.Scalar)
def _pow(e: Emitter, node: fx.Node) -> Val:
    c = _compute_type(node)
    base, exp = _operands(e, node, c, 0, 1)
    return e.assign(node, _general_pow(e, base, exp, c))


# ------------------------------------------------------------- comparisons
def _comparison(symbol: str) -> Lowering:
    def lower(e: Emitter, node: fx.Node) -> Val:
        c = physical(_promote(node.args[0], node.args[1]))
        a, b = _operands(e, node, c, 0, 1)
        return e.assign(node, f"{a} {symbol} {b}")

    return lower


for _sym, _ops in (
    ("==", (aten.eq.Tensor, aten.eq.Scalar)),
    ("!=", (aten.ne.Tensor, aten.ne.Scalar)),
    ("<", (aten.lt.Tensor, aten.lt.Scalar)),
    ("<=", (aten.le.Tensor, aten.le.Scalar)),
    (">", (aten.gt.Tensor, aten.gt.Scalar)),
    (">=", (aten.ge.Tensor, aten.ge.Scalar)),
):
    lowers(*_ops)(_comparison(_sym))


@lowers(aten.isnan.default)
def _isnan(e: Emitter, node: fx.Node) -> Val:
    a = e.val(node.args[0])
    x = _paren(e.as_(a, physical(a.dtype or torch.float32)))
    return e.assign(node, f"{x} != {x}")


@lowers(aten.isinf.default)
def _isinf(e: Emitter, node: fx.Node) -> Val:
    a = e.val(node.args[0])
    x = _paren(e.as_(a, physical(a.dtype or torch.float32)))
    return e.assign(node, f'tl.abs({x}) == float("inf")')


# ----------------------------------------------------------------- logical
def _logical(symbol: str) -> Lowering:
    def lower(e: Emitter, node: fx.Node) -> Val:
        a, b = _operands(e, node, torch.bool, 0, 1)
        return e.assign(node, f"{a} {symbol} {b}")

    return lower


lowers(aten.logical_and.default)(_logical("&"))
lowers(aten.logical_or.default)(_logical("|"))
lowers(aten.logical_xor.default)(_logical("^"))


@lowers(aten.logical_not.default)
def _logical_not(e: Emitter, node: fx.Node) -> Val:
    (a,) = _operands(e, node, torch.bool, 0)
    return e.assign(node, f"{a} == 0")


def _bitwise(symbol: str) -> Lowering:
    def lower(e: Emitter, node: fx.Node) -> Val:
        c = _compute_type(node)
        if c.is_floating_point:
            raise UnsupportedOpError("bitwise ops need bool or integer tensors", op=op_name(node.target))
        a, b = _operands(e, node, c, 0, 1)
        return e.assign(node, f"{a} {symbol} {b}")

    return lower


lowers(aten.bitwise_and.Tensor, aten.bitwise_and.Scalar)(_bitwise("&"))
lowers(aten.bitwise_or.Tensor, aten.bitwise_or.Scalar)(_bitwise("|"))
lowers(aten.bitwise_xor.Tensor, aten.bitwise_xor.Scalar)(_bitwise("^"))


@lowers(aten.bitwise_not.default)
def _bitwise_not(e: Emitter, node: fx.Node) -> Val:
    c = _compute_type(node)
    (a,) = _operands(e, node, c, 0)
    if c == torch.bool:
        return e.assign(node, f"{a} == 0")
    return e.assign(node, f"~{a}")


# ------------------------------------------------------------------ select
@lowers(aten.where.self, aten.where.ScalarSelf, aten.where.ScalarOther, aten.where.Scalar)
def _where(e: Emitter, node: fx.Node) -> Val:
    c = _compute_type(node)
    (cond,) = _operands(e, node, torch.bool, 0)
    a, b = _operands(e, node, c, 1, 2)
    return e.assign(node, f"tl.where({cond}, {a}, {b})")


@lowers(aten.masked_fill.Scalar, aten.masked_fill.Tensor)
def _masked_fill(e: Emitter, node: fx.Node) -> Val:
    c = _compute_type(node)
    (x,) = _operands(e, node, c, 0)
    (mask,) = _operands(e, node, torch.bool, 1)
    (value,) = _operands(e, node, c, 2)
    return e.assign(node, f"tl.where({mask}, {value}, {x})")


# ------------------------------------------------------------ clamp family
def _clamp_expr(e: Emitter, x: str, lo: str | None, hi: str | None) -> str:
    # `x < lo` is False for NaN, so NaN passes through as in torch.clamp.
    if lo is not None:
        x = e.tmp(f"tl.where({x} < {lo}, {lo}, {x})")
    if hi is not None:
        x = f"tl.where({x} > {hi}, {hi}, {x})"
    return x


@lowers(aten.clamp.default, aten.clamp.Tensor)
def _clamp(e: Emitter, node: fx.Node) -> Val:
    c = _compute_type(node)
    (x,) = _operands(e, node, c, 0)
    lo_arg = _kw(node, 1, "min")
    hi_arg = _kw(node, 2, "max")
    lo = None if lo_arg is None else _paren(e.as_(e.val(lo_arg), c))
    hi = None if hi_arg is None else _paren(e.as_(e.val(hi_arg), c))
    return e.assign(node, _clamp_expr(e, x, lo, hi))


@lowers(aten.clamp_min.default, aten.clamp_min.Tensor)
def _clamp_min(e: Emitter, node: fx.Node) -> Val:
    c = _compute_type(node)
    x, lo = _operands(e, node, c, 0, 1)
    return e.assign(node, _clamp_expr(e, x, lo, None))


@lowers(aten.clamp_max.default, aten.clamp_max.Tensor)
def _clamp_max(e: Emitter, node: fx.Node) -> Val:
    c = _compute_type(node)
    x, hi = _operands(e, node, c, 0, 1)
    return e.assign(node, _clamp_expr(e, x, None, hi))


@lowers(aten.hardtanh.default)
def _hardtanh(e: Emitter, node: fx.Node) -> Val:
    c = _compute_type(node)
    (x,) = _operands(e, node, c, 0)
    lo = e.as_(literal(_kw(node, 1, "min_val", -1.0)), c)
    hi = e.as_(literal(_kw(node, 2, "max_val", 1.0)), c)
    return e.assign(node, _clamp_expr(e, x, lo, hi))


@lowers(aten.minimum.default)
def _minimum(e: Emitter, node: fx.Node) -> Val:
    c = _compute_type(node)
    a, b = _operands(e, node, c, 0, 1)
    return e.assign(node, f"tl.where(({a} < {b}) | ({a} != {a}), {a}, {b})")


@lowers(aten.maximum.default)
def _maximum(e: Emitter, node: fx.Node) -> Val:
    c = _compute_type(node)
    a, b = _operands(e, node, c, 0, 1)
    return e.assign(node, f"tl.where(({a} > {b}) | ({a} != {a}), {a}, {b})")


@lowers(aten.fmin.default)
def _fmin(e: Emitter, node: fx.Node) -> Val:
    c = _compute_type(node)
    a, b = _operands(e, node, c, 0, 1)
    return e.assign(node, f"tl.where(({a} < {b}) | ({b} != {b}), {a}, {b})")


@lowers(aten.fmax.default)
def _fmax(e: Emitter, node: fx.Node) -> Val:
    c = _compute_type(node)
    a, b = _operands(e, node, c, 0, 1)
    return e.assign(node, f"tl.where(({a} > {b}) | ({b} != {b}), {a}, {b})")


@lowers(aten.relu.default)
def _relu(e: Emitter, node: fx.Node) -> Val:
    c = _compute_type(node)
    (x,) = _operands(e, node, c, 0)
    return e.assign(node, f"tl.where({x} < 0, {e.as_(literal(0), c)}, {x})")


@lowers(aten.leaky_relu.default)
def _leaky_relu(e: Emitter, node: fx.Node) -> Val:
    c = _compute_type(node)
    (x,) = _operands(e, node, c, 0)
    slope = e.as_(literal(_kw(node, 1, "negative_slope", 0.01)), c)
    return e.assign(node, f"tl.where({x} > 0, {x}, {x} * {slope})")


@lowers(aten.threshold.default)
def _threshold(e: Emitter, node: fx.Node) -> Val:
    c = _compute_type(node)
    x, th, value = _operands(e, node, c, 0, 1, 2)
    return e.assign(node, f"tl.where({x} <= {th}, {value}, {x})")


@lowers(aten.heaviside.default)
def _heaviside(e: Emitter, node: fx.Node) -> Val:
    c = _compute_type(node)
    x, values = _operands(e, node, c, 0, 1)
    one, zero = e.as_(literal(1.0), c), e.as_(literal(0.0), c)
    return e.assign(node, f"tl.where({x} == 0, {values}, tl.where({x} > 0, {one}, {zero}))")


# ------------------------------------------------------------------ unary
@lowers(aten.abs.default)
def _abs(e: Emitter, node: fx.Node) -> Val:
    (x,) = _operands(e, node, _compute_type(node), 0)
    return e.assign(node, f"tl.abs({x})")


@lowers(aten.sign.default, aten.sgn.default)
def _sign(e: Emitter, node: fx.Node) -> Val:
    c = _compute_type(node)
    (x,) = _operands(e, node, c, 0)
    one, neg_one, zero = (e.as_(literal(v), c) for v in (1, -1, 0))
    return e.assign(node, f"tl.where({x} > 0, {one}, tl.where({x} < 0, {neg_one}, {zero}))")


def _float_unary(template: str) -> Lowering:
    def lower(e: Emitter, node: fx.Node) -> Val:
        c = _compute_type(node)
        if not c.is_floating_point:
            raise UnsupportedOpError(
                f"{op_name(node.target)} needs a floating tensor", op=op_name(node.target)
            )
        (x,) = _operands(e, node, c, 0)
        return e.assign(node, template.format(x=x))

    return lower


for _template, _ops in (
    ("tl.exp({x})", (aten.exp.default,)),
    ("tl.exp2({x})", (aten.exp2.default,)),
    ("tl.log({x})", (aten.log.default,)),
    ("tl.log2({x})", (aten.log2.default,)),
    ("tl.log2({x}) * 0.30102999566398120", (aten.log10.default,)),
    ("tl.sin({x})", (aten.sin.default,)),
    ("tl.cos({x})", (aten.cos.default,)),
    ("tl.math.erf({x})", (aten.erf.default,)),
    ("tl.floor({x})", (aten.floor.default,)),
    ("tl.ceil({x})", (aten.ceil.default,)),
    ("tl.math.rsqrt({x})", (aten.rsqrt.default,)),
    ("tl.where({x} < 0, tl.ceil({x}), tl.floor({x}))", (aten.trunc.default, aten.fix.default)),
    ("{x} - tl.where({x} < 0, tl.ceil({x}), tl.floor({x}))", (aten.frac.default,)),
):
    lowers(*_ops)(_float_unary(_template))


@lowers(aten.sqrt.default)
def _sqrt(e: Emitter, node: fx.Node) -> Val:
    c = _compute_type(node)
    (x,) = _operands(e, node, c, 0)
    return e.assign(node, f"tl.sqrt_rn({x})" if c == torch.float32 else f"tl.sqrt({x})")


@lowers(aten.sigmoid.default)
def _sigmoid(e: Emitter, node: fx.Node) -> Val:
    # A fast (approximate, <= 2 ulp) reciprocal: exp is approximate already, and
    # an IEEE division here would make compute, not memory, the bottleneck.
    c = _compute_type(node)
    (x,) = _operands(e, node, c, 0)
    one = e.as_(literal(1.0), c)
    return e.assign(node, f"{one} / ({one} + tl.exp(-{x}))")


@lowers(aten.tanh.default)
def _tanh(e: Emitter, node: fx.Node) -> Val:
    # Cephes tanhf: an odd polynomial near 0 keeps the relative error small;
    # 1 - 2 / (exp(2|x|) + 1) elsewhere (exp overflow gives exactly 1).
    c = _compute_type(node)
    (x,) = _operands(e, node, c, 0)
    z = e.tmp(f"{x} * {x}")
    poly = e.tmp(
        f"((((-5.70498872745e-3 * {z} + 2.06390887954e-2) * {z} - 5.37397155531e-2) * {z}"
        f" + 1.33314422036e-1) * {z} - 3.33332819422e-1) * {z} * {x} + {x}"
    )
    ax = e.tmp(f"tl.abs({x})")
    big = e.tmp(f"1.0 - {_fdiv('2.0', f'(tl.exp(2.0 * {ax}) + 1.0)', c)}")
    return e.assign(
        node, f"tl.where({ax} < 0.625, {poly}, tl.where({x} < 0, -{big}, {big}))"
    )


@lowers(aten.atan.default)
def _atan(e: Emitter, node: fx.Node) -> Val:
    # Cephes atanf: reduce |x| to [0, tan(pi/8)] then an odd polynomial.
    c = _compute_type(node)
    (x,) = _operands(e, node, c, 0)
    ax = e.tmp(f"tl.abs({x})")
    hi = e.tmp(f"{ax} > 2.414213562373095")
    mid = e.tmp(f"({ax} > 0.4142135623730950) & ({hi} == 0)")
    safe = e.tmp(f"tl.where({hi}, {ax}, 1.0)")
    r = e.tmp(
        f"tl.where({hi}, -{_fdiv('1.0', safe, c)}, "
        f"tl.where({mid}, {_fdiv(f'({ax} - 1.0)', f'({ax} + 1.0)', c)}, {ax}))"
    )
    base = e.tmp(f"tl.where({hi}, 1.5707963267948966, tl.where({mid}, 0.7853981633974483, 0.0))")
    z = e.tmp(f"{r} * {r}")
    y = e.tmp(
        f"{base} + (((8.05374449538e-2 * {z} - 1.38776856032e-1) * {z} + 1.99777106478e-1) * {z}"
        f" - 3.33329491539e-1) * {z} * {r} + {r}"
    )
    return e.assign(node, f"tl.where({x} < 0, -{y}, {y})")


@lowers(aten.expm1.default)
def _expm1(e: Emitter, node: fx.Node) -> Val:
    # Kahan's trick: (u - 1) * x / log(u) cancels the rounding error of exp.
    c = _compute_type(node)
    (x,) = _operands(e, node, c, 0)
    u = e.tmp(f"tl.exp({x})")
    lu = e.tmp(f"tl.log({u})")
    safe = e.tmp(f"tl.where({lu} == 0, 1.0, {lu})")
    body = _fdiv(f"(({u} - 1.0) * {x})", safe, c)
    return e.assign(
        node,
        f'tl.where({u} == 1.0, {x}, tl.where({u} - 1.0 == -1.0, -1.0, '
        f'tl.where({u} == float("inf"), {u}, {body})))',
    )


@lowers(aten.log1p.default)
def _log1p(e: Emitter, node: fx.Node) -> Val:
    # Goldberg's trick: log(u) * x / (u - 1) with u = 1 + x.
    c = _compute_type(node)
    (x,) = _operands(e, node, c, 0)
    u = e.tmp(f"1.0 + {x}")
    d = e.tmp(f"tl.where({u} == 1.0, 1.0, {u} - 1.0)")
    body = _fdiv(f"(tl.log({u}) * {x})", d, c)
    return e.assign(
        node, f'tl.where({u} == 1.0, {x}, tl.where({u} == float("inf"), {u}, {body}))'
    )


@lowers(aten.round.default)
def _round(e: Emitter, node: fx.Node) -> Val:
    # Round half to even, like torch.round; |x| >= 2**23 is already integral.
    c = _compute_type(node)
    (x,) = _operands(e, node, c, 0)
    r = e.tmp(f"tl.floor({x} + 0.5)")
    half = e.tmp(f"{r} * 0.5")
    fixed = e.tmp(f"tl.where(({r} - {x} == 0.5) & (tl.floor({half}) != {half}), {r} - 1.0, {r})")
    return e.assign(node, f"tl.where(tl.abs({x}) >= 8388608.0, {x}, {fixed})")


# ---------------------------------------------------------------- creation
def _fill_value(node: fx.Node, index: int) -> Any:
    value = _kw(node, index, "fill_value")
    return value


@lowers(aten.full_like.default, aten.full.default, aten.new_full.default)
def _full(e: Emitter, node: fx.Node) -> Val:
    index = 2 if node.target is aten.new_full.default else 1
    value = _fill_value(node, index)
    dtype = node_dtype(node)
    if isinstance(value, fx.Node):
        return e.assign(node, e.as_(e.val(value), physical(dtype)))
    return e.assign(node, e.full(value, dtype))


@lowers(
    aten.zeros_like.default,
    aten.zeros.default,
    aten.new_zeros.default,
    aten.empty_like.default,
    aten.new_empty.default,
    aten.empty.memory_format,
)
def _zeros(e: Emitter, node: fx.Node) -> Val:
    return e.assign(node, e.full(0, node_dtype(node)))


@lowers(aten.ones_like.default, aten.ones.default, aten.new_ones.default)
def _ones(e: Emitter, node: fx.Node) -> Val:
    return e.assign(node, e.full(1, node_dtype(node)))


@lowers(aten.scalar_tensor.default)
def _scalar_tensor(e: Emitter, node: fx.Node) -> Val:
    return e.assign(node, e.full(node.args[0], node_dtype(node)))


@lowers(aten.fill.Scalar)
def _fill(e: Emitter, node: fx.Node) -> Val:
    return e.assign(node, e.full(node.args[1], node_dtype(node)))


# --------------------------------------------------------- backward helpers
@lowers(aten.sigmoid_backward.default)
def _sigmoid_backward(e: Emitter, node: fx.Node) -> Val:
    c = _compute_type(node)
    g, y = _operands(e, node, c, 0, 1)
    return e.assign(node, f"{g} * (1.0 - {y}) * {y}")


@lowers(aten.tanh_backward.default)
def _tanh_backward(e: Emitter, node: fx.Node) -> Val:
    c = _compute_type(node)
    g, y = _operands(e, node, c, 0, 1)
    return e.assign(node, f"{g} * (1.0 - {y} * {y})")


@lowers(aten.threshold_backward.default)
def _threshold_backward(e: Emitter, node: fx.Node) -> Val:
    c = _compute_type(node)
    g, x, th = _operands(e, node, c, 0, 1, 2)
    return e.assign(node, f"tl.where({x} <= {th}, {e.as_(literal(0), c)}, {g})")


@lowers(aten.hardtanh_backward.default)
def _hardtanh_backward(e: Emitter, node: fx.Node) -> Val:
    c = _compute_type(node)
    g, x, lo, hi = _operands(e, node, c, 0, 1, 2, 3)
    return e.assign(node, f"tl.where(({x} <= {lo}) | ({x} >= {hi}), {e.as_(literal(0), c)}, {g})")


@lowers(aten.leaky_relu_backward.default)
def _leaky_relu_backward(e: Emitter, node: fx.Node) -> Val:
    c = _compute_type(node)
    g, x, slope = _operands(e, node, c, 0, 1, 2)
    return e.assign(node, f"tl.where({x} > 0, {g}, {g} * {slope})")
