"""Decide what the training forward kernel keeps for the backward kernel.

AOTAutograd's min-cut partitioner picks saved tensors for a single step, with
a cost model made for whole graphs: it happily saves ``sigmoid(h)`` next to
``h``. In a time-step scan every saved value is a ``[T, N]`` stream: written
by the forward kernel, *held in memory* until the backward runs, and read back
by the backward kernel, while recomputing an elementwise op costs nothing next
to that. Memory is what limits T and batch size in spiking networks, so the
cost of a value counts both, in bytes per neuron and step (``s`` is the size
of the dtype it is kept in):

==================  ===========================================  =======  ====  =====
value               where the backward kernel gets it            traffic  held  cost
==================  ===========================================  =======  ====  =====
static input        loaded once per program                      0        0     0
input ``x_t``       re-read from the input sequence              s        s     2 s
output ``y_t``      re-read from the output sequence             s        0     1 s
state (old or new)  state sequence, written by the forward       2 s      s     3 s
other value         an extra ``[T, N]`` buffer (write + read)    2 s      s     3 s
==================  ===========================================  =======  ====  =====

* An input is held only for us in the common case (a BatchNorm or Linear
  output: nothing else saves it), so keeping it alive costs its bytes like a
  stored stream; it is slightly cheaper than an extra because the forward does
  not write it.
* Outputs are assumed kept by the caller: the layer after a neuron (conv,
  linear, pooling) saves its input for its own backward, so holding them adds
  nothing. A network whose neuron output feeds only pointwise ops pays for
  them; the ops layer saves them only when the plan loads them.
* fp16/bf16 cores compute a step in fp32 and round outputs and new states when
  they leave it, so those are never reloaded for a recompute (cost infinite):
  the backward's recomputed forward must be the forward that ran.

**Stored dtypes** (``SavedValue.dtype``). Inputs and states are kept in the
core's dtype (that is what the step read). Extras of fp32 cores are fp32;
booleans (spikes, masks) are 1 byte. Extras of **bf16** cores are stored in
bf16 when they are only used *smoothly* by what is recomputed from them (no
comparison, rounding or other jump on the way to what the backward needs, in
the recomputed forward ops or in the AOT backward graph): rounding then moves
a gradient by about one bf16 ulp of the value, as rounding the output does. A
value a threshold is recomputed from stays fp32, since rounding could flip a
spike the forward did not flip -- unless the comparisons reachable from it are
saved themselves as booleans (1 byte each), which makes the value smooth-only
(for LIF: ``h`` in bf16 plus the spike mask ``h >= th``, 3 bytes instead of 4).
fp16 extras stay fp32: an intermediate the step held in fp32 can exceed fp16's
range (65504), where bf16 has fp32's. ``bench/saved_dtype_error.py`` measures
the gradient error of both choices against an fp64 loop.

The cut is taken twice (extras costed at fp32, and at the 16-bit size for
bf16), each refined by the dtype rule, and the cheaper plan is kept.

Everything between the cut and the needed values is recomputed in the
backward kernel. For a LIF neuron this keeps just the pre-reset membrane
potential ``h``, the layout of hand-written LIF kernels.

**Recompute mode** (``recompute_inputs`` / ``recompute_states``): the backward
kernel can instead rebuild everything from the inputs alone -- a first pass
over time regenerates the state sequences it needs (into a scratch buffer,
exactly as the forward carried them), and the extras, outputs and new states
of the plan are recomputed per step. The training op then keeps only the
inputs (and initial states) alive; under ``torch.compile`` even those can be
rematerialized by Inductor from what the layer before keeps anyway (a
BatchNorm output from the conv output its own backward saves).
"""

from __future__ import annotations

from collections.abc import Iterable

import networkx as nx
import torch
import torch.fx as fx

from ..spec import KernelSpec
from ..trace import GraphLike
from .save_plan import SavedValue, SavePlan

__all__ = ["SavedValue", "SavePlan", "plan_saved", "SMOOTH_OPS"]

_INF = float("inf")
_LOW = (torch.float16, torch.bfloat16)

