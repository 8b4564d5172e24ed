"""Process limits for a build worker, and (re-exported) the source check.

The source check lives in :mod:`.source_check` (a friendly early 422, not a
security boundary: builds run in an OS jail). ``check_source`` and
``SourceRejected`` stay importable from here for the build worker.
"""

from __future__ import annotations

import math
import resource

from .source_check import SourceRejected, check_source

__all__ = ["SourceRejected", "check_source", "apply_limits"]


def apply_limits(*, memory_bytes: int | None, cpu_seconds: float | None) -> None:
    """Limit this process (call in a worker before running user code).

    The address-space limit counts from the process's current size, so the
    budget is what the build itself may add on top of torch and Triton.
    """
    if memory_bytes is not None:
        current = _address_space_bytes()
        limit = current + memory_bytes
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if cpu_seconds is not None:
        seconds = int(math.ceil(cpu_seconds))
        resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds + 5))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _address_space_bytes() -> int:
    with open("/proc/self/statm") as fh:  # noqa: PTH123 - our own process, not user input
        pages = int(fh.read().split()[0])
    return pages * resource.getpagesize()
