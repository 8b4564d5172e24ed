"""What a finished build worker's result means: its output, or the BuildFailure that says why not.

The rules of trust live here: whatever happens in the jail counts as the core's
doing, except an error the worker reported before it was ready (no user code had
run yet); our own compile and tuner processes may say a failure is internal.
"""

from __future__ import annotations

from .process import Worker, WorkerResult
from .records import BuildFailure

__all__ = ["worker_outcome"]

def worker_outcome(
    result: WorkerResult, worker: Worker, what: str, *, jailed: bool, max_ir_bytes: int, memory_bytes: int
) -> WorkerResult:
    """The result if the worker succeeded; else the BuildFailure that says why.

    Whatever happens in the jail counts as the core's doing (a 422, remembered): the jail's
    word that a failure was "internal" is not taken.
    """
    if worker.too_large:
        raise BuildFailure(
            f"{what} wrote more than {max_ir_bytes >> 20} MiB of output (IR too large) and was stopped",
            "OutputTooLarge", True,
        )
    if worker.setup_error is not None:  # failed before it read the job: not the core's doing
        raise BuildFailure(
            f"{what} could not start (the service's build environment, not the core): "
            f"{worker.setup_error.get('message', 'no message')}",
            "BuildEnvironmentError", False, remember=False,
        )
    event = result.event or {}
    if event.get("event") == "error":
        user = True if jailed else bool(event.get("user_error", True))
        op, line = event.get("op"), event.get("line")
        raise BuildFailure(
            str(event.get("message", "build failed")), str(event.get("type", "Error")), user,
            op=op if isinstance(op, str) else None,
            line=line if isinstance(line, int) and not isinstance(line, bool) else None,
        )
    if result.returncode == 0 and (event.get("event") == "done" or result.ir is not None):
        return result
    code = result.returncode
    if result.oom:
        reason = f"it went over the build's memory limit ({memory_bytes >> 20} MB above the worker's baseline)"
    elif code is not None and code < 0:
        reason = f"killed by signal {-code} (over its memory or CPU limit?)"
    elif code is not None and code > 128:
        reason = f"killed by signal {code - 128} (over its memory or CPU limit?)"
    else:
        reason = f"exit status {code}"
    raise BuildFailure(f"{what} stopped without a result: {reason}", "WorkerDied", True)
