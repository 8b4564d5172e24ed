"""Launch a spec's kernels from its artifact, without compiling anything.

A :class:`KernelSet` wraps one manifest. On a CUDA device it loads the
binaries built for the device's arch (through :mod:`cuda_driver`, or Triton's
launcher with ``FLEXSN_LAUNCHER=triton``) and picks, per call, the tuned
config of the call's size bucket and the aligned or unaligned variant. On CPU
tensors under ``TRITON_INTERPRET=1`` it runs the generated source in Triton's
interpreter; that source is regenerated locally and must hash to the
manifest's ``source.sha256``.

The ``run_*`` functions below are the four kernel kinds as tensor functions
over flattened ``[T, N]`` sequences; the custom ops and modules build on them.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .counters import bump
from .codegen.kernels import GeneratedKernels
from .compile import KernelConfig, load_generated_module
from .errors import ArtifactError, IntegrityError
from .spec import KernelSpec

__all__ = [
    "KernelSet",
    "size_bucket",
    "interpreter_enabled",
    "run_inference",
    "run_inference_final",
    "run_forward",
    "run_backward",
    "StaticArg",
]

BlobFetcher = Callable[[str], bytes]

#: Upper bounds (inclusive) of the element-count buckets used for tuning.
BUCKET_BOUNDS = (1 << 16, 1 << 20, 1 << 22, 1 << 24)


def size_bucket(numel: int) -> int:
    """Tuning bucket of a per-step element count: 0 (small) .. 4 (huge)."""
    for i, bound in enumerate(BUCKET_BOUNDS):
        if numel <= bound:
            return i
    return len(BUCKET_BOUNDS)


def _autotune_enabled() -> bool:
    return os.environ.get("FLEXSN_AUTOTUNE", "1") not in ("", "0")


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def usable_configs(configs: Sequence[KernelConfig], aligned: bool) -> list[KernelConfig]:
    """Configs that may run a call: aligned binaries only when the call is aligned."""
    return [c for c in configs if aligned or not c.aligned]


def _default_config_id(configs: Sequence[KernelConfig], aligned: bool) -> str:
    """Without a tuned choice: the matching variant, block size closest to 1024."""
    pool = [c for c in configs if c.aligned == aligned] or list(configs)
    best = min(pool, key=lambda c: (abs(c.block - 1024), c.num_warps, c.num_stages))
    return best.id


@dataclass
class _Binary:
    entry: dict[str, Any]
    config: KernelConfig


class KernelSet:
    """Launchable kernels of one spec, built from its manifest."""

    def __init__(
        self,
        manifest: dict[str, Any],
        *,
        fetch: BlobFetcher | None = None,
        generated: GeneratedKernels | None = None,
    ) -> None:
        self.manifest = manifest
        self.spec = KernelSpec.from_dict(manifest["spec"])
        self.dtype = self.spec.torch_dtype
        self.params: dict[str, list[tuple[str, str]]] = {
            kind: [tuple(p) for p in k["params"]] for kind, k in manifest["kernels"].items()  # type: ignore[misc]
        }
        plan = manifest.get("plan") or {}
        self.extras: list[torch.dtype] = [
            getattr(torch, v["dtype"]) for v in plan.get("loads", []) if v["kind"] == "extra"
        ]
        self.needs_state_seqs = bool(plan.get("needs_state_seqs", False))
        self.differentiable_returns = tuple(manifest.get("differentiable_returns", ()))
        self._fetch = fetch
        self._generated = generated
        if generated is not None and generated.sha256 != manifest["source"]["sha256"]:
            raise IntegrityError(
                "the locally generated kernel source does not match the manifest "
                f"(local {generated.sha256[:16]}…, manifest {manifest['source']['sha256'][:16]}…); "
                "the service and this process disagree on codegen or torch version"
            )
        self._binaries: dict[tuple[str, str, str], _Binary] = {}
        for entry in manifest.get("binaries", []):
            config = KernelConfig.from_dict(entry["config"])
            self._binaries[(entry["kind"], entry["target"], config.id)] = _Binary(entry, config)
        self._loaded: dict[tuple[str, str, int], Any] = {}
        # Non-constexpr parameter names per kind, in launch order.
        self._arg_names = {kind: [n for n, ty in params if ty != "constexpr"] for kind, params in self.params.items()}
        self._choices: dict[tuple[str, int, int, bool], tuple[Any, int]] = {}
        self._interp: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._dummy: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
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
        #: called with each new tuning decision (to store or report it)
        self.on_tuned: Callable[[dict[str, Any]], None] | None = None

    # ------------------------------------------------------------ queries
    @property
    def trainable(self) -> bool:
        return "forward" in self.params

    def targets(self) -> set[str]:
        return {target for _, target, _ in self._binaries}

    def configs(self, kind: str, target: str) -> list[KernelConfig]:
        return [b.config for (k, t, _), b in self._binaries.items() if k == kind and t == target]

    def tuned_config_id(self, target: str, kind: str, bucket: int, aligned: bool) -> str | None:
        choice = self.manifest.get("tuning", {}).get(target, {}).get(kind, {}).get(str(bucket))
        if isinstance(choice, dict):
            return choice.get("aligned" if aligned else "unaligned")
        return None

    def dummy(self, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
        """A small buffer passed for absent optional pointers (never read).

        Its dtype matches the parameter's: the interpreter types pointers by
        the tensor passed.
        """
        dtype = dtype or self.dtype
        t = self._dummy.get((device, dtype))
        if t is None:
            t = torch.zeros(16, dtype=dtype, device=device)
            self._dummy[(device, dtype)] = t
        return t

    # ------------------------------------------------------------ launching
    def launch(self, kind: str, values: dict[str, Any], n: int, device: torch.device) -> None:
        """Launch ``kind`` with arguments by parameter name (T and N included)."""
        if n == 0 or values["T"] == 0:
            return
        args = [values[name] for name in self._arg_names[kind]]
        if device.type == "cuda":
            self._launch_cuda(kind, args, n, device)
        elif device.type == "cpu":
            self._launch_interpreter(kind, args, n)
        else:
            raise ArtifactError(f"FlexSN kernels cannot run on {device.type} tensors")

    def _launch_interpreter(self, kind: str, args: list[Any], n: int) -> None:
        if self._generated is None:
            raise ArtifactError(
                "CPU tensors need the interpreter (TRITON_INTERPRET=1) and locally generated source"
            )
        fn = self._interp.get(kind)
        if fn is None:
            from triton.runtime.interpreter import InterpretedFunction

            module = load_generated_module(self._generated)
            fn = InterpretedFunction(getattr(module, self._generated.kernels[kind].name))
            self._interp[kind] = fn
        block = min(1024, max(16, 1 << (n - 1).bit_length()))
        fn[((n + block - 1) // block,)](*args, BLOCK=block, INTERPRET=True)

    def _launch_cuda(self, kind: str, args: list[Any], n: int, device: torch.device) -> None:
        ptr_args = [a.data_ptr() if isinstance(a, torch.Tensor) else a for a in args]
        aligned = n % 16 == 0 and all(p % 16 == 0 for p, a in zip(ptr_args, args) if isinstance(a, torch.Tensor))
        index = device.index if device.index is not None else torch.cuda.current_device()
        choice = self._choices.get((kind, index, size_bucket(n), aligned))
        if choice is None:
            choice = self._choose(kind, index, n, aligned, ptr_args)
        fn, block = choice
        fn((n + block - 1) // block, torch.cuda.current_stream(device).cuda_stream, ptr_args)

    def _choose(self, kind: str, index: int, n: int, aligned: bool, ptr_args: list[Any]) -> tuple[Any, int]:
        """The binary for (kind, device, size bucket, alignment): tuned, autotuned now, or the default.

        Cached, so later calls in the bucket cost one dict lookup.
        """
        major, minor = torch.cuda.get_device_capability(index)
        target = f"cuda:{major * 10 + minor}"
        bucket = size_bucket(n)
        params = self.params[kind]
        config_id = self.tuned_config_id(target, kind, bucket, aligned)
        if config_id is None:
            candidates = usable_configs(self.configs(kind, target), aligned)
            if not candidates:
                raise ArtifactError(
                    f"the artifact has no {kind} binary for {target}; ask the service to build "
                    f"this arch (FLEXSN_SERVICE_TARGETS) or build locally"
                )
            if _autotune_enabled() and len(candidates) > 1 and not torch.cuda.is_current_stream_capturing():
                config_id = self._autotune(kind, target, bucket, aligned, candidates, params, index, n, ptr_args)
            else:
                config_id = _default_config_id(candidates, aligned)
        binary = self._binaries[(kind, target, config_id)]
        choice = (self._function(kind, target, binary, params, index), binary.config.block)
        self._choices[(kind, index, bucket, aligned)] = choice
        return choice

    def _autotune(
        self,
        kind: str,
        target: str,
        bucket: int,
        aligned: bool,
        candidates: list[KernelConfig],
        params: list[tuple[str, str]],
        device: int,
        n: int,
        args: list[Any],
    ) -> str:
        """Time each candidate on this call's arguments; record and return the fastest.

        Launches are idempotent (every kernel overwrites its outputs), so
        timing on the real buffers is safe. A config that fails scores inf.
        """
        stream = torch.cuda.current_stream(device)
        timings: dict[str, float] = {}
        for config in candidates:
            try:
                fn = self._function(kind, target, self._binaries[(kind, target, config.id)], params, device)
                grid = (n + config.block - 1) // config.block
                for _ in range(3):
                    fn(grid, stream.cuda_stream, args)
                # The best of a few short batches: robust to a stray slow launch.
                best = float("inf")
                for _ in range(3):
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record(stream)
                    for _ in range(8):
                        fn(grid, stream.cuda_stream, args)
                    end.record(stream)
                    end.synchronize()
                    best = min(best, start.elapsed_time(end) / 8)
                timings[config.id] = best
            except Exception:  # noqa: BLE001 - a failing config is simply not chosen
                timings[config.id] = float("inf")
        best = min(timings, key=timings.__getitem__)
        if timings[best] == float("inf"):
            raise ArtifactError(f"every {kind} config failed to launch on {target}")
        variant = "aligned" if aligned else "unaligned"
        table = self.manifest.setdefault("tuning", {}).setdefault(target, {}).setdefault(kind, {})
        table.setdefault(str(bucket), {})[variant] = best
        bump("autotunes")
        if self.on_tuned is not None:
            self.on_tuned(
                {"target": target, "kind": kind, "bucket": bucket, "variant": variant, "config_id": best,
                 "timings_ms": {k: (None if v == float("inf") else round(v, 5)) for k, v in timings.items()}}
            )
        return best

    def _function(self, kind: str, target: str, binary: _Binary, params: list[tuple[str, str]], device: int) -> Callable[..., None]:
        key = (kind, binary.config.id, device)
        fn = self._loaded.get(key)
        if fn is not None:
            return fn
        with self._lock:
            fn = self._loaded.get(key)
            if fn is not None:
                return fn
            if self._fetch is None:
                raise ArtifactError("no blob source to load binaries from")
            cubin = self._fetch(binary.entry["sha256"])
            if os.environ.get("FLEXSN_LAUNCHER", "driver") == "triton":
                fn = _triton_launcher(cubin, binary.entry, params, device)
            else:
                from .cuda_driver import driver

                drv = driver()
                loaded = drv.load(cubin, binary.entry["launch"], params, device)

                def fn(grid: int, stream: int, args: list[Any], _l=loaded, _d=drv) -> None:  # noqa: ANN001
                    _d.launch(_l, grid, stream, args)

            self._loaded[key] = fn
            return fn


def _triton_launcher(cubin: bytes, entry: dict[str, Any], params: list[tuple[str, str]], device: int) -> Callable[..., None]:
    """Load a cubin through Triton's CompiledKernel (builds Triton's C launcher)."""
    import json
    import tempfile
    from pathlib import Path
    from types import SimpleNamespace

    from triton.compiler.compiler import CompiledKernel

    meta = dict(entry["triton_metadata"])
    meta.setdefault("extern_libs", [])
    folder = Path(tempfile.mkdtemp(prefix="flexsn-triton-"))
    name = entry["launch"]["name"]
    (folder / f"{name}.json").write_text(json.dumps(meta))
    (folder / f"{name}.cubin").write_bytes(cubin)
    arg_names = [n for n, _ in params]
    signature = {n: t for n, t in params}
    constants = {(arg_names.index("BLOCK"),): entry["config"]["block"], (arg_names.index("INTERPRET"),): False}
    src = SimpleNamespace(
        signature=signature, constants=constants, fn=SimpleNamespace(arg_names=arg_names)
    )
    group = {f"{name}.json": str(folder / f"{name}.json"), f"{name}.cubin": str(folder / f"{name}.cubin")}
    kernel = CompiledKernel(src, group, meta.get("hash", ""))
    block = entry["config"]["block"]

    def launch(grid: int, stream: int, args: list[Any]) -> None:
        with torch.cuda.device(device):
            kernel[(grid, 1, 1)](*args, block, False, stream=stream)

    return launch


# --------------------------------------------------------------------------
# the four kinds as tensor functions
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class StaticArg:
    """A static input prepared for the kernel: a flat buffer and its stride."""

    tensor: torch.Tensor  # 1 element (stride 0) or N elements (stride 1)
    stride: int
    shape: torch.Size  # the caller's shape, for reducing the gradient
    elem_shape: torch.Size  # the per-step shape it was broadcast to

    @classmethod
    def prepare(cls, static: torch.Tensor, elem_shape: torch.Size, dtype: torch.dtype) -> StaticArg:
        t = static.detach().to(dtype)
        if t.numel() == 1:
            return cls(t.reshape(1).contiguous(), 0, static.shape, torch.Size(elem_shape))
        try:
            full = t.expand(elem_shape)
        except RuntimeError as exc:
            raise ValueError(
                f"static input of shape {tuple(static.shape)} does not broadcast to the "
                f"per-step shape {tuple(elem_shape)}"
            ) from exc
        return cls(full.contiguous().reshape(-1), 1, static.shape, torch.Size(elem_shape))

    def reduce_grad(self, grad: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Sum a per-neuron fp32 gradient back to the static input's shape."""
        if self.stride == 0:
            return grad.sum().reshape(self.shape).to(dtype)
        return grad.reshape(self.elem_shape).sum_to_size(self.shape).to(dtype)


