"""The straight-through spike ``sg + (heaviside - sg).detach()``, without computing ``sg``.

Cores written the SpikingJelly way make the forward value of a spike
``sg + (h - sg)``: ``h`` a 0/1 step, ``sg = sigmoid(y)`` only there so the
backward sees the surrogate's gradient. In the forward kernels that sum costs
an ``exp`` and a reciprocal per neuron and step, which made 16-bit inference
issue-bound (Nsight Compute: SM 83%, DRAM 47% at bf16, T=8, 2^22).

For round-to-nearest floating point, ``sg + (h - sg) == h`` exactly whenever
``h`` is 0 or 1 and ``0 <= sg <= 2``:

* ``h == 0``: ``0 - sg`` is exact, and ``sg + (-sg)`` is ``+0``.
* ``h == 1``, ``sg >= 0.5``: ``1 - sg`` is exact (Sterbenz), so the sum is
  exactly 1.
* ``h == 1``, ``sg < 0.5``: ``d = fl(1 - sg)`` lies in ``(0.5, 1]``, so
  ``sg + d = 1 + err`` with ``|err| <= ulp(d) / 2``. That rounds to 1 (a tie
  at ``-ulp(d) / 2`` goes to 1, whose significand is even).

Our sigmoid (``1 / (1 + exp(-y))`` with a fast reciprocal, see lower.py) lies
in ``[0, 1]`` up to a few ulp. It is NaN exactly when ``y`` is NaN. So the sum
lowers to ``where(y != y, y, h)``: the same bits as before, NaN where it was
NaN. The sigmoid itself is left in the source, unused, and the Triton compiler
drops it.
"""

from __future__ import annotations

import torch
import torch.fx as fx

__all__ = ["match"]

aten = torch.ops.aten

#: ops that pass a value through unchanged (same dtype): the forward graph keeps ``detach``
_PASS_THROUGH = {aten.detach.default, aten.alias.default, aten.clone.default}
_TO_DTYPE = {aten._to_copy.default, aten.to.dtype, torch.ops.prims.convert_element_type.default}


def _dtype(node: object) -> torch.dtype | None:
    value = node.meta.get("val") if isinstance(node, fx.Node) else None
    return value.dtype if isinstance(value, torch.Tensor) else None


def _strip(node: object) -> object:
    while isinstance(node, fx.Node) and node.target in _PASS_THROUGH and _dtype(node.args[0]) == _dtype(node):
        node = node.args[0]
    return node


def _unit_alpha(node: fx.Node) -> bool:
    return node.kwargs.get("alpha", 1) == 1


def _is_step(node: object) -> bool:
    """A 0/1 value: a boolean converted to a floating dtype."""
    node = _strip(node)
    return (
        isinstance(node, fx.Node)
        and node.target in _TO_DTYPE
        and _dtype(node.args[0]) == torch.bool
        and (_dtype(node) or torch.bool).is_floating_point
    )


def match(node: fx.Node) -> tuple[fx.Node, fx.Node] | None:
    """For ``add(sg, sub(h, sg))`` (either order, through detach) with ``sg = sigmoid(y)``
    and ``h`` a 0/1 step: ``(y, h)``; else None."""
    if node.target is not aten.add.Tensor or not _unit_alpha(node) or len(node.args) != 2:
        return None
    for sg_arg, diff_arg in (node.args, node.args[::-1]):
        sg, diff = _strip(sg_arg), _strip(diff_arg)
        if not (isinstance(sg, fx.Node) and sg.target is aten.sigmoid.default):
            continue
        if not (isinstance(diff, fx.Node) and diff.target is aten.sub.Tensor and _unit_alpha(diff)):
            continue
        h, sg_again = diff.args[0], _strip(diff.args[1])
        if sg_again is sg and _is_step(h) and isinstance(sg.args[0], fx.Node):
            dtypes = {_dtype(node), _dtype(sg), _dtype(diff), _dtype(h)}
            if len(dtypes) == 1 and None not in dtypes:  # no promotion hiding in the sum
                return sg.args[0], h
    return None