#: aten ops (base names) whose result moves by O(eps) when a float argument is
#: rounded by eps: a value reaching the backward only through these may be
#: saved rounded. Everything else (comparisons, floor/round/sign, fmod, the
#: *_backward ops that compare their input, casts to bool or int) may jump.
SMOOTH_OPS = frozenset(
    {
        "_unsafe_view", "abs", "add", "addcdiv", "addcmul", "alias", "atan", "clamp", "clamp_max",
        "clamp_min", "clone", "conj_physical", "contiguous", "copy", "cos", "detach", "div", "empty",
        "empty_like", "erf", "exp", "exp2", "expand", "expm1", "fill", "flatten", "fmax", "fmin", "full",
        "full_like", "hardtanh", "leaky_relu", "lerp", "lift_fresh_copy", "log", "log10", "log1p", "log2",
        "masked_fill", "maximum", "minimum", "mul", "neg", "new_empty", "new_full", "new_ones",
        "new_zeros", "ones", "ones_like", "positive", "pow", "reciprocal", "relu", "reshape",
        "resolve_conj", "resolve_neg", "rsqrt", "rsub", "scalar_tensor", "sigmoid", "sigmoid_backward",
        "sin", "sqrt", "squeeze", "sub", "tanh", "tanh_backward", "true_divide", "unsqueeze", "view",
        "where", "zeros", "zeros_like", "_to_copy", "to", "type_as",
    }
)
_CASTS = frozenset({"_to_copy", "to", "type_as"})


# --------------------------------------------------------------------------
# graph helpers
# --------------------------------------------------------------------------
def _dtype_of(node: fx.Node) -> torch.dtype:
    meta = node.meta.get("val")
    assert isinstance(meta, torch.Tensor), f"node {node.name} has no tensor metadata"
    return meta.dtype


def _base_name(node: fx.Node) -> str:
    target = node.target
    if isinstance(target, torch._ops.OpOverload):
        return target._opname
    return getattr(target, "__name__", str(target))


def is_smooth(node: fx.Node) -> bool:
    """True if ``node`` moves by O(eps) when a float argument is rounded by eps."""
    if node.op != "call_function":
        return node.op == "get_attr"
    name = _base_name(node)
    if name not in SMOOTH_OPS:
        return False
    if name in _CASTS and not _dtype_of(node).is_floating_point:
        return False
    return not (name == "div" and node.kwargs.get("rounding_mode") is not None)


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


def _ancestors(nodes: Iterable[fx.Node], stop: set[fx.Node]) -> set[fx.Node]:
    """``nodes`` and everything they are computed from, not crossing ``stop``."""
    seen: set[fx.Node] = set()
    stack = list(nodes)
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if node not in stop:
            stack.extend(node.all_input_nodes)
    return seen


def _exact_needed(needed: list[fx.Node], backward: GraphLike | None) -> set[fx.Node]:
    """Needed forward values that the AOT backward graph uses in a way that may jump."""
    if backward is None:
        return set(needed)
    params = [n for n in backward.graph.nodes if n.op == "placeholder"][: len(needed)]
    exact: set[fx.Node] = set()
    for fw_node, param in zip(needed, params):
        stack, seen = [param], set()
        while stack:
            node = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            if node is not param and node.op == "call_function" and not is_smooth(node):
                exact.add(fw_node)
                break
            stack.extend(u for u in node.users if u.op != "output")
    return exact


