"""flexsn_core: compile a spiking-neuron core into portable multi-step Triton kernels.

Public API (everything else is internal and may change)::

    from flexsn_core import FlexSN, FlexSNKernel, KernelSpec, flex_sn_scan, counters
    from flexsn_core import surrogate   # surrogate spike functions: surrogate.Sigmoid(alpha=4.0), ...
"""

from __future__ import annotations

from .artifacts import DEFAULT_TARGETS, Artifact, build_artifacts
from .codegen.kernels import KINDS, FlexSNInfo
from .compile import DEFAULT_CONFIGS, KernelConfig
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
from . import functional, surrogate
from .hop import flex_sn_scan
from .memory import MemoryModule
from .module import FlexSN, FlexSNKernel
from .runtime import KernelSet
from .spec import KernelSpec

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
