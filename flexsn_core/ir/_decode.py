"""Step 3 of reading an IR: the whole document against the spec.

Checks the version and spec key, reads each graph (:mod:`._graph`), and checks
that placeholder and return counts, dtypes, ``tangent_of``, ``num_saved`` and
``lines`` fit the spec and each other, so code generation gets graphs of the
shape tracing gives.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx

from ..errors import IRError
from ..spec import KernelSpec
from ..trace import TRACE_NUMEL, TracedCore
from ._format import IR_FORMAT, IR_VERSION, OP_NAME_RE, IRLimits
from ._graph import fields, read_graph, read_int

__all__ = ["decode_ir"]

_FIELDS = {"format", "version", "spec_key", "inference", "forward", "backward", "num_saved", "tangent_of", "lines"}


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise IRError(message)


def _check_tensors(
    nodes: list[fx.Node] | list[fx.Node | None], what: str, dtype: torch.dtype, shape: bool = False
) -> None:
    for i, node in enumerate(nodes):
        if node is None:
            raise IRError(f"{what} #{i} is missing (null)")
        val = node.meta["val"]
        _expect(val.dtype == dtype, f"{what} #{i} ({node.name}) has dtype {val.dtype}, not the spec's {dtype}")
        if shape:
            _expect(
                tuple(val.shape) == (TRACE_NUMEL,),
                f"{what} #{i} ({node.name}) has shape {list(val.shape)}, not [{TRACE_NUMEL}]",
            )


def decode_ir(spec: KernelSpec, data: dict[str, Any], limits: IRLimits) -> TracedCore:
    """Check a parsed IR against ``spec`` and rebuild its graphs."""
    fields(data, _FIELDS, "the IR")
    _expect(data["format"] == IR_FORMAT, f"the IR's format is {data['format']!r:.60}, not {IR_FORMAT!r}")
    version = data["version"]
    _expect(
        version == IR_VERSION and type(version) is int,
        f"IR version {version!r:.20} is not supported (this flexsn_core reads version {IR_VERSION})",
    )
    _expect(
        data["spec_key"] == spec.key,
        f"the IR is for spec key {data['spec_key']!r:.80}, not the requested spec {spec.key}",
    )
    dtype = spec.torch_dtype
    no, ns = spec.num_outputs, spec.num_states
    user = no + ns

    inference = read_graph(data["inference"], "inference", limits)
    _expect(
        len(inference.placeholders) == spec.num_args,
        f"the inference graph has {len(inference.placeholders)} inputs; the spec has {spec.num_args} "
        f"(num_inputs + num_states + num_static)",
    )
    _check_tensors(inference.placeholders, "inference input", dtype)
    _expect(
        len(inference.returns) == user,
        f"the inference graph returns {len(inference.returns)} values; the spec has {user} "
        "(num_outputs + num_states)",
    )
    _check_tensors(inference.returns, "inference return", dtype, shape=True)

    tangent_of = data["tangent_of"]
    _expect(
        isinstance(tangent_of, list) and len(tangent_of) == user,
        f"tangent_of must be a list of {user} entries (one per output and new state)",
    )
    tangents = [t for t in tangent_of if t is not None]
    _expect(
        all(type(t) is int for t in tangents) and tangents == list(range(len(tangents))),
        "tangent_of must hold null or the tangent indices 0, 1, 2, ... in order",
    )
    num_saved = read_int(data["num_saved"], "num_saved", 0, limits.max_nodes)

    forward = backward = None
    if data["forward"] is None or data["backward"] is None:
        _expect(
            data["forward"] is None and data["backward"] is None, "the IR has one training graph without the other"
        )
        _expect(
            not tangents and num_saved == 0, "an IR without training graphs has no tangents and saves nothing"
        )
    else:
        _expect(bool(tangents), "training graphs need at least one differentiable return (tangent_of)")
        forward = read_graph(data["forward"], "forward", limits)
        _expect(
            len(forward.placeholders) == spec.num_args,
            f"the forward graph has {len(forward.placeholders)} inputs; the spec has {spec.num_args}",
        )
        _check_tensors(forward.placeholders, "forward input", dtype)
        _expect(
            len(forward.returns) == user + num_saved,
            f"the forward graph returns {len(forward.returns)} values, not {user} + num_saved ({num_saved})",
        )
        _check_tensors(forward.returns[:user], "forward return", dtype)
        saved = forward.returns[user:]
        _expect(all(s is not None for s in saved), "every saved value of the forward graph must be a node")

        backward = read_graph(data["backward"], "backward", limits)
        _expect(
            len(backward.placeholders) == num_saved + len(tangents),
            f"the backward graph has {len(backward.placeholders)} inputs, not num_saved ({num_saved}) + "
            f"{len(tangents)} tangents",
        )
        for i, (param, src) in enumerate(zip(backward.placeholders, saved)):
            _expect(
                src is not None and param.meta["val"].dtype == src.meta["val"].dtype,
                f"backward input #{i} ({param.name}) and the value the forward saves for it differ in dtype",
            )
        _check_tensors(backward.placeholders[num_saved:], "backward tangent", dtype)
        _expect(
            len(backward.returns) == spec.num_args,
            f"the backward graph returns {len(backward.returns)} gradients; the spec has {spec.num_args} arguments",
        )

    lines = data["lines"]
    _expect(isinstance(lines, dict), "lines must be an object (op name -> source line)")
    _expect(len(lines) <= limits.max_lines, f"lines has more than {limits.max_lines} entries")
    for op, line in lines.items():
        _expect(OP_NAME_RE.fullmatch(op) is not None, f"lines: {op!r:.60} is not an aten op name")
        read_int(line, f"lines[{op!r}]", 1, limits.max_line)

    return TracedCore(
        spec=spec,
        inference=inference.module,
        forward=None if forward is None else forward.module,
        backward=None if backward is None else backward.module,
        num_saved=num_saved,
        tangent_of=tuple(tangent_of),
        lines=dict(lines),
    )
