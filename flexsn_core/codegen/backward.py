"""The ``backward`` kernel kind: a reverse-time loop over the AOT backward graph.

Per step it loads what the save plan saved, recomputes the forward values
between the plan's cut and what the backward graph needs, adds the incoming
gradients (outputs, state sequences, and the state gradient carried from the
next step) and stores input gradients; initial-state gradients and the
time-summed static-input gradients are stored at the end.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from ..trace import TracedCore
from .blocks import (
    CommonParams,
    KernelBuilder,
    KernelDef,
    emit_graph,
    load_expr,
    needed_nodes,
    placeholders,
    returns_of,
    store_line,
)
from .lower import Val, node_dtype, physical
from .partition import SavePlan, stored_dtype

__all__ = ["backward_kernel"]



def backward_kernel(traced: TracedCore, plan: SavePlan) -> tuple[str, KernelDef]:
    spec = traced.spec
    dtype = spec.torch_dtype
    fw, bw = traced.forward, traced.backward
    assert fw is not None and bw is not None
    ni, ns, no, nc = spec.num_inputs, spec.num_states, spec.num_outputs, spec.num_static
    k = KernelBuilder("backward", dtype)
    common = CommonParams(k, spec)
    outs = [k.ptr(f"out{i}") for i in range(no)]
    sseqs = [k.ptr(f"sseq{j}") for j in range(ns)]
    fw_nodes = {n.name: n for n in fw.graph.nodes}
    extras = [fw_nodes[v.node] for v in plan.extras]
    savs = [k.ptr(f"sav{m}", stored_dtype(node_dtype(n))) for m, n in enumerate(extras)]
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
    fw_params = placeholders(fw)
    for v in plan.loads:
        node = fw_nodes[v.node]
        vd = node_dtype(node)
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
    emit_graph(f, fw, recompute)

    b = k.emitter(ind, "b")
    bw_params = placeholders(bw)
    saved_params, tangent_params = bw_params[: traced.num_saved], bw_params[traced.num_saved :]
    fw_returns = returns_of(fw)
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
    grads = returns_of(bw)
    emit_graph(b, bw, needed_nodes([g for g in grads if isinstance(g, fx.Node)], set(bw_params)))

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
