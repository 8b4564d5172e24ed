"""What a manifest offers a loader: kernel layouts and binaries by (kind, target, config).

Pure data, no device work: :class:`KernelIndex` reads the parts of a manifest
the runtime needs (the spec, each kind's parameters, the save plan's extra
buffers, the binaries) once, so per-call code never walks JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from ..compile import KernelConfig
from ..spec import KernelSpec

__all__ = ["Binary", "KernelIndex", "PlanView"]


@dataclass(frozen=True)
class Binary:
    """One compiled kernel of the manifest: its entry (launch metadata, sha256) and config."""

    entry: Mapping[str, Any]
    config: KernelConfig

    @property
    def sha256(self) -> str:
        return str(self.entry["sha256"])


class PlanView(NamedTuple):
    """The manifest's save plan, as the runtime and the ops use it (indices into inputs, outputs, states)."""

    #: dtypes of the extra ``[T, N]`` buffers (stored mode)
    extras: tuple[torch.dtype, ...] = ()
    #: stored mode: the sequences the backward kernel reads
    inputs: tuple[int, ...] = ()
    outputs: tuple[int, ...] = ()
    state_seqs: tuple[int, ...] = ()
    #: stored mode reads the initial states
    needs_init: bool = False
    #: recompute mode: the inputs it reads, the states whose sequences it regenerates
    recompute_inputs: tuple[int, ...] = ()
    recompute_states: tuple[int, ...] = ()
    #: bytes per neuron and step kept alive from forward to backward in stored mode
    held_bytes_per_step: int = 0

    @classmethod
    def from_manifest(cls, plan: Mapping[str, Any] | None) -> PlanView:
        if not plan:
            return cls()
        loads = plan.get("loads", [])

        def indices(*kinds: str) -> tuple[int, ...]:
            return tuple(sorted({int(v["index"]) for v in loads if v["kind"] in kinds}))

        return cls(
            extras=tuple(getattr(torch, v["dtype"]) for v in loads if v["kind"] == "extra"),
            inputs=indices("input"),
            outputs=indices("output"),
            state_seqs=indices("state_prev", "state_new"),
            needs_init=any(v["kind"] == "state_prev" for v in loads),
            recompute_inputs=tuple(int(i) for i in plan.get("recompute_inputs", ())),
            recompute_states=tuple(int(j) for j in plan.get("recompute_states", ())),
            held_bytes_per_step=int(plan.get("held_bytes_per_step", 0)),
        )

    @property
    def recompute_needs_init(self) -> bool:
        """Recompute mode reads the initial states (its first pass starts from them)."""
        return bool(self.recompute_states) or self.needs_init


class KernelIndex:
    """The launch-relevant view of one manifest."""

    def __init__(self, manifest: Mapping[str, Any]) -> None:
        self.spec = KernelSpec.from_dict(manifest["spec"])
        self.dtype: torch.dtype = self.spec.torch_dtype
        #: parameters per kind, ``(name, type)`` in signature order (constexprs included)
        self.params: dict[str, list[tuple[str, str]]] = {
            kind: [(str(p[0]), str(p[1])) for p in k["params"]] for kind, k in manifest["kernels"].items()
        }
        #: non-constexpr parameter names per kind, in launch order
        self.arg_names: dict[str, list[str]] = {
            kind: [n for n, ty in params if ty != "constexpr"] for kind, params in self.params.items()
        }
        #: the save plan: what the training forward keeps for the backward kernel
        self.plan = PlanView.from_manifest(manifest.get("plan"))
        #: dtypes of the extra buffers the training forward saves for the backward
        self.extras: list[torch.dtype] = list(self.plan.extras)
        self.needs_state_seqs = bool(self.plan.state_seqs)
        self.differentiable_returns = tuple(manifest.get("differentiable_returns", ()))
        self._binaries: dict[tuple[str, str, str], Binary] = {}
        for entry in manifest.get("binaries", []):
            config = KernelConfig.from_dict(entry["config"])
            self._binaries[(entry["kind"], entry["target"], config.id)] = Binary(entry, config)
        spec = self.spec
        #: parameter names by role, e.g. names["in"] == ["in0", "in1"]
        self.names: dict[str, list[str]] = {
            "in": [f"in{i}" for i in range(spec.num_inputs)],
            "init": [f"init{j}" for j in range(spec.num_states)],
            "init_flag": [f"init{j}_flag" for j in range(spec.num_states)],
            "st": [f"st{c}" for c in range(spec.num_static)],
            "st_stride": [f"st{c}_stride" for c in range(spec.num_static)],
            "out": [f"out{i}" for i in range(spec.num_outputs)],
            "sseq": [f"sseq{j}" for j in range(spec.num_states)],
            "fin": [f"fin{j}" for j in range(spec.num_states)],
        }

    @property
    def trainable(self) -> bool:
        return "forward" in self.params

    def targets(self) -> set[str]:
        return {target for _, target, _ in self._binaries}

    def configs(self, kind: str, target: str) -> list[KernelConfig]:
        """Configs with a binary of ``kind`` for ``target``, in manifest order."""
        return [b.config for (k, t, _), b in self._binaries.items() if k == kind and t == target]

    def binary(self, kind: str, target: str, config_id: str) -> Binary:
        return self._binaries[(kind, target, config_id)]
