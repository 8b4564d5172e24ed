"""Let Inductor recompute a FlexSN layer's input in the backward instead of saving it.

Under ``torch.compile`` the training op runs in recompute mode
(:func:`flexsn_core.ops.choose_recompute`): the backward kernel reads only the
layer's inputs. In a typical network that input is a BatchNorm output, a
chain of pointwise ops over the conv output that BatchNorm's own backward
keeps anyway. A compiled plain-PyTorch neuron saves nothing more than that:
Inductor's partitioner recomputes the normalization inside the backward. Ours
saved one extra full tensor per layer, because the partitioner refuses to
recompute a value that an opaque op (``flexsn::backward``) reads: such a value
is "materialized in backward", which its heuristic treats as never free.

:class:`RecomputeFlexSNInputs` is an Inductor joint-graph pass that marks
that chain ``PREFER_RECOMPUTE`` (the tag selective activation checkpointing
uses) when doing so cannot add saved bytes: every large tensor at the root of
the chain must be read by the backward anyway, through some other op. Memory
then matches the compiled loop; the cost is one more read of the conv output
and one write of the recomputed input in the backward.

:func:`install` chains the pass into ``torch._inductor.config.joint_custom_post_pass``
(keeping a pass someone else installed). It is called when ``flexsn_core.ops``
is imported (or, if Inductor is not loaded yet, when its config module is);
``FLEXSN_COMPILE_REMAT=0`` turns the marking off (read when a
graph is compiled, and part of the pass's cache key).
"""

from __future__ import annotations

import hashlib
import logging
import operator
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx

from .settings import compile_remat_enabled

__all__ = ["RecomputeFlexSNInputs", "mark_recomputable_inputs", "install"]

log = logging.getLogger(__name__)

#: A root of the chain smaller than this fraction of the recomputed input may be
#: saved for it (per-channel statistics, scalars): it costs next to nothing.
_SMALL_ROOT_FRACTION = 4


def _pointwise_or_view(node: fx.Node) -> bool:
    """An op the partitioner can recompute for free inside a fused kernel."""
    if node.op != "call_function" or node.target is operator.getitem:
        return False
    target = node.target
    if not isinstance(target, torch._ops.OpOverload):
        return False
    return torch.Tag.pointwise in target.tags or target.is_view


def _backward_nodes(graph: fx.Graph) -> set[fx.Node]:
    """Nodes of the joint graph that depend on a tangent: the backward half."""
    backward: set[fx.Node] = set()
    for node in graph.nodes:  # topological order: inputs come first
        if (node.op == "placeholder" and node.name.startswith("tangents")) or any(
            arg in backward for arg in node.all_input_nodes
        ):
            backward.add(node)
    return backward


def _chain(value: fx.Node, backward: set[fx.Node]) -> tuple[set[fx.Node], set[fx.Node]]:
    """The forward pointwise/view ops that compute ``value`` and the nodes they start from."""
    chain: set[fx.Node] = set()
    roots: set[fx.Node] = set()
    todo = [value]
    while todo:
        node = todo.pop()
        if node in chain or node in roots:
            continue
        if node not in backward and _pointwise_or_view(node):
            chain.add(node)
            todo.extend(node.all_input_nodes)
        else:
            roots.add(node)
    return chain, roots


def _read_by_backward_anyway(root: fx.Node, consumer: fx.Node, backward: set[fx.Node]) -> bool:
    """Whether a backward op other than ``consumer`` reads ``root`` (directly or through
    pointwise/view ops): then the partitioner keeps it whatever we do."""
    seen: set[fx.Node] = set()
    todo = [root]
    while todo:
        node = todo.pop()
        for user in node.users:
            if user in backward:
                if user is not consumer:
                    return True
            elif user not in seen and _pointwise_or_view(user):
                seen.add(user)
                todo.append(user)
    return False


def _numel(node: fx.Node) -> int | None:
    value = node.meta.get("val")
    return value.numel() if isinstance(value, torch.Tensor) else None


def mark_recomputable_inputs(graph: fx.Graph) -> int:
    """Tag, for each ``flexsn::backward`` in a joint graph, the pointwise chains computing
    the tensors it reads, where recomputing them adds no saved bytes. Returns how many
    tensors were marked."""
    from torch.utils.checkpoint import CheckpointPolicy

    backward_op = torch.ops.flexsn.backward.default
    consumers = [n for n in graph.nodes if n.op == "call_function" and n.target is backward_op]
    if not consumers:
        return 0
    backward = _backward_nodes(graph)
    marked = 0
    for consumer in consumers:
        for value in consumer.all_input_nodes:
            if value in backward or not _pointwise_or_view(value):
                continue
            size = _numel(value)
            if not size:
                continue
            chain, roots = _chain(value, backward)
            costly = [r for r in roots if r.op != "placeholder" and (_numel(r) or 0) * _SMALL_ROOT_FRACTION > size]
            if all(_read_by_backward_anyway(r, consumer, backward) for r in costly):
                for node in chain:
                    node.meta["recompute"] = CheckpointPolicy.PREFER_RECOMPUTE
                marked += 1
    if marked:
        log.debug("flexsn: %d FlexSN input(s) left to the partitioner to recompute", marked)
    return marked


def _source_digest() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def _base() -> type:
    from torch._inductor.custom_graph_pass import CustomGraphPass

    return CustomGraphPass


class RecomputeFlexSNInputs(_base()):  # type: ignore[misc]
    """The joint-graph pass; ``uuid`` keys Inductor's FX graph cache (source + setting)."""

    def __init__(self, then: Any = None) -> None:
        #: a pass that was installed before ours; it runs first
        self.then = then

    def __call__(self, graph: fx.Graph) -> None:
        if self.then is not None:
            self.then(graph)
        if compile_remat_enabled():
            mark_recomputable_inputs(graph)

    def uuid(self) -> Any:
        other = None
        if self.then is not None:
            other = self.then.uuid() if hasattr(self.then, "uuid") else None
            if other is None:
                return None  # an uncacheable pass before ours keeps the graph uncacheable
        return (_source_digest(), compile_remat_enabled(), other)


def _installed(passes: Iterable[Any] | Any) -> bool:
    return isinstance(passes, RecomputeFlexSNInputs)


def install() -> None:
    """Chain the pass into Inductor's ``joint_custom_post_pass`` (once per process)."""
    from torch._inductor import config

    current = config.joint_custom_post_pass
    if _installed(current):
        return
    config.joint_custom_post_pass = RecomputeFlexSNInputs(then=current)
