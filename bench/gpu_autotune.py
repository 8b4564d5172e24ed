"""GPU check: autotuning runs once per (kind, size bucket); a second process benchmarks nothing.

    python bench/gpu_autotune.py

Runs the same workload in two fresh processes sharing one FLEXSN_CACHE_DIR:
inference and a training step of a LIF FlexSN at sizes in three buckets. The
first process builds the kernels for this GPU and benchmarks every config once
per (kind, bucket, variant) it meets, storing the winners in the local
artifact; repeating the workload benchmarks nothing. The second process loads
the tuned artifact: no traces, no compiles, no benchmarks.
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

SIZES = [(8, 1 << 16), (8, (1 << 20) + 7), (8, 1 << 22)]


def workload() -> dict:
    import torch
    from neurons import lif_hard

    from flexsn_core import FlexSN, counters

    t0 = time.perf_counter()
    neuron = FlexSN(lif_hard, 1, 1, 1, example_inputs=(torch.zeros(4, device="cuda"),) * 2)
    built_s = time.perf_counter() - t0
    rounds = []
    for _ in range(2):
        before = counters()["autotunes"]
        for T, n in SIZES:
            x = torch.randn(T, n, device="cuda") + 0.5
            with torch.no_grad():
                neuron.reset()
                neuron(x)
            neuron.reset()
            xg = x.requires_grad_()
            neuron(xg).sum().backward()
        torch.cuda.synchronize()
        rounds.append(counters()["autotunes"] - before)
    return {"construct_s": round(built_s, 3), "autotunes_per_round": rounds, "counters": counters()}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        print(json.dumps(workload()), flush=True)
        return
    cache = tempfile.mkdtemp(prefix="flexsn-autotune-")
    env = dict(os.environ, FLEXSN_CACHE_DIR=cache, PYTHONPATH=str(ROOT))
    for label in ("first process", "second process"):
        out = subprocess.run([sys.executable, __file__, "child"], env=env, capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"{label} failed:\n{out.stderr[-4000:]}")
        print(json.dumps({"run": label, **json.loads(out.stdout.strip().splitlines()[-1])}), flush=True)
    from flexsn_core.local import LocalStore

    store = LocalStore(Path(cache, "artifacts"))  # a stored manifest is a digest line + JSON: read it through the store
    tuning = store.get_manifest(next(store.iter_manifest_keys()))["tuning"]
    print(json.dumps({"stored_tuning": tuning}), flush=True)


if __name__ == "__main__":
    main()
