"""Generate the four multi-step Triton kernels of a core as one module.

Kinds (names are contracts used in manifests and by the runtime):

``inference``        outputs and state sequences, ``[T, N]`` each
``inference_final``  outputs per step, states only at the end
``forward``          training forward: outputs, optional state sequences,
                     final states and the extra saved buffers of the save plan
``backward``         reverse-time loop: gradients of inputs, initial states and
                     static inputs (summed over time)

Each program walks blocks of ``BLOCK`` neurons (grid-stride: one block per
program, or fewer programs than blocks for a persistent launch) and loops over
time; ``T`` and ``N`` are runtime arguments, so one binary serves every
sequence length and batch size. Offsets are int64. Optional tensors (initial
states, incoming gradients) come with an ``*_flag`` argument: a zero flag
masks the load off, so "no tensor" costs no memory traffic and needs no
second binary. The ``PREFETCH`` constexpr loads each streamed buffer one time
step ahead (a config choice, like ``BLOCK``).

Modules: :mod:`.blocks` (loads, stores, parameters, the time loop),
:mod:`.forward` (the three forward-running kinds), :mod:`.backward`,
:mod:`.partition` (the save plan), :mod:`.lower` (the aten op table).

The generated text depends only on the spec and the traced graphs, never on
time, paths or ids, so the same spec gives the same bytes on every machine.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from ..trace import GraphLike, TracedCore
from .backward import backward_kernel
from .blocks import KernelDef, placeholders, returns_of
from .forward import forward_kernel
from .partition import SavePlan, plan_saved

__all__ = ["FlexSNInfo", "KernelDef", "GeneratedKernels", "generate_kernels", "KINDS"]

KINDS = ("inference", "inference_final", "forward", "backward")


class FlexSNInfo(NamedTuple):
    """Metadata of one kernel path (fields of SpikingJelly's FlexSNInfo).

    ``fwd_core_args`` / ``fwd_core_returns`` are graph node names;
    ``fwd_core_recipients`` the kernel buffers the returns land in;
    ``fwd_kernel_returns`` every buffer the kernel writes;
    ``c2k_return_mapping`` the indices of ``fwd_kernel_returns`` that the
    backward kernel reads back (training path only).
    """

    num_inputs: int
    num_outputs: int
    num_states: int
    fwd_core_args: tuple[str, ...]
    fwd_core_returns: tuple[str, ...]
    fwd_core_recipients: tuple[str, ...]
    fwd_kernel_returns: tuple[str, ...]
    num_fwd_kernel_returns: int
    c2k_return_mapping: tuple[int, ...]


@dataclass
class GeneratedKernels:
    source: str
    kernels: dict[str, KernelDef]
    infos: dict[str, FlexSNInfo]
    plan: SavePlan | None
    #: per returned value (outputs then new states): differentiable or not
    differentiable_returns: tuple[bool, ...]
    sha256: str = field(init=False)

    def __post_init__(self) -> None:
        self.sha256 = hashlib.sha256(self.source.encode()).hexdigest()

    @property
    def trainable(self) -> bool:
        return "backward" in self.kernels


def _info(
    spec, gm: GraphLike, recipients: list[str], kernel_returns: list[str], c2k: tuple[int, ...] = ()  # noqa: ANN001
) -> FlexSNInfo:
    returns = returns_of(gm)
    return FlexSNInfo(
        num_inputs=spec.num_inputs,
        num_outputs=spec.num_outputs,
        num_states=spec.num_states,
        fwd_core_args=tuple(n.name for n in placeholders(gm)),
        fwd_core_returns=tuple(getattr(n, "name", str(n)) for n in returns),
        fwd_core_recipients=tuple(recipients),
        fwd_kernel_returns=tuple(kernel_returns),
        num_fwd_kernel_returns=len(kernel_returns),
        c2k_return_mapping=c2k,
    )


def generate_kernels(traced: TracedCore, *, round_extras: bool = True) -> GeneratedKernels:
    """Generate the kernel module for a traced core.

    ``round_extras=False`` keeps a bf16 core's extra saved values in fp32 (see
    :func:`~flexsn_core.codegen.partition.plan_saved`): for measurements only,
    since the spec key does not record it.
    """
    spec = traced.spec
    no, ns = spec.num_outputs, spec.num_states
    out_names = [f"out{i}" for i in range(no)]
    sseq_names = [f"sseq{j}" for j in range(ns)]
    fin_names = [f"fin{j}" for j in range(ns)]
    texts: list[str] = []
    kernels: dict[str, KernelDef] = {}
    infos: dict[str, FlexSNInfo] = {}

    text, kd = forward_kernel("inference", traced.inference, traced, [], state_seqs="always", finals=False)
    texts.append(text)
    kernels[kd.kind] = kd
    infos["inference"] = _info(spec, traced.inference, out_names + sseq_names, out_names + sseq_names)
    text, kd = forward_kernel(
        "inference_final", traced.inference, traced, [], state_seqs="never", finals=True
    )
    texts.append(text)
    kernels[kd.kind] = kd
    infos["inference_final"] = _info(spec, traced.inference, out_names + fin_names, out_names + fin_names)

    plan = None
    if traced.forward is not None and traced.backward is not None:
        plan = plan_saved(traced.forward, traced.num_saved, spec, traced.backward, round_extras=round_extras)
        fw_nodes = {n.name: n for n in traced.forward.graph.nodes}
        extras = [(fw_nodes[v.node], getattr(torch, v.dtype)) for v in plan.extras]
        text, kd = forward_kernel("forward", traced.forward, traced, extras, state_seqs="flag", finals=True)
        texts.append(text)
        kernels[kd.kind] = kd
        text, kd = backward_kernel(traced, plan)
        texts.append(text)
        kernels[kd.kind] = kd
        sav_names = [f"sav{m}" for m in range(len(extras))]
        kernel_returns = out_names + sseq_names + fin_names + sav_names
        read_back = {"output": "out", "state_prev": "sseq", "state_new": "sseq", "extra": "sav"}
        c2k = tuple(
            sorted(
                {
                    kernel_returns.index(f"{read_back[v.kind]}{v.index}")
                    for v in plan.loads
                    if v.kind in read_back
                }
            )
        )
        infos["training"] = _info(
            spec, traced.forward, out_names + sseq_names + sav_names, kernel_returns, c2k
        )

    header = (
        "# Generated by flexsn_core; do not edit. One module, four kernel kinds.\n"
        "import triton\nimport triton.language as tl\n"
    )
    source = header + "\n\n" + "\n\n".join(texts)
    return GeneratedKernels(
        source=source,
        kernels=kernels,
        infos=infos,
        plan=plan,
        differentiable_returns=tuple(t is not None for t in traced.tangent_of),
    )
