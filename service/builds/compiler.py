"""The compile step: Triton kernels from validated IR, outside the jail. Runs no user code.

    python -m flexsn_service.builds.compiler [--warm] < job

The job on stdin is one line of JSON (``spec``, ``targets``, ``configs``,
``out_dir``) followed by the IR the jail printed, as bytes. This process
validates the IR (``flexsn_core.ir.generate_from_ir``: op whitelist, typed
constants, sizes), generates the Triton module from it and ``triton.compile``s
every (kind, config, target); it writes the blobs and ``manifest.json`` into
``out_dir`` (a folder of the service's, never the store) and reports JSON
events on stdout like the jailed worker. The server re-hashes every blob and
checks the manifest is for the requested spec before storing anything.

With ``--warm`` it first compiles a small kernel of our own, so Triton's
compiler is initialized before the job arrives (the service keeps a spare).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any, TextIO

_WARMUP_SOURCE = "import torch\n\ndef warmup(x, v):\n    h = 0.5 * v + x\n    return torch.sigmoid(h), h\n"


def _emit(channel: TextIO, event: dict[str, Any]) -> None:
    channel.write(json.dumps(event) + "\n")
    channel.flush()


def _warm_up() -> None:
    from flexsn_core.artifacts import generate
    from flexsn_core.compile import KernelConfig, compile_kernel
    from flexsn_core.spec import KernelSpec

    spec = KernelSpec(source=_WARMUP_SOURCE, entry="warmup", num_inputs=1, num_states=1, num_outputs=1)
    compile_kernel(generate(spec), "inference", KernelConfig(128, 1, 1, False), "cuda:80")


def main() -> int:
    events = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    from flexsn_core.artifacts import build_artifacts
    from flexsn_core.compile import KernelConfig
    from flexsn_core.errors import CompileError, FlexSNError
    from flexsn_core.ir import generate_from_ir
    from flexsn_core.spec import KernelSpec

    if "--warm" in sys.argv:
        try:
            _warm_up()
        except Exception:  # noqa: BLE001 - a cold compiler still works
            traceback.print_exc()
    _emit(events, {"event": "progress", "stage": "ready"})
    header = sys.stdin.buffer.readline()
    ir = sys.stdin.buffer.read()
    try:
        job = json.loads(header)
        spec = KernelSpec.from_dict(job["spec"])
        configs = [KernelConfig.from_dict(c) for c in job["configs"]] if job.get("configs") else None
        _emit(events, {"event": "progress", "stage": "generating", "done": 0, "total": 0})
        generated = generate_from_ir(spec, ir)

        def progress(stage: str, done: int, total: int) -> None:
            _emit(events, {"event": "progress", "stage": stage, "done": done, "total": total})

        artifact = build_artifacts(spec, targets=job["targets"], configs=configs, progress=progress,
                                   generated=generated)
        out = Path(job["out_dir"])
        for sha, data in artifact.blobs.items():
            (out / sha).write_bytes(data)
        (out / "manifest.json").write_text(json.dumps(artifact.manifest))
        _emit(events, {"event": "done"})
        return 0
    except CompileError as exc:
        traceback.print_exc()
        _emit(events, {"event": "error", "type": type(exc).__name__, "message": str(exc), "user_error": False})
    except FlexSNError as exc:  # IRError and the core errors the IR check raises: the build's input is bad
        _emit(events, {"event": "error", "type": type(exc).__name__, "message": str(exc), "user_error": True})
    except Exception as exc:  # noqa: BLE001 - reported to the server, which marks the build failed
        traceback.print_exc()
        _emit(events, {"event": "error", "type": type(exc).__name__, "message": str(exc), "user_error": False})
    return 1


if __name__ == "__main__":
    status = main()
    sys.stderr.flush()
    # The result is out; skip the interpreter's teardown (torch's takes ~2 s, on the build's clock).
    os._exit(status)
