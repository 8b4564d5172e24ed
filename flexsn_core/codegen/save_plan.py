"""The save plan's data: what the backward kernel loads per step, in which dtype, and what it recomputes.

``partition.plan_saved`` decides it (the cut through the forward graph); the
kernel templates, the manifest and the training op read it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["SavedValue", "SavePlan", "scratch_states"]


def scratch_states(recompute_states: tuple[int, ...], first_input_grad: bool) -> tuple[int | None, tuple[int, ...]]:
    """Where recompute mode keeps each regenerated state sequence: ``(spare, own)``.

    ``spare``: the state whose sequence lives in the first input gradient's
    ``[T, N]`` buffer (read one row behind where the gradient is written), when
    that gradient is computed. ``own``: the other states, each in a scratch
    buffer of ``[T, width]`` where ``width`` covers the launch's programs times
    ``BLOCK``: a program walks its blocks grid-stride and reuses its own
    columns for each, so the scratch is a fraction of a ``[T, N]`` buffer (the
    kernel and the runtime both follow this split).
    """
    if not recompute_states:
        return None, ()
    if first_input_grad:
        return recompute_states[0], tuple(recompute_states[1:])
    return None, tuple(recompute_states)


@dataclass(frozen=True)
class SavedValue:
    """One value the backward kernel loads per step (a node of the AOT forward graph)."""

    node: str  # name of the forward-graph node
    kind: str  # "input" | "state_prev" | "state_new" | "output" | "static" | "extra"
    index: int  # which input/state/output/static/extra
    dtype: str  # torch dtype name it is kept in, e.g. "float32", "bfloat16" or "bool"


def _size(dtype: str | torch.dtype) -> int:
    dt = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    return dt.itemsize


@dataclass(frozen=True)
class SavePlan:
    """The cut: what is loaded per step, and which forward nodes are recomputed."""

    loads: tuple[SavedValue, ...]
    recompute: tuple[str, ...]  # forward-graph node names, in graph order
    #: recompute mode: the inputs the backward kernel reads, and the states whose
    #: sequences its first pass regenerates (a scratch buffer each)
    recompute_inputs: tuple[int, ...] = ()
    recompute_states: tuple[int, ...] = ()

    @property
    def extras(self) -> tuple[SavedValue, ...]:
        return tuple(v for v in self.loads if v.kind == "extra")

    def _indices(self, *kinds: str) -> tuple[int, ...]:
        return tuple(sorted({v.index for v in self.loads if v.kind in kinds}))

    @property
    def inputs(self) -> tuple[int, ...]:
        """Input sequences the backward kernel reads (stored mode)."""
        return self._indices("input")

    @property
    def outputs(self) -> tuple[int, ...]:
        """Output sequences the backward kernel reads (stored mode)."""
        return self._indices("output")

    @property
    def state_seqs(self) -> tuple[int, ...]:
        """States whose sequences the forward must store for the backward (stored mode)."""
        return self._indices("state_prev", "state_new")

    @property
    def needs_state_seqs(self) -> bool:
        return bool(self.state_seqs)

    @property
    def needs_init(self) -> bool:
        """The backward reads the initial states (a state before step 0) in stored mode."""
        return any(v.kind == "state_prev" for v in self.loads)

    def _buffers(self) -> dict[tuple[str, int], int]:
        """Each ``[T, N]`` buffer the backward reads, with its element size (a state sequence once)."""
        buffers: dict[tuple[str, int], int] = {}
        for v in self.loads:
            kind = "state" if v.kind in ("state_prev", "state_new") else v.kind
            if kind != "static":
                buffers[(kind, v.index)] = _size(v.dtype)
        return buffers

    @property
    def bytes_per_step(self) -> int:
        """Memory traffic per neuron and step this plan adds to forward + backward (stored mode)."""
        return sum(size if kind in ("input", "output") else 2 * size for (kind, _), size in self._buffers().items())

    @property
    def held_bytes_per_step(self) -> int:
        """Bytes per neuron and step kept alive from the forward to the backward (stored mode).

        What the training op saves for autograd: every buffer the backward
        kernel reads, outputs included (usually the caller keeps them anyway).
        """
        return sum(self._buffers().values())

    def to_dict(self) -> dict[str, object]:
        """The manifest's ``plan`` entry."""
        return {
            "loads": [vars(v) for v in self.loads],
            "recompute": list(self.recompute),
            "needs_state_seqs": self.needs_state_seqs,
            "state_seqs": list(self.state_seqs),
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "needs_init": self.needs_init,
            "recompute_inputs": list(self.recompute_inputs),
            "recompute_states": list(self.recompute_states),
            "bytes_per_step": self.bytes_per_step,
            "held_bytes_per_step": self.held_bytes_per_step,
        }