# --------------------------------------------------------------------------
# the cut
# --------------------------------------------------------------------------
class _Problem:
    """One forward graph, what its backward needs, and the cost of keeping each value."""

    def __init__(self, forward: GraphLike, num_saved: int, spec: KernelSpec, backward: GraphLike | None) -> None:
        self.forward, self.spec = forward, spec
        output = next(n for n in forward.graph.nodes if n.op == "output")
        returned = output.args[0]
        k = spec.num_outputs + spec.num_states
        self.returned = list(returned)
        self.needed = list(returned[k : k + num_saved])
        if any(not isinstance(n, fx.Node) for n in self.needed):
            raise ValueError("internal: AOTAutograd saved a non-tensor value")
        self.roles = _roles(forward, spec)
        self.dtype = spec.torch_dtype
        self.low = self.dtype in _LOW
        self.order = {node: i for i, node in enumerate(forward.graph.nodes)}
        self.params = [n for n in forward.graph.nodes if n.op == "placeholder"]
        self.exact = _exact_needed(self.needed, backward)

    # ------------------------------------------------------------ costs
    def kind(self, node: fx.Node) -> str:
        role = self.roles.get(node)
        return role[0] if role else "extra"

    def cost(self, node: fx.Node, dtype: torch.dtype) -> float:
        kind = self.kind(node)
        if self.low and kind in ("output", "state_new"):
            return _INF  # stored rounded while the step used the fp32 value: not exact
        size = dtype.itemsize
        return {"static": 0, "input": 2 * size, "output": size}.get(kind, 3 * size)

    def exact_dtype(self, node: fx.Node) -> torch.dtype:
        """The dtype a value is kept in when it must be exact."""
        dtype = _dtype_of(node)
        if self.kind(node) == "extra" and dtype in _LOW:
            return torch.float32  # fp16/bf16 values are fp32 inside a step
        return dtype

    def rounded_ok(self, node: fx.Node) -> bool:
        """May this value be kept in the core's 16-bit dtype (bf16 extras only)?"""
        return self.dtype == torch.bfloat16 and self.kind(node) == "extra" and _dtype_of(node) == torch.bfloat16

    # ------------------------------------------------------------ min-cut
    def min_cut(self, rounded_cost: bool) -> list[fx.Node]:
        graph = nx.DiGraph()
        for node in self.forward.graph.nodes:
            if node.op not in ("placeholder", "call_function", "get_attr"):
                continue
            dtype = self.dtype if rounded_cost and self.rounded_ok(node) else self.exact_dtype(node)
            graph.add_edge(("in", node.name), ("out", node.name), capacity=self.cost(node, dtype))
            if node.op == "placeholder":
                graph.add_edge("source", ("in", node.name), capacity=_INF)
            for user in node.users:
                if user.op != "output":
                    graph.add_edge(("out", node.name), ("in", user.name), capacity=_INF)
        for node in self.needed:
            graph.add_edge(("out", node.name), "sink", capacity=_INF)
        if not self.needed or not graph.has_node("source") or not nx.has_path(graph, "source", "sink"):
            return []
        _, (reachable, _) = nx.minimum_cut(graph, "source", "sink")
        by_name = {n.name: n for n in self.forward.graph.nodes}
        return [
            by_name[name]
            for kind, name in (v for v in reachable if isinstance(v, tuple))
            if kind == "in" and ("out", name) not in reachable
        ]

    # ------------------------------------------------------------ refinement
    def region(self, cut: set[fx.Node]) -> set[fx.Node]:
        """The nodes recomputed from ``cut`` to reach the needed values."""
        region: set[fx.Node] = set()
        stack = [n for n in self.needed if n not in cut]
        while stack:
            node = stack.pop()
            if node in region or node in cut:
                continue
            if node.op == "placeholder":  # pragma: no cover - the cut separates every primal
                raise AssertionError(f"internal: primal {node.name} not covered by the save plan")
            region.add(node)
            stack.extend(a for a in node.all_input_nodes if a not in cut)
        return region

    def used(self, cut: set[fx.Node]) -> set[fx.Node]:
        """The cut nodes something needed is actually recomputed from."""
        region = self.region(cut)
        used = {n for n in self.needed if n in cut}
        for node in region:
            used.update(a for a in node.all_input_nodes if a in cut)
        return used

    def jumps(self, node: fx.Node, region: set[fx.Node]) -> list[fx.Node] | None:
        """The non-smooth recomputed nodes reached from ``node`` through smooth ones.

        None when rounding ``node`` could reach the backward through a jump that
        cannot be saved as a boolean instead (a needed value used non-smoothly,
        or a non-smooth op with a non-boolean result).
        """
        found: list[fx.Node] = []
        stack, seen = [node], set()
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            if n in self.exact:
                return None
            for user in n.users:
                if user not in region:
                    continue
                if is_smooth(user):
                    stack.append(user)
                elif _dtype_of(user) == torch.bool:
                    found.append(user)
                else:
                    return None
        return found

    def refine(self, cut: list[fx.Node]) -> tuple[set[fx.Node], dict[fx.Node, torch.dtype]]:
        """Apply the stored-dtype rule: bf16 for smooth-only extras, splitting off boolean jumps."""
        chosen = set(cut)
        rounded: set[fx.Node] = set()
        for node in sorted(cut, key=self.order.__getitem__):
            if not self.rounded_ok(node):
                continue
            trial = set(chosen)
            while True:
                region = self.region(trial)
                jumps = self.jumps(node, region)
                if jumps is None or not jumps:
                    break
                trial.update(jumps)
            if jumps is None:
                continue
            trial = self.used(trial)
            trial_rounded = (rounded | {node}) & trial
            if self.total(trial, trial_rounded) <= self.total(chosen, rounded):
                chosen, rounded = trial, trial_rounded
        chosen = self.used(chosen)
        dtypes = {n: (self.dtype if n in rounded else self.exact_dtype(n)) for n in chosen}
        return chosen, dtypes

    def total(self, cut: set[fx.Node], rounded: set[fx.Node]) -> float:
        return sum(self.cost(n, self.dtype if n in rounded else self.exact_dtype(n)) for n in cut)

    # ------------------------------------------------------------ recompute mode
    def recompute_mode(self, loads: list[SavedValue]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Inputs and states the backward needs when it rebuilds everything from the inputs."""
        params = set(self.params)
        by_name = {n.name: n for n in self.forward.graph.nodes}
        targets = [by_name[v.node] for v in loads if v.kind != "static"]
        spec = self.spec
        new_states = self.returned[spec.num_outputs : spec.num_outputs + spec.num_states]
        inputs: set[int] = set()
        states: set[int] = set()
        for node in _ancestors(targets, params) & params:
            kind, index = self.roles[node]
            if kind == "input":
                inputs.add(index)
            elif kind == "state_prev":
                states.add(index)
        if states:  # the first pass runs the state recurrence: it reads what the new states need
            for node in _ancestors([n for n in new_states if isinstance(n, fx.Node)], params) & params:
                kind, index = self.roles[node]
                if kind == "input":
                    inputs.add(index)
        return tuple(sorted(inputs)), tuple(sorted(states))


def plan_saved(
    forward: GraphLike,
    num_saved: int,
    spec: KernelSpec,
    backward: GraphLike | None = None,
    *,
    round_extras: bool = True,
) -> SavePlan:
    """Min-cut the AOT forward graph for the values its backward needs.

    ``backward`` (the AOT backward graph) tells which needed values it uses
    non-smoothly; without it every needed value is taken as such.
    ``round_extras=False`` keeps every extra of a bf16 core in fp32 (the
    previous rule; for measurements such as ``bench/saved_dtype_error.py``).
    """
    problem = _Problem(forward, num_saved, spec, backward)
    if round_extras and problem.dtype == torch.bfloat16:
        candidates = [problem.refine(problem.min_cut(rounded_cost=r)) for r in (False, True)]
    else:
        cut0 = set(problem.min_cut(rounded_cost=False))
        candidates = [(cut0, {n: problem.exact_dtype(n) for n in cut0})]
    # The cheaper plan; on a tie the first (exact costs), so the choice is deterministic.
    cut, dtypes = min(candidates, key=lambda c: sum(problem.cost(n, c[1][n]) for n in c[0]))
    order = problem.order
    recompute = problem.region(cut)

    loads: list[SavedValue] = []
    extra = 0
    for node in sorted(cut, key=order.__getitem__):
        role = problem.roles.get(node)
        dtype = str(dtypes[node]).removeprefix("torch.")
        if role is None:
            loads.append(SavedValue(node.name, "extra", extra, dtype))
            extra += 1
        else:
            loads.append(SavedValue(node.name, role[0], role[1], dtype))
    rec_inputs, rec_states = problem.recompute_mode(loads)
    return SavePlan(
        loads=tuple(loads),
        recompute=tuple(n.name for n in sorted(recompute, key=order.__getitem__)),
        recompute_inputs=rec_inputs,
        recompute_states=rec_states,
    )