def _common(
    ks: KernelSet,
    inputs: Sequence[torch.Tensor],
    inits: Sequence[torch.Tensor | None],
    statics: Sequence[StaticArg],
) -> tuple[dict[str, Any], int, int, torch.device]:
    x0 = inputs[0]
    shape = x0.shape
    T, N = shape[0], math.prod(shape[1:])
    device = x0.device
    names = ks.names
    values: dict[str, Any] = {"T": T, "N": N}
    values.update(zip(names["in"], inputs))
    for name, flag, s in zip(names["init"], names["init_flag"], inits):
        if s is None:
            values[name], values[flag] = ks.dummy(device), 0
        else:
            values[name], values[flag] = s, 1
    for name, stride, st in zip(names["st"], names["st_stride"], statics):
        values[name], values[stride] = st.tensor, st.stride
    return values, T, N, device


def _empty_seq(like: torch.Tensor, n: int) -> list[torch.Tensor]:
    return [torch.empty_like(like) for _ in range(n)]


def _finals_when_empty(inits: Sequence[torch.Tensor | None], x0: torch.Tensor) -> list[torch.Tensor]:
    return [s.clone() if s is not None else x0.new_zeros(x0.shape[1:]) for s in inits]


def run_inference(
    ks: KernelSet,
    inputs: Sequence[torch.Tensor],
    inits: Sequence[torch.Tensor | None],
    statics: Sequence[StaticArg] = (),
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Outputs and state sequences, each shaped like ``inputs[0]``."""
    values, T, N, device = _common(ks, inputs, inits, statics)
    spec = ks.spec
    outs = _empty_seq(inputs[0], spec.num_outputs)
    sseqs = _empty_seq(inputs[0], spec.num_states)
    values.update(zip(ks.names["out"], outs))
    values.update(zip(ks.names["sseq"], sseqs))
    ks.launch("inference", values, N, device)
    return outs, sseqs


def run_inference_final(
    ks: KernelSet,
    inputs: Sequence[torch.Tensor],
    inits: Sequence[torch.Tensor | None],
    statics: Sequence[StaticArg] = (),
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Outputs per step and final states."""
    values, T, N, device = _common(ks, inputs, inits, statics)
    spec = ks.spec
    outs = _empty_seq(inputs[0], spec.num_outputs)
    if T == 0:
        return outs, _finals_when_empty(inits, inputs[0])
    finals = [inputs[0].new_empty(inputs[0].shape[1:]) for _ in range(spec.num_states)]
    values.update(zip(ks.names["out"], outs))
    values.update(zip(ks.names["fin"], finals))
    ks.launch("inference_final", values, N, device)
    return outs, finals


def run_forward(
    ks: KernelSet,
    inputs: Sequence[torch.Tensor],
    inits: Sequence[torch.Tensor | None],
    statics: Sequence[StaticArg] = (),
    *,
    store_state_seqs: bool = True,
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None, list[torch.Tensor], list[torch.Tensor]]:
    """Training forward: outputs, state sequences (if stored), final states, saved extras.

    State sequences are stored when asked for or when the backward reads them.
    """
    values, T, N, device = _common(ks, inputs, inits, statics)
    spec = ks.spec
    x0 = inputs[0]
    store = store_state_seqs or ks.needs_state_seqs
    outs = _empty_seq(x0, spec.num_outputs)
    sseqs = _empty_seq(x0, spec.num_states) if store else None
    extras = [torch.empty(x0.shape, dtype=dt, device=device) for dt in ks.extras]
    if T == 0:
        return outs, sseqs, _finals_when_empty(inits, x0), extras
    finals = [x0.new_empty(x0.shape[1:]) for _ in range(spec.num_states)]
    dummy = ks.dummy(device)
    values.update({f"out{i}": o for i, o in enumerate(outs)})
    for j in range(spec.num_states):
        values[f"sseq{j}"] = sseqs[j] if sseqs is not None else dummy
        values[f"fin{j}"] = finals[j]
    values["store_sseq"] = 1 if store else 0
    values.update({f"sav{m}": e for m, e in enumerate(extras)})
    ks.launch("forward", values, N, device)
    return outs, sseqs, finals, extras


def run_backward(
    ks: KernelSet,
    inputs: Sequence[torch.Tensor],
    inits: Sequence[torch.Tensor | None],
    statics: Sequence[StaticArg],
    outs: Sequence[torch.Tensor],
    sseqs: Sequence[torch.Tensor] | None,
    extras: Sequence[torch.Tensor],
    grad_outs: Sequence[torch.Tensor | None],
    grad_sseqs: Sequence[torch.Tensor | None],
    grad_finals: Sequence[torch.Tensor | None],
) -> tuple[list[torch.Tensor | None], list[torch.Tensor | None], list[torch.Tensor | None]]:
    """Gradients of inputs, initial states and static inputs (None where not required)."""
    values, T, N, device = _common(ks, inputs, inits, statics)
    spec = ks.spec
    req = spec.requires_grad or ()
    ni, ns, nc = spec.num_inputs, spec.num_states, spec.num_static
    x0 = inputs[0]
    dummy = ks.dummy(device)
    grad_in = [torch.empty_like(x0) if req[i] else None for i in range(ni)]
    grad_init = [x0.new_empty(x0.shape[1:]) if req[ni + j] else None for j in range(ns)]
    grad_static_flat = [
        torch.zeros(N, dtype=torch.float32, device=device) if req[ni + ns + c] else None for c in range(nc)
    ]
    if T == 0:
        for j, g in enumerate(grad_init):
            if g is not None:
                gf = grad_finals[j]
                g.copy_(gf if gf is not None else torch.zeros_like(g))
        grad_static = [
            None if g is None else statics[c].reduce_grad(g, spec.torch_dtype)
            for c, g in enumerate(grad_static_flat)
        ]
        return grad_in, grad_init, grad_static  # type: ignore[return-value]
    for i in range(spec.num_outputs):
        values[f"out{i}"] = outs[i]
        g = grad_outs[i]
        values[f"gout{i}"] = dummy if g is None else g
        values[f"gout{i}_flag"] = 0 if g is None else 1
    for j in range(ns):
        values[f"sseq{j}"] = sseqs[j] if sseqs is not None else dummy
        for name, g in ((f"gsseq{j}", grad_sseqs[j]), (f"gfin{j}", grad_finals[j])):
            values[name] = dummy if g is None else g
            values[f"{name}_flag"] = 0 if g is None else 1
        values[f"ginit{j}"] = grad_init[j] if grad_init[j] is not None else dummy
    values.update({f"sav{m}": e for m, e in enumerate(extras)})
    for i in range(ni):
        values[f"gin{i}"] = grad_in[i] if grad_in[i] is not None else dummy
    for c in range(nc):
        flat = grad_static_flat[c]
        values[f"gst{c}"] = flat if flat is not None else ks.dummy(device, torch.float32)
    ks.launch("backward", values, N, device)
    grad_static = [
        None if g is None else statics[c].reduce_grad(g, spec.torch_dtype)
        for c, g in enumerate(grad_static_flat)
    ]
    return grad_in, grad_init, grad_static  # type: ignore[return-value]
