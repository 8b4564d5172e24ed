"""Launch a spec's kernels from its artifact, without compiling anything.

A :class:`KernelSet` wraps one manifest. On a CUDA device it loads the
binaries built for the device's arch (through the launcher ``FLEXSN_LAUNCHER``
selects) and picks, per call, the tuned config of the call's size bucket and
the aligned or unaligned variant, autotuning a bucket the manifest has no
choice for. On CPU tensors under ``TRITON_INTERPRET=1`` it runs the generated
source in Triton's interpreter; that source is regenerated locally and must
hash to the manifest's ``source.sha256``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import torch

from .. import settings
from ..codegen.kernels import GeneratedKernels
from ..compile import KernelConfig
from ..counters import bump
from ..errors import ArtifactError, IntegrityError
from . import cuda as _cuda
from .autotune import Timer, autotune, cuda_event_timer, report_timings
from .index import Binary, KernelIndex
from .launchers import Launchable, Launcher, gpu_launcher
from .launchers.interpreter import InterpreterLauncher, interpreter_block
from .selection import (
    ChoiceCache,
    default_config_id,
    record_choice,
    size_bucket,
    tuned_config_id,
    usable_configs,
    variant_name,
)

__all__ = ["KernelSet", "BlobFetcher"]

logger = logging.getLogger("flexsn_core")

BlobFetcher = Callable[[str], bytes]

#: scratch columns per multiprocessor: 2048 resident threads x 8 elements (BLOCK 1024 over 4 warps),
#: so a width-capped launch still fills the GPU while its scratch is a fraction of a large layer
SCRATCH_COLUMNS_PER_SM = 16384


class KernelSet:
    """Launchable kernels of one spec, built from its manifest.

    ``fetch(sha256) -> bytes`` supplies binaries (GPU); ``generated`` the locally
    generated source (interpreter). ``launcher`` overrides the GPU launcher and
    ``timer`` the autotuner's timer (tests pass fakes). ``on_tuned(decision)`` is
    called with each new tuning decision, to store or report it.
    """

    def __init__(
        self,
        manifest: dict[str, Any],
        *,
        fetch: BlobFetcher | None = None,
        generated: GeneratedKernels | None = None,
        launcher: Launcher | None = None,
        timer: Timer | None = None,
    ) -> None:
        self.manifest = manifest
        self.index = index = KernelIndex(manifest)
        self.spec = index.spec
        self.dtype = index.dtype
        self.params = index.params
        #: the save plan (stored and recompute modes of the backward)
        self.plan = index.plan
        self.extras = index.extras
        self.needs_state_seqs = index.needs_state_seqs
        self.differentiable_returns = index.differentiable_returns
        #: parameter names by role, e.g. names["in"] == ["in0", "in1"]
        self.names = index.names
        if generated is not None and generated.sha256 != manifest["source"]["sha256"]:
            raise IntegrityError(
                "the locally generated kernel source does not match the manifest "
                f"(local {generated.sha256[:16]}…, manifest {manifest['source']['sha256'][:16]}…); "
                "the service and this process disagree on codegen or torch version"
            )
        self._fetch = fetch
        self._generated = generated
        self._launcher = launcher
        self._timer: Timer = timer or cuda_event_timer
        self._interpreter = InterpreterLauncher(generated) if generated is not None else None
        self._arg_names = index.arg_names
        self._loaded: dict[tuple[str, str, int], Launchable] = {}
        self._choices: ChoiceCache = {}
        self._interp: dict[tuple[str, int], Launchable] = {}
        self._lock = threading.Lock()
        self._dummy: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
        self.on_tuned: Callable[[dict[str, Any]], None] | None = None
        #: interpreter launches: the PREFETCH constexpr, and a program count below
        #: the block count to run the grid-stride loop as a persistent launch would
        self.interpreter_prefetch = True
        self.interpreter_programs: int | None = None
        #: interpreter launches: a BLOCK below the default (several blocks on a small test size)
        self.interpreter_block_size: int | None = None

    # ------------------------------------------------------------ queries
    @property
    def trainable(self) -> bool:
        return self.index.trainable

    def targets(self) -> set[str]:
        return self.index.targets()

    def configs(self, kind: str, target: str) -> list[KernelConfig]:
        return self.index.configs(kind, target)

    def tuned_config_id(self, target: str, kind: str, bucket: int, aligned: bool) -> str | None:
        return tuned_config_id(self.manifest, target, kind, bucket, aligned)

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
    def scratch_width(self, n: int, device: torch.device) -> int:
        """Columns of a per-program scratch buffer for ``n`` elements per step (at most ``n``).

        A launch given ``width`` (see :meth:`launch`) runs at most
        ``width // BLOCK`` programs, each walking its blocks grid-stride, so a
        scratch buffer of ``width`` columns holds every program's block at once.
        On a GPU: enough programs to fill every multiprocessor
        (``SCRATCH_COLUMNS_PER_SM``, 2048 threads of 8 elements), a fraction of
        a large layer's ``N``.
        """
        if device.type == "cuda":
            index = device.index if device.index is not None else _cuda.device_index(device)
            return min(n, _cuda.sm_count(index) * SCRATCH_COLUMNS_PER_SM)
        if self.interpreter_programs:
            return min(n, self.interpreter_programs * self._interpreter_block(n))
        return n

    def launch(
        self, kind: str, values: dict[str, Any], n: int, device: torch.device, *, width: int | None = None
    ) -> None:
        """Launch ``kind`` with arguments by parameter name (T and N included).

        ``width``: run at most ``max(1, width // BLOCK)`` programs (scratch
        buffers of ``width`` columns, :meth:`scratch_width`).
        """
        if n == 0 or values["T"] == 0:
            return
        args = [values[name] for name in self._arg_names[kind]]
        if device.type == "cuda":
            self._launch_cuda(kind, args, n, device, width)
        elif device.type == "cpu":
            self._launch_interpreter(kind, args, n, width)
        else:
            raise ArtifactError(f"FlexSN kernels cannot run on {device.type} tensors")

    def _interpreter_block(self, n: int) -> int:
        return self.interpreter_block_size or interpreter_block(n)

    def _launch_interpreter(self, kind: str, args: list[Any], n: int, width: int | None = None) -> None:
        block = self._interpreter_block(n)
        prefetch = self.interpreter_prefetch
        fn = self._interp.get((kind, block, prefetch))
        if fn is None:
            if self._interpreter is None:
                raise ArtifactError(
                    "CPU tensors need the interpreter (TRITON_INTERPRET=1) and locally generated source"
                )
            entry = {"kind": kind, "config": {"block": block, "prefetch": prefetch}}
            fn = self._interpreter.load(entry, b"", self.params[kind], -1)
            self._interp[(kind, block, prefetch)] = fn
        grid = _capped((n + block - 1) // block, self.interpreter_programs or 0, block, width)
        fn.launch(grid, 0, args)

    def _launch_cuda(self, kind: str, args: list[Any], n: int, device: torch.device, width: int | None) -> None:
        ptr_args = [a.data_ptr() if isinstance(a, torch.Tensor) else a for a in args]
        aligned = n % 16 == 0 and all(p % 16 == 0 for p, a in zip(ptr_args, args) if isinstance(a, torch.Tensor))
        index = device.index if device.index is not None else _cuda.device_index(device)
        choice = self._choices.get((kind, index, size_bucket(n), aligned))
        if choice is None:
            choice = self._choose(kind, index, n, aligned, ptr_args, device, width)
        launch, block, cap = choice
        launch(_capped((n + block - 1) // block, cap, block, width), _cuda.stream(device), ptr_args)

    def _choose(
        self, kind: str, index: int, n: int, aligned: bool, ptr_args: list[Any], device: torch.device,
        width: int | None = None,
    ) -> tuple[Any, int, int]:
        """The binary for (kind, device, size bucket, alignment): tuned, autotuned now, or the default.

        Cached, so later calls in the bucket cost one dict lookup.
        """
        target = _cuda.target(index)
        bucket = size_bucket(n)
        candidates = usable_configs(self.index.configs(kind, target), aligned)
        if not candidates:
            raise ArtifactError(
                f"the artifact has no {kind} binary for {target}; ask the service to build "
                f"this arch (FLEXSN_SERVICE_TARGETS) or build locally"
            )
        # A tuned choice that does not fit (e.g. an aligned binary as the unaligned choice, which
        # would read out of bounds) is ignored with a warning by the manifest module: None here.
        config_id = self.tuned_config_id(target, kind, bucket, aligned)
        if config_id is None:
            if settings.autotune_enabled() and len(candidates) > 1 and not _cuda.capturing():
                config_id = self._autotune(kind, target, bucket, aligned, candidates, index, n, ptr_args, device, width)
            else:
                config_id = default_config_id(candidates, aligned)
        binary = self.index.binary(kind, target, config_id)
        config = binary.config
        cap = config.programs_per_sm * _cuda.sm_count(index) if config.programs_per_sm > 0 else 0
        choice = (self._load(kind, target, binary, index).launch, config.block, cap)
        self._choices[(kind, index, bucket, aligned)] = choice
        return choice

    def _autotune(
        self,
        kind: str,
        target: str,
        bucket: int,
        aligned: bool,
        candidates: list[KernelConfig],
        index: int,
        n: int,
        args: list[Any],
        device: torch.device,
        width: int | None = None,
    ) -> str:
        """Time each candidate on this call's arguments; record and return the fastest."""
        stream = _cuda.stream(device)

        def make_run(config: KernelConfig) -> Callable[[], None]:
            fn = self._load(kind, target, self.index.binary(kind, target, config.id), index)
            grid = _capped(config.grid(n, _cuda.sm_count(index) if config.programs_per_sm > 0 else 0), 0,
                           config.block, width)
            return lambda: fn.launch(grid, stream, args)

        best, timings = autotune(candidates, make_run, self._timer, device, what=f"{kind} ({target})")
        record_choice(self.manifest, target, kind, bucket, aligned, best)
        bump("autotunes")
        if self.on_tuned is not None:
            self.on_tuned(
                {"target": target, "kind": kind, "bucket": bucket, "variant": variant_name(aligned),
                 "config_id": best, "timings_ms": report_timings(timings)}
            )
        return best

    def _load(self, kind: str, target: str, binary: Binary, device: int) -> Launchable:
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
            cubin = self._fetch(binary.sha256)
            launcher = self._launcher or gpu_launcher()
            fn = launcher.load(binary.entry, cubin, self.params[kind], device)
            self._loaded[key] = fn
            return fn


def _capped(blocks: int, cap: int, block: int, width: int | None) -> int:
    """Programs to launch: every block, at most ``cap`` (0: no cap), at most ``width // block`` when given."""
    grid = min(blocks, cap) if cap else blocks
    if width is not None:
        grid = min(grid, max(1, width // block))
    return grid
