"""The forward-running kernel kinds: ``inference``, ``inference_final`` and the training ``forward``.

One template, three shapes: which sequences it stores (state sequences always,
behind a flag, or never), whether it stores final states, and which extra
buffers of the save plan it writes.
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
    needed_nodes,
    placeholders,
    returns_of,
    store_line,
)
from .lower import Val, physical

__all__ = ["forward_kernel"]



def forward_kernel(
    kind: str,
    gm: GraphLike,
    traced: TracedCore,
    extras: list[tuple[fx.Node, torch.dtype]],
    *,
    state_seqs: str,  # "always" | "flag" | "never"
    finals: bool,
) -> tuple[str, KernelDef]:
    """One forward-running kernel over ``gm`` (the inference or the AOT forward graph).

    ``extras`` are the save plan's extra buffers (node, stored dtype). With
    ``state_seqs="flag"`` each state sequence is stored behind its own flag
    (``store_sseq{j}``: asked for by the caller, or read by the backward), and
    the extras behind ``store_sav`` (off when the backward recomputes them).
    """
    spec = traced.spec
    dtype = spec.torch_dtype
    k = KernelBuilder(kind, dtype)
    common = CommonParams(k, spec)
    outs = [k.ptr(f"out{i}") for i in range(spec.num_outputs)]
    sseqs = [k.ptr(f"sseq{j}") for j in range(spec.num_states)] if state_seqs != "never" else []
    store_flags = [k.param(f"store_sseq{j}", "i32") for j in range(spec.num_states)] if state_seqs == "flag" else []
    fins = [k.ptr(f"fin{j}") for j in range(spec.num_states)] if finals else []
    savs = [k.ptr(f"sav{m}", sdt) for m, (_, sdt) in enumerate(extras)]
    sav_flag = k.param("store_sav", "i32") if extras else None

    pre = k.emitter("    ", "p")
    static_vals = common.load_statics(pre)
    state_vals = common.load_inits(pre, "s")
    k.time_loop(reverse=False)
    e = k.emitter("        ", "v")
    params = placeholders(gm)
    for i, node in enumerate(params[: spec.num_inputs]):
        e.env[node] = Val(k.stream(e, common.inputs[i], dtype, "mask"), dtype)
    for j, node in enumerate(params[spec.num_inputs : spec.num_inputs + spec.num_states]):
        e.env[node] = state_vals[j]
    for c, node in enumerate(params[spec.num_inputs + spec.num_states :]):
        e.env[node] = static_vals[c]
    returns = returns_of(gm)
    user = returns[: spec.num_outputs + spec.num_states]
    emit_graph(e, gm, needed_nodes(user + [n for n, _ in extras], set(params)))
    for i, ptr in enumerate(outs):
        e.line(store_line(f"{ptr} + row + offs", e.env[user[i]], dtype, "mask", e))
    for j, ptr in enumerate(sseqs):
        smask = f"mask & ({store_flags[j]} != 0)" if store_flags else "mask"
        e.line(store_line(f"{ptr} + row + offs", e.env[user[spec.num_outputs + j]], dtype, smask, e))
    for ptr, (node, sdt) in zip(savs, extras):
        e.line(store_line(f"{ptr} + row + offs", e.env[node], sdt, f"mask & ({sav_flag} != 0)", e))
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
