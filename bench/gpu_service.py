"""GPU check: the service builds and autotunes a LIF kernel on a GPU host.

    python bench/gpu_service.py

Starts the real service (uvicorn subprocess, temp store, the local GPU used),
POSTs the LIF spec with ``wait=true`` and reports the build time (worker: trace
and compile for this GPU's arch; tuner: time every config per kind and size
bucket), the stored tuning table, then a second request (a cache hit).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    import neurons
    from live_server import live_server

    from flexsn_core import KernelSpec

    body = KernelSpec.from_core(neurons.lif_hard, 1, 1, 1).to_dict()
    with live_server(Path(tempfile.mkdtemp(prefix="flexsn-gpu-service-")), use_gpu="1", configs="") as server:
        with server.client(timeout=900) as http:
            health = http.get("/healthz").json()
            t0 = time.perf_counter()
            response = http.post("/v1/kernels", params={"wait": "true"}, json=body)
            build_s = time.perf_counter() - t0
            if response.status_code != 200:
                print(response.status_code, response.text)
                print(server.logs()[-4000:])
                raise SystemExit(1)
            manifest = response.json()
            t0 = time.perf_counter()
            hit = http.post("/v1/kernels", json=body)
            hit_ms = (time.perf_counter() - t0) * 1000
            stats = http.get("/v1/stats").json()
        targets = sorted({b["target"] for b in manifest["binaries"]})
        tuned = {t: {k: sorted(v) for k, v in table.items()} for t, table in manifest["tuning"].items()}
        print(json.dumps({
            "health": health, "targets": targets, "binaries": len(manifest["binaries"]),
            "build_and_autotune_s": round(build_s, 2), "worker_build_s": manifest.get("build_seconds"),
            "tuned_buckets": tuned, "hit_status": hit.status_code, "hit_ms": round(hit_ms, 1), "stats": stats,
        }))
        print(json.dumps({"tuning": manifest["tuning"]}))


if __name__ == "__main__":
    main()
