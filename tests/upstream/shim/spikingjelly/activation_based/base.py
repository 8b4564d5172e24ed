"""spikingjelly.activation_based.base: only ``triton`` (None when Triton is not installed)."""

try:
    import triton
except ImportError:  # pragma: no cover
    triton = None

from flexsn_core.memory import MemoryModule  # noqa: E402,F401
