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


def apply_limits(
    *,
    memory_bytes: int | None,
    cpu_seconds: float | None,
    max_processes: int | None = None,
    max_file_bytes: int | None = None,
) -> None:
    """Limit this process (call in a worker before running user code).

    Every limit is set with hard == soft, so code running afterwards cannot
    raise it again. The address-space limit counts from the process's current
    size, so the budget is what the build itself may add on top of torch; the
    CPU limit counts from the CPU time used so far. ``max_processes``
    (RLIMIT_NPROC) counts the processes and threads of this uid in this user
    namespace -- in the jail, the build's own.
    """
    limits: dict[int, int] = {resource.RLIMIT_CORE: 0}
    if memory_bytes is not None:
        limits[resource.RLIMIT_AS] = _address_space_bytes() + memory_bytes
    if cpu_seconds is not None:
        used = resource.getrusage(resource.RUSAGE_SELF)
        limits[resource.RLIMIT_CPU] = int(math.ceil(used.ru_utime + used.ru_stime + cpu_seconds))
    if max_processes is not None:
        limits[resource.RLIMIT_NPROC] = max_processes
    if max_file_bytes is not None:
        limits[resource.RLIMIT_FSIZE] = max_file_bytes
    for which, value in limits.items():
        _, hard = resource.getrlimit(which)
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(which, (value, value))


def _address_space_bytes() -> int:
    with open("/proc/self/statm") as fh:  # noqa: PTH123 - our own process, not user input
        pages = int(fh.read().split()[0])
    return pages * resource.getpagesize()
