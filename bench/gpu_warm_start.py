"""GPU check: a fresh process warm-starts FlexSN from the cache service.

    python bench/gpu_warm_start.py

Starts the service on localhost (it builds and autotunes the LIF kernels for
this GPU), then runs a training step in fresh processes and times
``FlexSN(..., backend="remote-cache")`` construction to the first completed
training step (T=8, 2^20 neurons, fp32):

* ``new node``: empty FLEXSN_CACHE_DIR, TRITON_CACHE_DIR and HOME; the process
  has never launched a FlexSN kernel (manifest and binaries come from the
  service);
* ``seen node``: the same mirror again (a local hit).

Imports and CUDA context creation happen before the timer and are reported
separately. Prints one JSON line per process. ``FLEXSN_BENCH_PROFILE=1`` also
prints where construction spent its time (cProfile: top 40 by cumulative time, top 15 by own time,
from each child).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

T, N = 8, 1 << 20


def child(url: str) -> None:
    t_import = time.perf_counter()
    import torch

    import flexsn_client  # noqa: F401  - imported by a training script anyway
    import neurons
    from flexsn_core import FlexSN, counters

    imports_s = time.perf_counter() - t_import
    t_cuda = time.perf_counter()
    x = torch.randn(T, N, device="cuda") + 0.5
    torch.cuda.synchronize()
    cuda_s = time.perf_counter() - t_cuda
    xg = x.requires_grad_()

    profile = None
    if os.environ.get("FLEXSN_BENCH_PROFILE"):  # where construction spends its time
        import cProfile

        profile = cProfile.Profile()
        profile.enable()
    t0 = time.perf_counter()
    neuron = FlexSN(neurons.lif_hard, 1, 1, 1, example_inputs=(x[0], x[0]), backend="remote-cache", cache_url=url)
    constructed = time.perf_counter()
    if profile is not None:
        import pstats

        profile.disable()
        stats = pstats.Stats(profile, stream=sys.stderr).strip_dirs()
        stats.sort_stats("cumulative").print_stats(40)
        stats.sort_stats("tottime").print_stats(15)
    y = neuron(xg)
    y.sum().backward()
    torch.cuda.synchronize()
    t1 = time.perf_counter()
    print(json.dumps({
        "construct_to_first_step_s": round(t1 - t0, 4), "construct_s": round(constructed - t0, 4),
        "imports_s": round(imports_s, 3), "cuda_init_s": round(cuda_s, 3), "counters": counters(),
        "grad_finite": bool(torch.isfinite(xg.grad).all()),
    }), flush=True)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "child":
        child(sys.argv[2])
        return
    import neurons
    from live_server import live_server

    from flexsn_core import KernelSpec

    body = KernelSpec.from_core(neurons.lif_hard, 1, 1, 1).to_dict()
    with live_server(Path(tempfile.mkdtemp(prefix="flexsn-warm-service-")), use_gpu="1", configs="") as server:
        with server.client(timeout=900) as http:
            t0 = time.perf_counter()
            # wait=true is bounded at the service: a build that outlasts it answers 202, so poll the build
            answer = http.post("/v1/kernels", json=body)
            assert answer.status_code in (200, 202), (answer.status_code, answer.text[:500])
            if answer.status_code == 202:
                build = answer.json()["build_id"]
                while (status := http.get(f"/v1/builds/{build}").json())["state"] not in ("succeeded", "failed"):
                    time.sleep(0.5)
                assert status["state"] == "succeeded", status
            print(json.dumps({"service_build_and_tune_s": round(time.perf_counter() - t0, 2)}), flush=True)
        node = Path(tempfile.mkdtemp(prefix="flexsn-node-"))
        env = dict(
            os.environ,
            FLEXSN_CACHE_DIR=str(node / "flexsn"), TRITON_CACHE_DIR=str(node / "triton"), HOME=str(node / "home"),
        )
        for label in ("new node", "seen node"):
            out = subprocess.run([sys.executable, __file__, "child", server.url], env=env, capture_output=True, text=True)
            if out.returncode or os.environ.get("FLEXSN_BENCH_PROFILE"):
                print(out.stderr[-12000:])
            if out.returncode:
                raise SystemExit(1)
            print(json.dumps({"run": label, **json.loads(out.stdout.strip().splitlines()[-1])}), flush=True)
        with server.client() as http:
            print(json.dumps({"service_stats": http.get("/v1/stats").json()}), flush=True)


if __name__ == "__main__":
    main()
