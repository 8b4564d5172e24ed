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

from ..trace import GraphLike, TracedCore
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
from .lower import Emitter, Val, node_dtype, physical
from .partition import SavePlan
from .save_plan import scratch_states

__all__ = ["backward_kernel"]


def backward_kernel(traced: TracedCore, plan: SavePlan) -> tuple[str, KernelDef]:
    """The backward kernel of a traced core under a save plan.

    Two modes, chosen per launch by the ``recompute`` argument: 0 reads what
    the plan saved (extras, outputs, state sequences, inputs); 1 reads only the
    inputs (and initial states), regenerates the state sequences the plan needs
    in a first pass over time (into the ``sseq`` buffers, now scratch), and
    recomputes the plan's extras, outputs and new states per step -- the
    forward that ran, bit for bit, so the gradients are the same.

    Recompute mode's scratch (``save_plan.scratch_states``): the first
    regenerated state may live in the first input gradient's buffer; any other
    is addressed ``t * SRS + soffs``, a ``[T, SRS]`` buffer whose columns each
    program reuses for every block it walks (``soffs`` is ``offs`` shifted back
    to the program's first block). In stored mode ``SRS`` is ``N`` and
    ``soffs`` is ``offs``: the same addresses as every other ``[T, N]`` buffer.
    Initial-state gradients are stored only where their ``ginit{j}_flag`` asks.
    """
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
    savs = [k.ptr(f"sav{m}", getattr(torch, v.dtype)) for m, v in enumerate(plan.extras)]
    gouts = [k.ptr(f"gout{i}") for i in range(no)]
    gout_flags = [k.param(f"gout{i}_flag", "i32") for i in range(no)]
    gsseqs = [k.ptr(f"gsseq{j}") for j in range(ns)]
    gsseq_flags = [k.param(f"gsseq{j}_flag", "i32") for j in range(ns)]
    gfins = [k.ptr(f"gfin{j}") for j in range(ns)]
    gfin_flags = [k.param(f"gfin{j}_flag", "i32") for j in range(ns)]
    gins = [k.ptr(f"gin{i}") for i in range(ni)]
    ginits = [k.ptr(f"ginit{j}") for j in range(ns)]
    ginit_flags = [k.param(f"ginit{j}_flag", "i32") for j in range(ns)]
    gsts = [k.ptr(f"gst{c}", torch.float32) for c in range(nc)]
    k.param("recompute", "i32")
    req = spec.requires_grad
    assert req is not None
    _, own = scratch_states(plan.recompute_states, bool(ni) and bool(req[0]))
    # (row stride, column) of each state sequence buffer
    at = {j: ("SRS", "soffs") if j in own else ("N", "offs") for j in range(ns)}
    if own:
        k.param("SRS", "i64")

    pre = k.emitter("    ", "p")
    if own:
        pre.line("sblk = (blk - tl.program_id(0)) if INTERPRET else (blk - tl.program_id(0)).to(tl.int64)")
        pre.line("soffs = offs - sblk * BLOCK * recompute")
    static_vals = common.load_statics(pre)
    needs_init = plan.needs_init or bool(plan.recompute_states)
    init_vals = common.load_inits(pre, "s") if needs_init else []
    if plan.recompute_states:
        _state_pass(k, traced, common, sseqs, init_vals, static_vals, plan.recompute_states, at)
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

    k.time_loop(reverse=True)
    ind = "        "
    f = k.emitter(ind, "f")
    fw_params = placeholders(fw)
    # Primals the plan reads: streamed in both modes (recompute mode reads state
    # sequences from its scratch buffers, filled by the first pass).
    for v in plan.loads:
        node = fw_nodes[v.node]
        if v.kind == "static":
            f.env[node] = static_vals[v.index]
        elif v.kind == "input":
            f.env[node] = Val(k.stream(f, common.inputs[v.index], dtype, "mask"), dtype)
        elif v.kind == "state_prev":  # the state sequence one row back, the initial state at t == 0
            stride, col = at[v.index]
            prev = k.stream(f, sseqs[v.index], dtype, "mask", shift=-1, stride=stride, col=col)
            f.env[node] = Val(f.tmp(f"tl.where(t > 0, {prev}, {init_vals[v.index].expr})"), dtype)
    if any(v.kind in ("output", "state_new", "extra") for v in plan.loads):
        _stored_or_rebuilt(k, f, traced, plan, common, fw_nodes, outs, sseqs, savs, init_vals, ind, at)
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
            name = k.stream(b, gouts[r], dtype, f"mask & ({gout_flags[r]} != 0)")
            b.env[tangent_params[tangent]] = Val(name, dtype)
        else:
            j = r - no
            seq = k.stream(b, gsseqs[j], dtype, f"mask & ({gsseq_flags[j]} != 0)")
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
            post.line(store_line(f"{ginits[j]} + offs", carries[j], dtype, f"mask & ({ginit_flags[j]} != 0)", post))
    for c in accs:
        post.line(f"tl.store({gsts[c]} + offs, acc{c}, mask=mask)")
    return k.render()


