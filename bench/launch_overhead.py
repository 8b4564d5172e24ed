"""Host-side cost of one kernel launch: KernelSet's choice lookup + launch, no GPU needed.

    python bench/launch_overhead.py [--calls 50000] [--repeats 7]

Two measurements of ``KernelSet.launch`` on an sm_90 stand-in (LIF,
``inference_final``, 2^20 elements, a tuned choice already cached):

* ``fake``: a launcher whose launch does nothing: the runtime's own Python
  work per call (argument list, pointers, alignment, bucket, cached choice).
* ``driver``: the real ctypes launcher (``CudaDriverLauncher``) on a no-op C
  stand-in for libcuda compiled on the fly (needs ``cc``): adds the ctypes
  calls, including the per-launch context check of issue #11.

And the call-time validation every eager call runs before it launches
(``flexsn_core.contract.check_scan_call``, issue #11), for LIF (one input,
one state) and for a two-input core with a per-neuron static input.

Prints one JSON line per measurement: microseconds per call (median and best
of the repeats).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

STUB = r"""
/* A stand-in libcuda: every call succeeds and does nothing (one context per thread). */
static __thread void *current = 0;
static char contexts[8];
int cuGetErrorString(int e, const char **s) { *s = "stub"; return 0; }
int cuCtxGetCurrent(void **c) { *c = current; return 0; }
int cuCtxSetCurrent(void *c) { current = c; return 0; }
int cuCtxPushCurrent(void *c) { current = c; return 0; }
int cuCtxPopCurrent(void **c) { if (c) *c = current; current = 0; return 0; }
int cuDevicePrimaryCtxRetain(void **c, int dev) { *c = &contexts[dev & 7]; return 0; }
int cuModuleLoadData(void **m, const void *image) { *m = (void *)1; return 0; }
int cuModuleGetFunction(void **f, void *m, const char *name) { *f = (void *)2; return 0; }
int cuFuncGetAttribute(int *v, int a, void *f) { *v = 0; return 0; }
int cuFuncSetAttribute(void *f, int a, int v) { return 0; }
int cuDeviceGetAttribute(int *v, int a, int d) { *v = 0; return 0; }
int cuLaunchKernel(void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                   unsigned shared, void *stream, void **params, void **extra) { return 0; }
"""


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=7)
    opts = parser.parse_args()

    import neurons
    import torch

    import flexsn_core.runtime.cuda as runtime_cuda
    from flexsn_core import KernelSpec
    from flexsn_core.artifacts import build_artifacts, generate
    from flexsn_core.compile import DEFAULT_CONFIGS
    from flexsn_core.runtime import KernelSet
    from flexsn_core.runtime.launchers.cuda_driver import CudaDriverLauncher, open_libcuda

    spec = KernelSpec.from_core(neurons.lif_hard, 1, 1, 1)
    manifest = build_artifacts(spec, targets=(), generated=generate(spec)).manifest
    for kind in manifest["kernels"]:
        for c in DEFAULT_CONFIGS:
            manifest["binaries"].append({
                "kind": kind, "target": "cuda:90", "config": c.to_dict(), "config_id": c.id, "sha256": "0" * 64,
                "launch": {"name": "k", "num_warps": c.num_warps, "shared": 0},
            })
    runtime_cuda.target = lambda index: "cuda:90"
    runtime_cuda.stream = lambda device: 0
    runtime_cuda.capturing = lambda: False
    os.environ["FLEXSN_AUTOTUNE"] = "0"

    class NoLaunch:
        def launch(self, grid: int, stream: int, args: list) -> None:
            pass

    class FakeLauncher:
        name = "fake"

        def load(self, entry, cubin, params, device):  # noqa: ANN001, ANN201
            return NoLaunch()

    launchers = {"fake": FakeLauncher()}
    with tempfile.TemporaryDirectory() as tmp:
        stub = Path(tmp) / "libcuda-stub.so"
        (Path(tmp) / "stub.c").write_text(STUB)
        built = subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", str(stub), str(Path(tmp) / "stub.c")],
                               capture_output=True, text=True)
        if built.returncode == 0:
            launchers["driver"] = CudaDriverLauncher(open_libcuda(str(stub)))
        else:
            print(f"no C compiler: skipping the driver measurement ({built.stderr.strip()[:200]})", file=sys.stderr)

        n = 1 << 20
        x, out, fin = torch.zeros(8, n), torch.zeros(8, n), torch.zeros(n)
        device = torch.device("cuda", 0)
        for name, launcher in launchers.items():
            ks = KernelSet(manifest, fetch=lambda sha: b"\0", launcher=launcher)  # type: ignore[arg-type]
            values = {"in0": x, "init0": ks.dummy(torch.device("cpu")), "init0_flag": 0, "out0": out, "fin0": fin,
                      "T": 8, "N": n}
            ks.launch("inference_final", values, n, device)  # choose and load once
            per_call = []
            for _ in range(opts.repeats):
                start = time.process_time()
                for _ in range(opts.calls):
                    ks.launch("inference_final", values, n, device)
                per_call.append((time.process_time() - start) / opts.calls * 1e6)
            print(json.dumps({"launcher": name, "us_per_call_median": round(statistics.median(per_call), 3),
                              "us_per_call_best": round(min(per_call), 3), "calls": opts.calls,
                              "repeats": opts.repeats}))

    from flexsn_core.contract import check_scan_call

    static = torch.zeros(n)
    for name, args in (("lif", ([x], [fin], [], 1, 1, 0)), ("two_inputs_static", ([x, x], [fin], [static], 2, 1, 1))):
        per_call = []
        for _ in range(opts.repeats):
            start = time.process_time()
            for _ in range(opts.calls):
                check_scan_call(*args)
            per_call.append((time.process_time() - start) / opts.calls * 1e6)
        print(json.dumps({"check": f"check_scan_call {name}", "us_per_call_median": round(statistics.median(per_call), 3),
                          "us_per_call_best": round(min(per_call), 3), "calls": opts.calls,
                          "repeats": opts.repeats}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
