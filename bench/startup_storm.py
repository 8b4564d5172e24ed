"""Start-up storm (issue #12): N fresh client processes at once, each warming a model of 8 distinct
cores from 2 replicas on one Redis store; every core must be built exactly once.

    python bench/startup_storm.py [--clients 16] [--cores 8]

Each client is a new Python process with an empty mirror; client i talks to
replica i % 2 and prefetches the 8 cores (tests/neurons.py cores, and LIF
variants with other constants), which requests every build before waiting on
any, then fetches and verifies every blob. Reports builds across both replicas
(``builds_started`` of /v1/stats: each replica runs one HTTP worker, so its
counters are whole), that every client got every kernel, and the time per
client (its prefetch; the process start, torch's import included, comes
before). Needs redis-server (``make test`` installs it). Writes JSON lines to
bench/results/ with the load average before the clients start and after.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from live_server import live_server  # noqa: E402
from redis_server import start_redis  # noqa: E402

CLIENT = """
import json, sys, time
sys.path.insert(0, {tests!r})
import neurons
from flexsn_core import KernelSpec
from flexsn_client.cache import KernelCacheClient

def specs(count):
    names = ["lif_hard", "lif_soft", "alif", "plif", "izhikevich", "hard_spike"]
    out = []
    for name in names[:count]:
        m = neurons.MODELS[name]
        out.append(KernelSpec.from_core(m.core, m.num_inputs, m.num_states, m.num_outputs, num_static=len(m.statics)))
    base = KernelSpec.from_core(neurons.lif_hard, 1, 1, 1).to_dict()
    i = 0
    while len(out) < count:  # LIF variants with other constants: their own keys
        i += 1
        out.append(KernelSpec.from_dict({{**base, "source": base["source"].replace("TAU = 2.0", f"TAU = {{2.0 + i / 8}}")}}))
    return out

started = time.perf_counter()
client = KernelCacheClient(url=sys.argv[1], local_dir=sys.argv[2])
manifests = client.prefetch(specs(int(sys.argv[3])), targets=["cuda:90"])
print(json.dumps({{"seconds": time.perf_counter() - started, "keys": sorted(m["key"] for m in manifests)}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--cores", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="flexsn-storm-") as tmp, start_redis() as redis_url:
        root = Path(tmp)
        settings = {"store": redis_url, "targets": "cuda:90"}
        with live_server(root / "a", **settings) as a, live_server(root / "b", **settings) as b:
            replicas = [a, b]
            code = CLIENT.format(tests=str(ROOT / "tests"))
            env = {**os.environ, "PYTHONPATH": str(ROOT), "TRITON_INTERPRET": "1"}
            load_before = os.getloadavg()[0]
            began = time.perf_counter()
            procs = [subprocess.Popen([sys.executable, "-c", code, replicas[i % 2].url, str(root / f"client{i}"),
                                       str(args.cores)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                      text=True) for i in range(args.clients)]
            results = []
            for proc in procs:
                out, err = proc.communicate(timeout=3600)
                if proc.returncode != 0:
                    raise SystemExit(f"a client failed ({proc.returncode}):\n{err[-3000:]}")
                results.append(json.loads(out.strip().splitlines()[-1]))
            wall = time.perf_counter() - began
            builds = sum(httpx.get(f"{r.url}/v1/stats", timeout=60).json()["builds_started"] for r in replicas)
    keys = {tuple(r["keys"]) for r in results}
    times = sorted(r["seconds"] for r in results)
    row = {
        "bench": "startup_storm", "clients": args.clients, "cores": args.cores, "replicas": 2,
        "builds_across_replicas": builds, "every_client_got_every_kernel": len(keys) == 1 and
        len(next(iter(keys))) == args.cores, "client_seconds_min": round(times[0], 2),
        "client_seconds_median": round(times[len(times) // 2], 2), "client_seconds_max": round(times[-1], 2),
        # per client, in start order: prefetch of every core (requests, builds, fetch + verify of every blob)
        "client_seconds": [round(r["seconds"], 2) for r in results],
        "wall_seconds": round(wall, 2), "loadavg_1m_before": round(load_before, 2),
        "loadavg_1m_after": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    print(json.dumps(row, indent=1))
    out = ROOT / "bench" / "results" / f"{datetime.date.today()}-startup_storm-{os.cpu_count()}cpu.jsonl"
    with out.open("a") as fh:
        fh.write(json.dumps(row) + "\n")
    if builds != args.cores or not row["every_client_got_every_kernel"]:
        raise SystemExit(f"FAILED: {builds} builds for {args.cores} cores")


if __name__ == "__main__":
    main()