def _roles(params: list[fx.Node], spec) -> dict[fx.Node, tuple[str, int]]:  # noqa: ANN001
    ni, ns = spec.num_inputs, spec.num_states
    roles = {}
    for i, node in enumerate(params):
        if i < ni:
            roles[node] = ("input", i)
        elif i < ni + ns:
            roles[node] = ("state_prev", i - ni)
        else:
            roles[node] = ("static", i - ni - ns)
    return roles


def _inputs_of(nodes: set[fx.Node]) -> set[fx.Node]:
    return {a for n in nodes for a in n.all_input_nodes}


def _state_pass(
    k: KernelBuilder,
    traced: TracedCore,
    common: CommonParams,
    sseqs: list[str],
    init_vals: list[Val],
    static_vals: list[Val],
    states: tuple[int, ...],
    at: dict[int, tuple[str, str]],
) -> None:
    """Recompute mode's first pass: run the state recurrence forward and store the sequences of ``states``.

    The same graph, loads and rounding as the training forward kernel, so the
    stored states are the ones that forward carried.
    """
    spec = traced.spec
    dtype = spec.torch_dtype
    fw = traced.forward
    assert fw is not None
    ni, ns, no = spec.num_inputs, spec.num_states, spec.num_outputs
    k.line("if recompute != 0:")
    for j in range(ns):
        k.line(f"z{j} = {init_vals[j].expr}", "        ")
    k.line("for t in range(T):", "        ")
    k.line("row = t * N", "            ")
    u = k.emitter("            ", "u")
    params = placeholders(fw)
    new_states = returns_of(fw)[no : no + ns]
    wanted = needed_nodes(new_states, set(params))
    used = _inputs_of(wanted) | set(new_states)
    for i, node in enumerate(params[:ni]):
        if node in used:
            u.env[node] = Val(u.tmp(load_expr(f"{common.inputs[i]} + row + offs", dtype, "mask")), dtype)
    for j, node in enumerate(params[ni : ni + ns]):
        u.env[node] = Val(f"z{j}", dtype)
    for c, node in enumerate(params[ni + ns :]):
        u.env[node] = static_vals[c]
    emit_graph(u, fw, wanted)
    for j in states:
        stride, col = at[j]
        where = "row" if stride == "N" else f"t * {stride}"
        u.line(store_line(f"{sseqs[j]} + {where} + {col}", u.env[new_states[j]], dtype, "mask", u))
    carried = [u.tmp(u.round_to(u.as_(u.env[new_states[j]], physical(dtype)), dtype)) for j in range(ns)]
    for j, name in enumerate(carried):
        u.line(f"z{j} = {name}")


def _stored_or_rebuilt(
    k: KernelBuilder,
    f: Emitter,
    traced: TracedCore,
    plan: SavePlan,
    common: CommonParams,
    fw_nodes: dict[str, fx.Node],
    outs: list[str],
    sseqs: list[str],
    savs: list[str],
    init_vals: list[Val],
    ind: str,
    at: dict[int, tuple[str, str]],
) -> None:
    """The plan's saved extras, outputs and new states: loaded (stored mode) or recomputed (recompute mode).

    The stored loads are streamed (prefetched) and masked off in recompute
    mode. Recompute mode's own loads (inputs, previous states the plan does not
    read) happen inside its branch, unprefetched: nothing of it is live in
    stored mode, whose register count (occupancy) stays that of a kernel
    without it.
    """
    spec = traced.spec
    dtype = spec.torch_dtype
    fw = traced.forward
    assert fw is not None
    loads = [v for v in plan.loads if v.kind in ("output", "state_new", "extra")]
    loaded = []
    for v in loads:
        ptr = {"output": outs, "state_new": sseqs, "extra": savs}[v.kind][v.index]
        stride, col = at[v.index] if v.kind == "state_new" else ("N", "offs")
        loaded.append(k.stream(f, ptr, getattr(torch, v.dtype), "mask & (recompute == 0)", stride=stride, col=col))
    targets = [fw_nodes[v.node] for v in loads]
    params = placeholders(fw)
    rebuilt = needed_nodes(targets, set(params))
    used = _inputs_of(rebuilt)
    names = [f"sv{m}" for m in range(len(loads))]
    k.line("if recompute != 0:", ind)
    w = k.emitter(ind + "    ", "w")
    w.env.update(f.env)
    for node, (kind, index) in _roles(params, spec).items():
        if node not in used or node in w.env:
            continue
        if kind == "input":
            w.env[node] = Val(w.tmp(load_expr(f"{common.inputs[index]} + row + offs", dtype, "mask")), dtype)
        elif kind == "state_prev":
            stride, col = at[index]
            where = "(row - N)" if stride == "N" else f"(t - 1) * {stride}"
            prev = w.tmp(load_expr(f"{sseqs[index]} + {where} + {col}", dtype, "mask & (t > 0)"))
            w.env[node] = Val(w.tmp(f"tl.where(t > 0, {prev}, {init_vals[index].expr})"), dtype)
    emit_graph(w, fw, rebuilt)
    for name, node in zip(names, targets):
        w.line(f"{name} = {w.as_(w.env[node], physical(node_dtype(node)))}")
    k.line("else:", ind)
    for name, value in zip(names, loaded):
        k.line(f"    {name} = {value}", ind)
    for name, node in zip(names, targets):
        f.env[node] = Val(name, node_dtype(node))
