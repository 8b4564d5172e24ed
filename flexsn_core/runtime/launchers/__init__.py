"""Ways to run a kernel, behind one interface (:class:`Launcher`).

| launcher | when | module |
| --- | --- | --- |
| ``driver`` | CUDA tensors (default): ctypes ``cuLaunchKernel``, nothing to build | :mod:`.cuda_driver` |
| ``triton`` | CUDA tensors with ``FLEXSN_LAUNCHER=triton``: Triton's ``CompiledKernel`` | :mod:`.triton` |
| ``interpreter`` | CPU tensors with ``TRITON_INTERPRET=1``: generated source in Triton's interpreter | :mod:`.interpreter` |
"""

from __future__ import annotations

from ... import settings
from .base import Launchable, Launcher

__all__ = ["Launchable", "Launcher", "gpu_launcher"]

_triton: Launcher | None = None


def gpu_launcher() -> Launcher:
    """The process-wide launcher ``FLEXSN_LAUNCHER`` selects (read when a binary is loaded)."""
    global _triton
    if settings.launcher_name() == "triton":
        if _triton is None:
            from .triton import TritonLauncher

            _triton = TritonLauncher()
        return _triton
    from .cuda_driver import driver

    return driver()
