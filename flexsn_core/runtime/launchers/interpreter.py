"""Run generated kernels on CPU tensors in Triton's interpreter (``TRITON_INTERPRET=1``).

There are no binaries: the interpreter runs the generated Python source, which
the caller regenerated locally and checked against the manifest's sha256 (never
source received from elsewhere). ``load`` takes a synthetic entry naming the
kind and the block size; ``cubin`` is unused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ...codegen.kernels import GeneratedKernels
from ...compile import load_generated_module
from .base import Launcher

__all__ = ["InterpreterLauncher", "InterpretedKernel", "interpreter_block"]


def interpreter_block(n: int) -> int:
    """Block size for ``n`` elements: the next power of two, between 16 and 1024."""
    return min(1024, max(16, 1 << (n - 1).bit_length()))


class InterpretedKernel:
    def __init__(self, fn: Any, block: int, prefetch: bool = False) -> None:
        self.fn = fn
        self.block = block
        self.prefetch = prefetch

    def launch(self, grid: int, stream: int, args: Sequence[Any]) -> None:
        self.fn[(grid,)](*args, BLOCK=self.block, INTERPRET=True, PREFETCH=self.prefetch)


class InterpreterLauncher(Launcher):
    name = "interpreter"

    def __init__(self, generated: GeneratedKernels) -> None:
        self.generated = generated
        self._functions: dict[str, Any] = {}

    def load(
        self, entry: Mapping[str, Any], cubin: bytes, params: Sequence[tuple[str, str]], device: int
    ) -> InterpretedKernel:
        kind = str(entry["kind"])
        fn = self._functions.get(kind)
        if fn is None:
            from triton.runtime.interpreter import InterpretedFunction

            module = load_generated_module(self.generated)
            fn = InterpretedFunction(getattr(module, self.generated.kernels[kind].name))
            self._functions[kind] = fn
        config = entry["config"]
        return InterpretedKernel(fn, int(config["block"]), bool(config.get("prefetch", False)))
