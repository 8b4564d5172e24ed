"""Generate the four multi-step Triton kernels of a core as one module.

Kinds (names are contracts used in manifests and by the runtime):

``inference``        outputs and state sequences, ``[T, N]`` each
``inference_final``  outputs per step, states only at the end
``forward``          training forward: outputs, optional state sequences,
                     final states and the extra saved buffers of the save plan
``backward``         reverse-time loop: gradients of inputs, initial states and
                     static inputs (summed over time)

Each program owns ``BLOCK`` neurons and loops over time; ``T`` and ``N`` are
runtime arguments, so one binary serves every sequence length and batch size.
Offsets are int64. Optional tensors (initial states, incoming gradients) come
with an ``*_flag`` argument: a zero flag masks the load off, so "no tensor"
costs no memory traffic and needs no second binary.

The generated text depends only on the spec and the traced graphs, never on
time, paths or ids, so the same spec gives the same bytes on every machine.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.fx as fx

from ..trace import GraphLike, TracedCore
from .lower import Emitter, Val, physical, tl_type
from .partition import SavePlan, plan_saved, stored_dtype

__all__ = ["FlexSNInfo", "KernelDef", "GeneratedKernels", "generate_kernels", "KINDS"]

KINDS = ("inference", "inference_final", "forward", "backward")

_PTR_TYPE = {
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


class FlexSNInfo(NamedTuple):
    """Metadata of one kernel path (fields of SpikingJelly's FlexSNInfo).

    ``fwd_core_args`` / ``fwd_core_returns`` are graph node names;
    ``fwd_core_recipients`` the kernel buffers the returns land in;
    ``fwd_kernel_returns`` every buffer the kernel writes;
    ``c2k_return_mapping`` the indices of ``fwd_kernel_returns`` that the
    backward kernel reads back (training path only).
    """

    num_inputs: int
    num_outputs: int
    num_states: int
    fwd_core_args: tuple[str, ...]
    fwd_core_returns: tuple[str, ...]
    fwd_core_recipients: tuple[str, ...]
    fwd_kernel_returns: tuple[str, ...]
    num_fwd_kernel_returns: int
    c2k_return_mapping: tuple[int, ...]


@dataclass(frozen=True)
class KernelDef:
    kind: str
    name: str
    params: tuple[tuple[str, str], ...]  # (name, Triton signature type); BLOCK is "constexpr"


@dataclass
class GeneratedKernels:
    source: str
    kernels: dict[str, KernelDef]
    infos: dict[str, FlexSNInfo]
    plan: SavePlan | None
    #: per returned value (outputs then new states): differentiable or not
    differentiable_returns: tuple[bool, ...]
    sha256: str = field(init=False)

    def __post_init__(self) -> None:
        self.sha256 = hashlib.sha256(self.source.encode()).hexdigest()

    @property
    def trainable(self) -> bool:
        return "backward" in self.kernels


# --------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------
def load_expr(ptr: str, dtype: torch.dtype, mask: str) -> str:
    raw = f"tl.load({ptr}, mask={mask}, other=0)"
    if dtype == torch.bfloat16:
        emulated = f"({raw}.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)"
        return f"({emulated} if INTERPRET else {raw}.to(tl.float32))"
    if dtype == torch.float16:
        return f"{raw}.to(tl.float32)"
    return raw


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


class _Kernel:
    """Accumulates the parameter list and body of one kernel function."""

    def __init__(self, kind: str, spec_dtype: torch.dtype) -> None:
        self.kind = kind
        self.name = f"flexsn_{kind}"
        self.dtype = spec_dtype
        self.params: list[tuple[str, str]] = []
        self.body: list[str] = []

    def param(self, name: str, ty: str) -> str:
        self.params.append((name, ty))
        return name

    def ptr(self, name: str, dtype: torch.dtype | None = None) -> str:
        return self.param(name, _PTR_TYPE[dtype or self.dtype])

    def emitter(self, indent: str, prefix: str) -> Emitter:
        return Emitter(self.body, indent, prefix)

    def line(self, text: str, indent: str = "    ") -> None:
        self.body.append(indent + text)

    def render(self) -> tuple[str, KernelDef]:
        self.params.append(("T", "i32"))
        self.params.append(("N", "i64"))
        self.params.append(("BLOCK", "constexpr"))
        # True only in Triton's interpreter: selects exact bf16 emulation (see lower.py).
        self.params.append(("INTERPRET", "constexpr"))
        args = ",\n    ".join(
            f"{n}: tl.constexpr" if t == "constexpr" else n for n, t in self.params
        )
        head = [
            f"def {self.name}(\n    {args},\n):",
            "    pid = tl.program_id(0)",
            "    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)",
            "    mask = offs < N",
        ]
        text = "\n".join(head + self.body) + "\n"
        return text, KernelDef(self.kind, self.name, tuple(self.params))


def _placeholders(gm: GraphLike) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if n.op == "placeholder"]


def _returns(gm: GraphLike) -> list[fx.Node]:
    output = next(n for n in gm.graph.nodes if n.op == "output")
    return list(output.args[0])


def _needed(nodes: list[fx.Node], stop: set[fx.Node]) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    stack = [n for n in nodes if isinstance(n, fx.Node)]
    while stack:
        node = stack.pop()
        if node in seen or node in stop:
            continue
        seen.add(node)
        stack.extend(node.all_input_nodes)
    return seen


def _emit_graph(e: Emitter, gm: GraphLike, wanted: set[fx.Node]) -> None:
    e.graph_module = gm
    for node in gm.graph.nodes:
        if node in wanted and node.op in ("call_function", "get_attr") and node not in e.env:
            e.emit_node(node)


class _Common:
    """Parameters and prologue shared by the forward-running kernels."""

    def __init__(self, k: _Kernel, spec) -> None:  # noqa: ANN001
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


def _forward_kernel(
    kind: str,
    gm: GraphLike,
    traced: TracedCore,
    extras: list[fx.Node],
    *,
    state_seqs: str,  # "always" | "flag" | "never"
    finals: bool,
) -> tuple[str, KernelDef]:
    spec = traced.spec
    dtype = spec.torch_dtype
    k = _Kernel(kind, dtype)
    common = _Common(k, spec)
    outs = [k.ptr(f"out{i}") for i in range(spec.num_outputs)]
    sseqs = [k.ptr(f"sseq{j}") for j in range(spec.num_states)] if state_seqs != "never" else []
    store_flag = k.param("store_sseq", "i32") if state_seqs == "flag" else None
    fins = [k.ptr(f"fin{j}") for j in range(spec.num_states)] if finals else []
    savs = [k.ptr(f"sav{m}", stored_dtype(_node_dtype(n))) for m, n in enumerate(extras)]

    pre = k.emitter("    ", "p")
    static_vals = common.load_statics(pre)
    state_vals = common.load_inits(pre, "s")
    k.line("for t in range(T):")
    k.line("row = t * N", "        ")
    e = k.emitter("        ", "v")
    params = _placeholders(gm)
    for i, node in enumerate(params[: spec.num_inputs]):
        name = e.tmp(load_expr(f"{common.inputs[i]} + row + offs", dtype, "mask"))
        e.env[node] = Val(name, dtype)
    for j, node in enumerate(params[spec.num_inputs : spec.num_inputs + spec.num_states]):
        e.env[node] = state_vals[j]
    for c, node in enumerate(params[spec.num_inputs + spec.num_states :]):
        e.env[node] = static_vals[c]
    returns = _returns(gm)
    user = returns[: spec.num_outputs + spec.num_states]
    _emit_graph(e, gm, _needed(user + extras, set(params)))
    smask = "mask" if store_flag is None else f"mask & ({store_flag} != 0)"
    for i, ptr in enumerate(outs):
        e.line(store_line(f"{ptr} + row + offs", e.env[user[i]], dtype, "mask", e))
    for j, ptr in enumerate(sseqs):
        e.line(store_line(f"{ptr} + row + offs", e.env[user[spec.num_outputs + j]], dtype, smask, e))
    for m, (ptr, node) in enumerate(zip(savs, extras)):
        e.line(store_line(f"{ptr} + row + offs", e.env[node], stored_dtype(_node_dtype(node)), "mask", e))
    # Rebind the loop-carried states through temporaries (a core may swap states).
    # States carried to the next step are rounded to the dtype, as the loop would store them.
    new_states = [
        e.tmp(e.round_to(e.as_(e.env[user[spec.num_outputs + j]], physical(dtype)), dtype))
        for j in range(spec.num_states)
    ]
    for j, name in enumerate(new_states):
        e.line(f"{state_vals[j].expr} = {name}")
    post = k.emitter("    ", "q")
    for j, ptr in enumerate(fins):
        post.line(store_line(f"{ptr} + offs", state_vals[j], dtype, "mask", post))
    return k.render()


def _node_dtype(node: fx.Node) -> torch.dtype:
    return node.meta["val"].dtype


def _backward_kernel(traced: TracedCore, plan: SavePlan) -> tuple[str, KernelDef]:
    spec = traced.spec
    dtype = spec.torch_dtype
    fw, bw = traced.forward, traced.backward
    assert fw is not None and bw is not None
    ni, ns, no, nc = spec.num_inputs, spec.num_states, spec.num_outputs, spec.num_static
    k = _Kernel("backward", dtype)
    common = _Common(k, spec)
    outs = [k.ptr(f"out{i}") for i in range(no)]
    sseqs = [k.ptr(f"sseq{j}") for j in range(ns)]
    fw_nodes = {n.name: n for n in fw.graph.nodes}
    extras = [fw_nodes[v.node] for v in plan.extras]
    savs = [k.ptr(f"sav{m}", stored_dtype(_node_dtype(n))) for m, n in enumerate(extras)]
    gouts = [k.ptr(f"gout{i}") for i in range(no)]
    gout_flags = [k.param(f"gout{i}_flag", "i32") for i in range(no)]
    gsseqs = [k.ptr(f"gsseq{j}") for j in range(ns)]
    gsseq_flags = [k.param(f"gsseq{j}_flag", "i32") for j in range(ns)]
    gfins = [k.ptr(f"gfin{j}") for j in range(ns)]
    gfin_flags = [k.param(f"gfin{j}_flag", "i32") for j in range(ns)]
    gins = [k.ptr(f"gin{i}") for i in range(ni)]
    ginits = [k.ptr(f"ginit{j}") for j in range(ns)]
    gsts = [k.ptr(f"gst{c}", torch.float32) for c in range(nc)]
    req = spec.requires_grad
    assert req is not None

    pre = k.emitter("    ", "p")
    static_vals = common.load_statics(pre)
    needs_init = any(v.kind == "state_prev" for v in plan.loads)
    init_vals = common.load_inits(pre, "s") if needs_init else []
    carries = []
    for j in range(ns):
        name = f"g{j}"
        pre.line(f"{name} = " + load_expr(f"{gfins[j]} + offs", dtype, f"mask & ({gfin_flags[j]} != 0)"))
        carries.append(Val(name, dtype))
    accs = []
    for c in range(nc):
        if req[ni + ns + c]:
            pre.line(f"acc{c} = tl.zeros([BLOCK], tl.float32)")
            accs.append(c)

    k.line("for i in range(T):")
    ind = "        "
    k.line("t = T - 1 - i", ind)
    k.line("row = t * N", ind)
    f = k.emitter(ind, "f")
    fw_params = _placeholders(fw)
    for v in plan.loads:
        node = fw_nodes[v.node]
        vd = _node_dtype(node)
        if v.kind == "input":
            expr = load_expr(f"{common.inputs[v.index]} + row + offs", vd, "mask")
        elif v.kind == "output":
            expr = load_expr(f"{outs[v.index]} + row + offs", vd, "mask")
        elif v.kind == "state_new":
            expr = load_expr(f"{sseqs[v.index]} + row + offs", vd, "mask")
        elif v.kind == "extra":
            expr = load_expr(f"{savs[v.index]} + row + offs", stored_dtype(vd), "mask")
        elif v.kind == "state_prev":
            prev = f.tmp(load_expr(f"{sseqs[v.index]} + (row - N) + offs", vd, "mask & (t > 0)"))
            expr = f"tl.where(t > 0, {prev}, {init_vals[v.index].expr})"
        else:  # static
            f.env[node] = static_vals[v.index]
            continue
        f.env[node] = Val(f.tmp(expr), vd)
    for node in fw_params:
        if node not in f.env and node.name in plan.recompute:  # pragma: no cover
            raise AssertionError("internal: recompute needs an unloaded primal")
    recompute = {fw_nodes[name] for name in plan.recompute}
    _emit_graph(f, fw, recompute)

    b = k.emitter(ind, "b")
    bw_params = _placeholders(bw)
    saved_params, tangent_params = bw_params[: traced.num_saved], bw_params[traced.num_saved :]
    fw_returns = _returns(fw)
    saved_nodes = fw_returns[no + ns : no + ns + traced.num_saved]
    for param, src in zip(saved_params, saved_nodes):
        b.env[param] = f.env[src]
    for r, tangent in enumerate(traced.tangent_of):
        if tangent is None:
            continue
        if r < no:
            expr = load_expr(f"{gouts[r]} + row + offs", dtype, f"mask & ({gout_flags[r]} != 0)")
            b.env[tangent_params[tangent]] = Val(b.tmp(expr), dtype)
        else:
            j = r - no
            seq = b.tmp(load_expr(f"{gsseqs[j]} + row + offs", dtype, f"mask & ({gsseq_flags[j]} != 0)"))
            total = b.round_to(f"{carries[j].expr} + {seq}", dtype)
            b.env[tangent_params[tangent]] = Val(b.tmp(total), dtype)
    grads = _returns(bw)
    _emit_graph(b, bw, _needed([g for g in grads if isinstance(g, fx.Node)], set(bw_params)))

    def grad_val(p: int) -> Val:
        g = grads[p] if p < len(grads) else None
        if isinstance(g, fx.Node):
            return b.env[g]
        return Val(b.tmp(b.full(0.0, dtype)), dtype)

    for i in range(ni):
        if req[i]:
            b.line(store_line(f"{gins[i]} + row + offs", grad_val(i), dtype, "mask", b))
    new_carries = [b.tmp(b.round_to(b.as_(grad_val(ni + j), physical(dtype)), dtype)) for j in range(ns)]
    for c in accs:
        gv = grad_val(ni + ns + c)
        b.line(f"acc{c} = acc{c} + {b.as_(gv, torch.float32)}")
    for j, name in enumerate(new_carries):
        b.line(f"{carries[j].expr} = {name}")
    post = k.emitter("    ", "q")
    for j in range(ns):
        if req[ni + j]:
            post.line(store_line(f"{ginits[j]} + offs", carries[j], dtype, "mask", post))
    for c in accs:
        post.line(f"tl.store({gsts[c]} + offs, acc{c}, mask=mask)")
    return k.render()


def _info(
    spec, gm: GraphLike, recipients: list[str], kernel_returns: list[str], c2k: tuple[int, ...] = ()  # noqa: ANN001
) -> FlexSNInfo:
    returns = _returns(gm)
    return FlexSNInfo(
        num_inputs=spec.num_inputs,
        num_outputs=spec.num_outputs,
        num_states=spec.num_states,
        fwd_core_args=tuple(n.name for n in _placeholders(gm)),
        fwd_core_returns=tuple(getattr(n, "name", str(n)) for n in returns),
        fwd_core_recipients=tuple(recipients),
        fwd_kernel_returns=tuple(kernel_returns),
        num_fwd_kernel_returns=len(kernel_returns),
        c2k_return_mapping=c2k,
    )


def generate_kernels(traced: TracedCore) -> GeneratedKernels:
    """Generate the kernel module for a traced core."""
    spec = traced.spec
    no, ns = spec.num_outputs, spec.num_states
    out_names = [f"out{i}" for i in range(no)]
    sseq_names = [f"sseq{j}" for j in range(ns)]
    fin_names = [f"fin{j}" for j in range(ns)]
    texts: list[str] = []
    kernels: dict[str, KernelDef] = {}
    infos: dict[str, FlexSNInfo] = {}

    text, kd = _forward_kernel("inference", traced.inference, traced, [], state_seqs="always", finals=False)
    texts.append(text)
    kernels[kd.kind] = kd
    infos["inference"] = _info(spec, traced.inference, out_names + sseq_names, out_names + sseq_names)
    text, kd = _forward_kernel(
        "inference_final", traced.inference, traced, [], state_seqs="never", finals=True
    )
    texts.append(text)
    kernels[kd.kind] = kd
    infos["inference_final"] = _info(spec, traced.inference, out_names + fin_names, out_names + fin_names)

    plan = None
    if traced.forward is not None and traced.backward is not None:
        plan = plan_saved(traced.forward, traced.num_saved, spec)
        fw_nodes = {n.name: n for n in traced.forward.graph.nodes}
        extras = [fw_nodes[v.node] for v in plan.extras]
        text, kd = _forward_kernel("forward", traced.forward, traced, extras, state_seqs="flag", finals=True)
        texts.append(text)
        kernels[kd.kind] = kd
        text, kd = _backward_kernel(traced, plan)
        texts.append(text)
        kernels[kd.kind] = kd
        sav_names = [f"sav{m}" for m in range(len(extras))]
        kernel_returns = out_names + sseq_names + fin_names + sav_names
        read_back = {"output": "out", "state_prev": "sseq", "state_new": "sseq", "extra": "sav"}
        c2k = tuple(
            sorted(
                {
                    kernel_returns.index(f"{read_back[v.kind]}{v.index}")
                    for v in plan.loads
                    if v.kind in read_back
                }
            )
        )
        infos["training"] = _info(
            spec, traced.forward, out_names + sseq_names + sav_names, kernel_returns, c2k
        )

    header = (
        "# Generated by flexsn_core; do not edit. One module, four kernel kinds.\n"
        "import triton\nimport triton.language as tl\n"
    )
    source = header + "\n\n" + "\n\n".join(texts)
    return GeneratedKernels(
        source=source,
        kernels=kernels,
        infos=infos,
        plan=plan,
        differentiable_returns=tuple(t is not None for t in traced.tangent_of),
    )
