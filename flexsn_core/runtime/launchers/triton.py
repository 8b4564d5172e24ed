"""Load cubins through Triton's ``CompiledKernel`` (``FLEXSN_LAUNCHER=triton``).

Triton builds a C launcher stub per kernel signature on first use (about a
second and a C compiler; cached in ``TRITON_CACHE_DIR`` after). Kept as the
alternative to the ctypes driver for kernels that need launch features the
driver path does not implement (scratch memory, cooperative grids).

The kernel is rebuilt from the manifest's ``triton_metadata`` and the cubin,
with a small ``src`` object carrying only ``signature``, ``constants`` and
``fn.arg_names``: no ``triton.compile`` call, so no Triton cache lookup.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from .base import Launcher

__all__ = ["TritonLauncher", "TritonFunction"]


class TritonFunction:
    """A ``CompiledKernel`` bound to its device; launches pass the constexprs Triton expects."""

    def __init__(self, kernel: Any, constexprs: Sequence[Any], device: int) -> None:
        self.kernel = kernel
        self.constexprs = tuple(constexprs)  # the values of the kernel's trailing constexpr parameters
        self.device = device

    def launch(self, grid: int, stream: int, args: Sequence[Any]) -> None:
        import torch

        # Triton's launcher uses the current device's context: make it the tensors' device.
        with torch.cuda.device(self.device):
            self.kernel[(grid, 1, 1)](*args, *self.constexprs, stream=stream)


class TritonLauncher(Launcher):
    name = "triton"

    def load(
        self, entry: Mapping[str, Any], cubin: bytes, params: Sequence[tuple[str, str]], device: int
    ) -> TritonFunction:
        from triton.compiler.compiler import CompiledKernel

        meta = dict(entry["triton_metadata"])
        meta.setdefault("extern_libs", [])
        folder = Path(tempfile.mkdtemp(prefix="flexsn-triton-"))
        name = entry["launch"]["name"]
        (folder / f"{name}.json").write_text(json.dumps(meta))
        (folder / f"{name}.cubin").write_bytes(cubin)
        arg_names = [n for n, _ in params]
        signature = {n: t for n, t in params}
        # Every constexpr the kernel declares, in its order (the code generator puts them last). A
        # fixed (BLOCK, INTERPRET) pair launched kernels that also declare PREFETCH with one argument
        # short ("function takes exactly 27 arguments (26 given)" on the H200).
        values = {"BLOCK": int(entry["config"]["block"]), "INTERPRET": False,
                  "PREFETCH": bool(entry["config"].get("prefetch", False))}
        names = [n for n, t in params if t == "constexpr"]
        unknown = [n for n in names if n not in values]
        if unknown:
            raise ValueError(f"kernel {entry['launch']['name']} declares constexprs this launcher does not know: {unknown}")
        constants = {(arg_names.index(n),): values[n] for n in names}
        src = SimpleNamespace(signature=signature, constants=constants, fn=SimpleNamespace(arg_names=arg_names))
        group = {f"{name}.json": str(folder / f"{name}.json"), f"{name}.cubin": str(folder / f"{name}.cubin")}
        kernel = CompiledKernel(src, group, meta.get("hash", ""))
        return TritonFunction(kernel, [values[n] for n in names], device)
