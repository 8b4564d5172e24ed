"""A build worker: one build in a fresh process, under limits.

    python -m flexsn_service.builds.worker [--warm] < job.json

With ``--warm`` the worker first pays the one-time costs of a build (imports,
Triton's compiler initialization) and then waits for its job: the service
keeps such spares ready, so a build does not wait for them. A worker runs
exactly one job, so no build sees state another build left behind.

The job (JSON on stdin) names the spec, targets, configs, the output folder
and the limits. The worker imports torch and Triton, re-checks the source,
limits its own address space and CPU time, then traces and compiles on fake
tensors. It writes the blobs and ``manifest.json`` into the output folder
(never into the store: the server verifies and stores them) and reports JSON
events, one per line, on the stdout it was started with; anything the core
prints goes to stderr, which the server keeps as the build's log.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any, TextIO


def _emit(channel: TextIO, event: dict[str, Any]) -> None:
    channel.write(json.dumps(event) + "\n")
    channel.flush()


_WARMUP_SOURCE = "import torch\n\ndef warmup(x, v):\n    h = 0.5 * v + x\n    return torch.sigmoid(h), h\n"


def _warm_up() -> None:
    """Pay the one-time costs before a job arrives: the lazy imports of tracing
    (AOTAutograd, make_fx) and Triton's compiler initialization."""
    from flexsn_core.artifacts import generate
    from flexsn_core.compile import KernelConfig, compile_kernel
    from flexsn_core.spec import KernelSpec

    spec = KernelSpec(source=_WARMUP_SOURCE, entry="warmup", num_inputs=1, num_states=1, num_outputs=1)
    compile_kernel(generate(spec), "inference", KernelConfig(128, 1, 1, False), "cuda:80")


def main() -> int:
    events = os.fdopen(os.dup(1), "w")
    sys.stdout = sys.stderr  # user code printing must not corrupt the event stream

    import torch  # noqa: F401  - imported before the limits apply

    from flexsn_core.artifacts import build_artifacts
    from flexsn_core.compile import KernelConfig
    from flexsn_core.errors import CoreError, FlexSNError
    from flexsn_core.spec import KernelSpec

    from .sandbox import SourceRejected, apply_limits, check_source

    if "--warm" in sys.argv:
        # A spare worker: warm up now, then wait for its one job.
        try:
            _warm_up()
        except Exception:  # noqa: BLE001 - a cold worker still works
            traceback.print_exc()
    job = json.loads(sys.stdin.read())

    try:
        spec = KernelSpec.from_dict(job["spec"])
        check_source(spec, max_bytes=job.get("max_source_bytes", 200_000))
        apply_limits(memory_bytes=job.get("memory_bytes"), cpu_seconds=job.get("cpu_seconds"))
        configs = [KernelConfig.from_dict(c) for c in job["configs"]] if job.get("configs") else None

        def progress(stage: str, done: int, total: int) -> None:
            _emit(events, {"event": "progress", "stage": stage, "done": done, "total": total})

        _emit(events, {"event": "progress", "stage": "tracing", "done": 0, "total": 0})
        artifact = build_artifacts(spec, targets=job["targets"], configs=configs, progress=progress)
        out = Path(job["out_dir"])
        for sha, data in artifact.blobs.items():
            (out / sha).write_bytes(data)
        (out / "manifest.json").write_text(json.dumps(artifact.manifest))
        _emit(events, {"event": "done"})
        return 0
    except (SourceRejected, CoreError) as exc:
        _emit(events, {"event": "error", "type": type(exc).__name__, "message": str(exc), "user_error": True})
    except MemoryError:
        limit_mb = (job.get("memory_bytes") or 0) // (1 << 20)
        _emit(events, {
            "event": "error", "type": "MemoryError", "user_error": True,
            "message": f"the build ran out of memory (limit {limit_mb} MB above the worker's baseline)",
        })
    except FlexSNError as exc:
        _emit(events, {"event": "error", "type": type(exc).__name__, "message": str(exc), "user_error": False})
    except Exception as exc:  # noqa: BLE001 - reported to the server, which marks the build failed
        traceback.print_exc()
        _emit(events, {"event": "error", "type": type(exc).__name__, "message": str(exc), "user_error": False})
    return 1


if __name__ == "__main__":
    sys.exit(main())
