"""Decide what the training forward kernel stores for the backward kernel.

AOTAutograd's min-cut partitioner picks saved tensors for a single step, with
a cost model made for whole graphs: it happily saves ``sigmoid(h)`` next to
``h``. In a time-step scan every saved tensor is a ``[T, N]`` stream written
by the forward kernel and read back by the backward kernel, while
recomputing an elementwise op costs nothing next to that memory traffic.

So we cut again, inside the AOT forward graph, between the step's sources and
the values the AOT backward graph needs, minimizing bytes moved per element
and step:

==================  ==========================================  =========
value               where the backward kernel gets it           cost
==================  ==========================================  =========
static input        loaded once per program                     0
input ``x_t``       re-read from the input sequence             1 x size
output ``y_t``      re-read from the output sequence            1 x size
state (old or new)  state sequence, written by the forward      2 x size
other value         an extra ``[T, N]`` buffer (write + read)   2 x size
==================  ==========================================  =========

For fp16/bf16 cores, outputs and new states are stored rounded while the step
used their fp32 values, so they are never reloaded for a recompute, and extra
buffers are fp32: the backward's recomputed forward is then exactly the
forward that ran.

Everything between the cut and the needed values is recomputed in the
backward kernel. For a LIF neuron this stores just the pre-reset membrane
potential ``h``, the layout of hand-written LIF kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import torch
import torch.fx as fx

from ..spec import KernelSpec
from ..trace import GraphLike

__all__ = ["SavedValue", "SavePlan", "plan_saved", "stored_dtype"]

_INF = float("inf")


@dataclass(frozen=True)
class SavedValue:
    """One value the backward kernel loads per step (a node of the AOT forward graph)."""

    node: str  # name of the forward-graph node
    kind: str  # "input" | "state_prev" | "state_new" | "output" | "static" | "extra"
    index: int  # which input/state/output/static/extra
    dtype: str  # torch dtype name, e.g. "float32" or "bool"


@dataclass(frozen=True)
class SavePlan:
    """The cut: what is loaded per step, and which forward nodes are recomputed."""

    loads: tuple[SavedValue, ...]
    recompute: tuple[str, ...]  # forward-graph node names, in graph order

    @property
    def extras(self) -> tuple[SavedValue, ...]:
        return tuple(v for v in self.loads if v.kind == "extra")

    @property
    def needs_state_seqs(self) -> bool:
        return any(v.kind in ("state_prev", "state_new") for v in self.loads)

    @property
    def bytes_per_step(self) -> int:
        """Bytes per element and step this plan adds to forward + backward."""
        total = 0
        for v in self.loads:
            size = torch.empty((), dtype=getattr(torch, v.dtype)).element_size()
            total += {"static": 0, "input": 1, "output": 1}.get(v.kind, 2) * size
        return total


def _dtype_of(node: fx.Node) -> torch.dtype:
    meta = node.meta.get("val")
    assert isinstance(meta, torch.Tensor), f"node {node.name} has no tensor metadata"
    return meta.dtype


def _roles(forward: GraphLike, spec: KernelSpec) -> dict[fx.Node, tuple[str, int]]:
    roles: dict[fx.Node, tuple[str, int]] = {}
    placeholders = [n for n in forward.graph.nodes if n.op == "placeholder"]
    for i, node in enumerate(placeholders):
        if i < spec.num_inputs:
            roles[node] = ("input", i)
        elif i < spec.num_inputs + spec.num_states:
            roles[node] = ("state_prev", i - spec.num_inputs)
        else:
            roles[node] = ("static", i - spec.num_inputs - spec.num_states)
    output = next(n for n in forward.graph.nodes if n.op == "output")
    returned = output.args[0]
    for k in range(spec.num_outputs):
        roles.setdefault(returned[k], ("output", k))
    for j in range(spec.num_states):
        roles.setdefault(returned[spec.num_outputs + j], ("state_new", j))
    return roles


def stored_dtype(node_dtype: torch.dtype) -> torch.dtype:
    """The dtype an extra saved value is stored in.

    fp16/bf16 values are fp32 inside a step, and the backward recomputes the
    forward from what was saved: a rounded copy could flip a threshold the
    forward did not flip. So they are saved as fp32, exactly.
    """
    return torch.float32 if node_dtype in (torch.float16, torch.bfloat16) else node_dtype


def _cost(node: fx.Node, role: tuple[str, int] | None, low_precision: bool) -> float:
    kind = role[0] if role else "extra"
    if low_precision and kind in ("output", "state_new"):
        # Stored rounded, while the step itself used the fp32 value: not exact.
        return _INF
    size = torch.empty((), dtype=stored_dtype(_dtype_of(node))).element_size()
    return {"static": 0, "input": size, "output": size}.get(kind, 2 * size)


def plan_saved(forward: GraphLike, num_saved: int, spec: KernelSpec) -> SavePlan:
    """Min-cut the AOT forward graph for the values its backward needs."""
    output = next(n for n in forward.graph.nodes if n.op == "output")
    returned = output.args[0]
    k = spec.num_outputs + spec.num_states
    needed = [n for n in returned[k : k + num_saved]]
    if any(not isinstance(n, fx.Node) for n in needed):
        raise ValueError("internal: AOTAutograd saved a non-tensor value")
    roles = _roles(forward, spec)
    low_precision = spec.torch_dtype in (torch.float16, torch.bfloat16)

    graph = nx.DiGraph()
    order = {node: i for i, node in enumerate(forward.graph.nodes)}
    for node in forward.graph.nodes:
        if node.op not in ("placeholder", "call_function", "get_attr"):
            continue
        graph.add_edge(("in", node.name), ("out", node.name), capacity=_cost(node, roles.get(node), low_precision))
        if node.op == "placeholder":
            graph.add_edge("source", ("in", node.name), capacity=_INF)
        for user in node.users:
            if user.op != "output":
                graph.add_edge(("out", node.name), ("in", user.name), capacity=_INF)
    for node in needed:
        graph.add_edge(("out", node.name), "sink", capacity=_INF)

    cut: list[fx.Node] = []
    if needed and graph.has_node("source") and nx.has_path(graph, "source", "sink"):
        _, (reachable, _) = nx.minimum_cut(graph, "source", "sink")
        by_name = {n.name: n for n in forward.graph.nodes}
        cut = [
            by_name[name]
            for kind, name in (v for v in reachable if isinstance(v, tuple))
            if kind == "in" and ("out", name) not in reachable
        ]
    cut.sort(key=order.__getitem__)
    cut_set = set(cut)

    # Everything between the cut and the needed values is recomputed.
    recompute: set[fx.Node] = set()
    stack = [n for n in needed if n not in cut_set]
    while stack:
        node = stack.pop()
        if node in recompute or node in cut_set:
            continue
        if node.op == "placeholder":  # pragma: no cover - the cut separates every primal
            raise AssertionError(f"internal: primal {node.name} not covered by the save plan")
        recompute.add(node)
        stack.extend(a for a in node.all_input_nodes if a not in cut_set)

    loads: list[SavedValue] = []
    extra = 0
    for node in cut:
        role = roles.get(node)
        dtype = str(_dtype_of(node)).removeprefix("torch.")
        if role is None:
            dtype = str(stored_dtype(_dtype_of(node))).removeprefix("torch.")
            loads.append(SavedValue(node.name, "extra", extra, dtype))
            extra += 1
        else:
            loads.append(SavedValue(node.name, role[0], role[1], dtype))
    return SavePlan(
        loads=tuple(loads),
        recompute=tuple(n.name for n in sorted(recompute, key=order.__getitem__)),
    )
