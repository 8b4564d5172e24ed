"""The jailed build worker: load and trace one core, print the IR. Runs only inside the jail.

    (in bwrap) python -P -s -m flexsn_service.builds.worker [--warm] < job.json

With ``--warm`` the worker first pays the one-time costs (importing torch,
the lazy imports of make_fx and AOTAutograd, by tracing a small core of our
own) and then waits for its job: the service keeps such spares ready. A
worker runs exactly one job, so no build sees state another build left.

The job (JSON on stdin): ``spec``, ``check_source`` (run the source check
again here; off only in tests of the jail itself), ``max_source_bytes`` and
the limits the worker narrows to before it runs user code: ``memory_bytes``
(address space on top of what it has now), ``cpu_seconds``, ``max_processes``,
``max_file_bytes`` -- all with hard == soft, so the core cannot raise them.

Output, on the stdout the worker was started with (the core's own prints and
anything it writes to fd 1 go to stderr, the build's log): JSON events, one
per line -- ``{"event": "progress", ...}``, ``{"event": "error", "type",
"message", "op"?, "line"?}`` -- and on success one line ``IR <json>``: the
traced graphs as ``flexsn_core.ir`` data. Nothing else leaves the jail: its
``/tmp`` dies with it, and the server never reads a file, a path, a pickle or
code from it.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Any, TextIO


def _emit(channel: TextIO, event: dict[str, Any]) -> None:
    channel.write(json.dumps(event) + "\n")
    channel.flush()


_WARMUP_SOURCE = "import torch\n\ndef warmup(x, v):\n    h = 0.5 * v + x\n    return torch.sigmoid(h), h\n"


def _warm_up() -> None:
    """Pay the one-time costs of tracing before a job arrives (our own core, not user code)."""
    from flexsn_core.ir import trace_to_ir
    from flexsn_core.spec import KernelSpec

    trace_to_ir(KernelSpec(source=_WARMUP_SOURCE, entry="warmup", num_inputs=1, num_states=1, num_outputs=1))


def _error(exc: BaseException, **extra: Any) -> dict[str, Any]:
    event = {"event": "error", "type": type(exc).__name__, "message": str(exc), "user_error": True}
    for name in ("op", "line"):
        value = getattr(exc, name, None)
        if value is not None:
            event[name] = value
    return {**event, **extra}


def main() -> int:
    events = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # fd 1 is the log from now on: what the core prints cannot mix into the events
    sys.stdout = sys.stderr

    import torch  # noqa: F401  - imported before the limits apply

    from flexsn_core.errors import CoreError, FlexSNError
    from flexsn_core.ir import dumps_ir, trace_to_ir
    from flexsn_core.spec import KernelSpec

    from .sandbox import SourceRejected, apply_limits, check_source

    if "--warm" in sys.argv:
        try:
            _warm_up()
        except Exception as exc:  # noqa: BLE001
            # Our own core failed, before any user code ran: the build environment is broken, and a
            # half-imported torch would fail the job with a misleading error blamed on the core.
            traceback.print_exc()
            _emit(events, {"event": "error", "type": "BuildEnvironmentError", "user_error": False,
                           "message": f"the build worker could not trace its own warm-up core: "
                                      f"{type(exc).__name__}: {exc}"})
            return 1
    _emit(events, {"event": "progress", "stage": "ready"})  # the build's clock starts now
    job = json.loads(sys.stdin.read())
    try:
        spec = KernelSpec.from_dict(job["spec"])
        if job.get("check_source", True):
            check_source(spec, max_bytes=job.get("max_source_bytes", 200_000))
        apply_limits(
            memory_bytes=job.get("memory_bytes"), cpu_seconds=job.get("cpu_seconds"),
            max_processes=job.get("max_processes"), max_file_bytes=job.get("max_file_bytes"),
        )
        _emit(events, {"event": "progress", "stage": "tracing", "done": 0, "total": 0})
        ir = trace_to_ir(spec)
        events.write("IR " + dumps_ir(ir) + "\n")
        events.flush()
        return 0
    except (SourceRejected, CoreError) as exc:
        _emit(events, _error(exc))
    except MemoryError:
        limit_mb = (job.get("memory_bytes") or 0) // (1 << 20)
        _emit(events, {
            "event": "error", "type": "MemoryError", "user_error": True,
            "message": f"the build ran out of memory (limit {limit_mb} MB above the worker's baseline)",
        })
    except FlexSNError as exc:
        _emit(events, _error(exc, user_error=False))
    except Exception as exc:  # noqa: BLE001 - reported to the server, which marks the build failed
        traceback.print_exc()
        _emit(events, _error(exc, user_error=False))
    return 1


if __name__ == "__main__":
    status = main()
    sys.stderr.flush()
    # The result is out; skip the interpreter's teardown (torch's takes ~2 s, on the build's clock).
    os._exit(status)
