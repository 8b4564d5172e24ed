"""flexsn_core: compile a spiking-neuron core into portable multi-step Triton kernels.

Public API (everything else is internal and may change)::

    from flexsn_core import FlexSN, FlexSNKernel, KernelSpec, flex_sn_scan, counters
    from flexsn_core import surrogate   # surrogate spike functions: surrogate.Sigmoid(alpha=4.0), ...

Names that need torch are imported on first use (PEP 562), so ``import
flexsn_core.errors`` or a ``flexsn-cache --help`` that reads the codegen
version never pays for torch and Triton.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Light and eager: the error tree and the counters (the function ``counters`` must win over the
# submodule of the same name, so it is bound here, before anything imports that submodule).
from .counters import counters, reset_counters
from .errors import (
    ArtifactError,
    AuthError,
    BuildFailedError,
    CacheUnavailableError,
    CompileError,
    CoreCaptureError,
    CoreError,
    CoreReturnTypeError,
    CoreSignatureError,
    CoreSourceError,
    CoreTraceError,
    FlexSNError,
    IntegrityError,
    UnsupportedOpError,
)

if TYPE_CHECKING:
    from . import functional, surrogate
    from .artifacts import DEFAULT_TARGETS, Artifact, build_artifacts
    from .codegen.kernels import KINDS, FlexSNInfo
    from .compile import DEFAULT_CONFIGS, KernelConfig
    from .hop import flex_sn_scan
    from .memory import MemoryModule
    from .module import FlexSN, FlexSNKernel
    from .runtime import KernelSet
    from .spec import KernelSpec

#: public name -> the submodule that defines it (imported on first access)
_LAZY = {
    "FlexSN": ".module",
    "FlexSNKernel": ".module",
    "flex_sn_scan": ".hop",
    "MemoryModule": ".memory",
    "KernelSpec": ".spec",
    "KernelSet": ".runtime",
    "KernelConfig": ".compile",
    "DEFAULT_CONFIGS": ".compile",
    "FlexSNInfo": ".codegen.kernels",
    "KINDS": ".codegen.kernels",
    "Artifact": ".artifacts",
    "build_artifacts": ".artifacts",
    "DEFAULT_TARGETS": ".artifacts",
}

__all__ = [
    "FlexSN",
    "FlexSNKernel",
    "flex_sn_scan",
    "functional",
    "surrogate",
    "MemoryModule",
    "KernelSpec",
    "KernelSet",
    "KernelConfig",
    "FlexSNInfo",
    "Artifact",
    "build_artifacts",
    "counters",
    "reset_counters",
    "KINDS",
    "DEFAULT_TARGETS",
    "DEFAULT_CONFIGS",
    "FlexSNError",
    "CoreError",
    "CoreSourceError",
    "CoreCaptureError",
    "CoreSignatureError",
    "CoreReturnTypeError",
    "CoreTraceError",
    "UnsupportedOpError",
    "CompileError",
    "ArtifactError",
    "IntegrityError",
    "CacheUnavailableError",
    "AuthError",
    "BuildFailedError",
]


def __getattr__(name: str) -> Any:
    if name in ("functional", "surrogate"):
        return importlib.import_module(f".{name}", __name__)
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module 'flexsn_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(where, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
