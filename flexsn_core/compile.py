"""Compile generated kernels to GPU binaries for an explicit target.

``triton.compile`` with an explicit ``GPUTarget`` needs no GPU, so a CPU
machine can produce cubins for ``cuda:80`` and ``cuda:90``. The generated
module is written to a file named by its sha256 (Triton's JIT reads source
through ``inspect``) and imported once per process.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import sys
import tempfile
import threading
import types
from dataclasses import asdict, dataclass, replace
from typing import Any

from .counters import bump
from .codegen.kernels import GeneratedKernels, KernelDef
from .errors import CompileError
from .settings import cache_dir  # re-exported: the knob is read in settings

__all__ = [
    "KernelConfig",
    "DEFAULT_CONFIGS",
    "DEFAULT_SHAPES",
    "default_configs",
    "CompiledBinary",
    "compile_kernel",
    "load_generated_module",
    "parse_target",
    "canonical_target",
    "SUPPORTED_ARCHS",
    "cache_dir",
]


@dataclass(frozen=True)
class KernelConfig:
    """Launch configuration of one binary.

    ``aligned`` binaries assume every pointer is 16-byte aligned and ``N`` is a
    multiple of 16, which lets Triton emit vector loads; the runtime picks them
    only when the call satisfies both. ``prefetch`` loads each streamed buffer
    one time step ahead (the ``PREFETCH`` constexpr: two loads in flight per
    thread and stream instead of one). ``programs_per_sm`` > 0 makes the launch
    persistent: at most that many programs per multiprocessor, each walking
    blocks grid-stride (the same binary as 0; only the grid differs).
    """

    block: int = 1024
    num_warps: int = 4
    num_stages: int = 1
    aligned: bool = True
    prefetch: bool = False
    programs_per_sm: int = 0

    @property
    def id(self) -> str:
        extra = ("-pf" if self.prefetch else "") + (f"-g{self.programs_per_sm}" if self.programs_per_sm else "")
        return f"b{self.block}-w{self.num_warps}-s{self.num_stages}{extra}-{'a16' if self.aligned else 'u'}"

    @property
    def binary_key(self) -> KernelConfig:
        """The config that determines the binary (the launch grid policy does not)."""
        return replace(self, programs_per_sm=0)

    def grid(self, n: int, sm_count: int) -> int:
        """Programs to launch for ``n`` elements per step on a GPU with ``sm_count`` multiprocessors."""
        blocks = (n + self.block - 1) // self.block
        if self.programs_per_sm > 0:
            return max(1, min(blocks, self.programs_per_sm * sm_count))
        return blocks

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KernelConfig:
        return cls(**data)


def _configs(*shapes: tuple[int, int, int, bool]) -> tuple[KernelConfig, ...]:
    return tuple(
        KernelConfig(block, warps, stages, aligned, prefetch)
        for block, warps, stages, prefetch in shapes
        for aligned in (True, False)
    )


#: Configs built by default, per dtype, each aligned and not (block, warps,
#: stages, prefetch). fp32: on an H200 (bench/gpu_configs.py) 512x4 and 1024x8
#: were fastest or within 1% for every kind and size; 4096 lost up to 2x in the
#: backward; 1024x8 with prefetch is the candidate for 2^22. 16-bit: a thread
#: moves half the bytes per element, so these keep 8-16 elements per thread
#: (16-32 B per load) and prefetch, with the old best (2048x8) as a baseline.
#: bench/gpu_sweep.py measures them; autotuning picks per kind and size bucket.
DEFAULT_SHAPES: dict[str, tuple[tuple[int, int, int, bool], ...]] = {
    "float32": ((512, 4, 1, False), (1024, 8, 1, False), (1024, 8, 1, True)),
    "16bit": ((2048, 8, 1, False), (1024, 4, 1, True), (2048, 4, 1, True)),
}


def default_configs(dtype: Any = None) -> tuple[KernelConfig, ...]:
    """The configs built for a core of ``dtype`` (a torch dtype or its name; fp32 when None)."""
    name = str(dtype).removeprefix("torch.") if dtype is not None else "float32"
    return _configs(*DEFAULT_SHAPES["float32" if name == "float32" else "16bit"])


#: The fp32 default configs (``default_configs(dtype)`` has every dtype's).
DEFAULT_CONFIGS: tuple[KernelConfig, ...] = default_configs()


#: The GPU archs Triton 3.6 compiles for: what its bundled ptxas (CUDA 12.8,
#: and 12.9 "ptxas-blackwell" for sm_100 and up) accepts, each checked by
#: compiling every kernel kind for it on a CPU machine. sm_110 and others fail
#: in ptxas. Triton documents compute capability 8.0+ as supported; older archs
#: compile but are not tested here.
SUPPORTED_ARCHS: frozenset[int] = frozenset(
    {50, 52, 53, 60, 61, 62, 70, 72, 75, 80, 86, 87, 89, 90, 100, 101, 103, 120, 121}
)

_TARGET = re.compile(r"cuda:([0-9]{1,4})")


def parse_target(target: str) -> tuple[str, int]:
    """``"cuda:90"`` -> ``("cuda", 90)``; leading zeros are dropped (``cuda:090`` is ``cuda:90``).

    ValueError for anything else, including an arch Triton cannot compile for.
    """
    match = _TARGET.fullmatch(target) if isinstance(target, str) else None
    if match is None:
        raise ValueError(f"target must look like 'cuda:90' (cuda:<compute capability>), got {str(target)[:40]!r}")
    arch = int(match.group(1))
    if arch not in SUPPORTED_ARCHS:
        raise ValueError(
            f"target {target!r}: Triton 3.6 cannot compile for sm_{arch}; "
            f"supported: {', '.join(f'cuda:{a}' for a in sorted(SUPPORTED_ARCHS))}"
        )
    return "cuda", arch


def canonical_target(target: str) -> str:
    """The one spelling of a target that keys and manifests use (``cuda:090`` -> ``cuda:90``)."""
    backend, arch = parse_target(target)
    return f"{backend}:{arch}"


_MODULE_LOCK = threading.Lock()


def load_generated_module(gen: GeneratedKernels) -> types.ModuleType:
    """Import the generated source as a module (written under the cache dir)."""
    name = f"flexsn_generated_{gen.sha256[:24]}"
    with _MODULE_LOCK:
        module = sys.modules.get(name)
        if module is not None:
            return module
        folder = cache_dir() / "generated"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.py"
        data = gen.source.encode()
        if not path.exists() or hashlib.sha256(path.read_bytes()).hexdigest() != gen.sha256:
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
        return module


@dataclass(frozen=True)
class CompiledBinary:
    kind: str
    target: str
    config: KernelConfig
    binary: bytes
    launch: dict[str, Any]  # what a launcher needs: name, num_warps, shared, ...
    triton_metadata: dict[str, Any]  # Triton's own metadata (for Triton's launcher)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.binary).hexdigest()


_LAUNCH_KEYS = (
    "name",
    "num_warps",
    "num_ctas",
    "shared",
    "global_scratch_size",
    "global_scratch_align",
    "profile_scratch_size",
    "profile_scratch_align",
    "launch_cooperative_grid",
    "launch_pdl",
)


def _signature(kdef: KernelDef) -> dict[str, str]:
    return {name: ty for name, ty in kdef.params}


def _attrs(kdef: KernelDef, aligned: bool) -> dict[tuple[int, ...], list[list[Any]]]:
    if not aligned:
        return {}
    attrs: dict[tuple[int, ...], list[list[Any]]] = {}
    for i, (name, ty) in enumerate(kdef.params):
        if ty.startswith("*") or name == "N":
            attrs[(i,)] = [["tt.divisibility", 16]]
    return attrs


def compile_kernel(gen: GeneratedKernels, kind: str, config: KernelConfig, target: str) -> CompiledBinary:
    """Compile one kernel kind for one config and target (no GPU needed)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    kdef = gen.kernels[kind]
    backend, arch = parse_target(target)
    module = load_generated_module(gen)
    fn = JITFunction(getattr(module, kdef.name))
    src = ASTSource(
        fn=fn,
        signature=_signature(kdef),
        constexprs={"BLOCK": config.block, "INTERPRET": False, "PREFETCH": config.prefetch},
        attrs=_attrs(kdef, config.aligned),
    )
    options = {
        "num_warps": config.num_warps,
        "num_stages": config.num_stages,
        # PyTorch rounds after every op; a fused multiply-add would not.
        "enable_fp_fusion": False,
    }
    try:
        compiled = triton.compile(src, target=GPUTarget(backend, arch, 32), options=options)
    except Exception as exc:
        raise CompileError(
            f"Triton failed to compile the {kind} kernel for {target} ({config.id}): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    bump("compiles")
    meta = compiled.metadata._asdict()
    meta["target"] = {"backend": backend, "arch": arch, "warp_size": 32}
    meta.pop("extern_libs", None)  # local file paths; not needed to launch
    meta = json.loads(json.dumps(meta, default=str))
    launch = {key: meta[key] for key in _LAUNCH_KEYS}
    return CompiledBinary(
        kind=kind,
        target=f"{backend}:{arch}",
        config=config,
        binary=bytes(compiled.asm["cubin"]),
        launch=launch,
        triton_metadata=meta,
    )
