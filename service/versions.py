"""The versions a kernel key depends on, and the service's own: read once, cheaply.

Keys move with the codegen version and the Triton version (``KernelSpec.key``),
and binaries with Triton; a client whose versions differ computes other keys and
misses. ``GET /v1/version``, ``/healthz``, ``/v1/stats`` and the status page
report them so that an operator can tell why.

Read from package metadata (no import of torch or Triton just for this; the
service has imported torch anyway).
"""

from __future__ import annotations

import functools
import platform
from importlib import metadata

from flexsn_core._version import CODEGEN_VERSION
from flexsn_core.ir import IR_VERSION
from flexsn_core.spec import triton_version

__all__ = ["API_VERSION", "versions"]

#: The HTTP API's version (the ``/v1`` prefix).
API_VERSION = "1"


def _distribution_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


@functools.lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    """``package``, ``api``, ``codegen``, ``ir``, ``triton``, ``torch``, ``python`` (all strings)."""
    return {
        "package": _distribution_version("flexsn-cache"),
        "api": API_VERSION,
        "codegen": CODEGEN_VERSION,
        "ir": str(IR_VERSION),
        # the one KernelSpec.key hashes (the same function)
        "triton": triton_version(),
        "torch": _distribution_version("torch"),
        "python": platform.python_version(),
    }
