"""G5: cold build of all four kinds for two archs on a host without a GPU.

    python bench/cold_build.py

Empty Triton cache every time. Measures, for the LIF core and a second core:

* ``library``: ``build_artifacts(spec, ("cuda:80", "cuda:90"))`` in a process
  that has imported flexsn_core (the first build also pays the lazy imports of
  tracing and Triton's initialization; the second does not);
* ``service``: ``POST /v1/kernels?wait=true`` to a running service whose warmed
  spare workers already paid those (the bench waits 10 s before each request
  so the spare used by the previous build has been replaced), request to
  manifest.

Writes JSON lines with ``cold_build_s`` to bench/results/.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

CORES = [("lif_hard", 1, 1, 1), ("alif", 1, 2, 1)]


def library() -> list[dict]:
    code = f"""
import json, sys, time
sys.path.insert(0, {str(ROOT / 'tests')!r})
import neurons
from flexsn_core import KernelSpec, build_artifacts
for name, ni, ns, no in {CORES!r}:
    spec = KernelSpec.from_core(getattr(neurons, name), ni, ns, no)
    t0 = time.perf_counter()
    art = build_artifacts(spec, targets=("cuda:80", "cuda:90"))
    print(json.dumps({{"how": "library", "core": name, "binaries": len(art.manifest["binaries"]),
                      "cold_build_s": round(time.perf_counter() - t0, 2)}}))
"""
    env = dict(os.environ, TRITON_CACHE_DIR=tempfile.mkdtemp(), FLEXSN_CACHE_DIR=tempfile.mkdtemp(),
               PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def service() -> list[dict]:
    import neurons
    from live_server import live_server

    from flexsn_core import KernelSpec

    rows = []
    with live_server(Path(tempfile.mkdtemp(prefix="flexsn-cold-")), configs="512x4,1024x8") as server:
        with server.client(timeout=600) as http:
            for name, ni, ns, no in CORES:
                # A running service has its spare workers warmed up between builds; on a
                # 2-core machine warming one up right beside a build halves its speed.
                time.sleep(10)
                body = KernelSpec.from_core(getattr(neurons, name), ni, ns, no).to_dict()
                t0 = time.perf_counter()
                response = http.post("/v1/kernels", params={"wait": "true"}, json=body)
                elapsed = time.perf_counter() - t0
                manifest = response.json()
                rows.append({"how": "service", "core": name, "status": response.status_code,
                             "binaries": len(manifest.get("binaries", [])), "cold_build_s": round(elapsed, 2)})
    return rows


def main() -> None:
    host = {"host": platform.node(), "cpus": os.cpu_count(), "date": datetime.date.today().isoformat()}
    rows = [{**host, **r} for r in (*library(), *service())]
    for row in rows:
        print(json.dumps(row), flush=True)
    summary = {**host, "summary": True, "cold_build_s": max(r["cold_build_s"] for r in rows)}
    print(json.dumps(summary))
    out = ROOT / "bench" / "results" / f"{host['date']}-cold_build-{host['cpus']}cpu.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in (*rows, summary)))


if __name__ == "__main__":
    main()
