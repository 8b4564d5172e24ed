"""Read throughput (issue #12): manifest and blob GETs, the service vs nginx serving the same bytes.

    python bench/read_bench.py [--http-workers 1 2 3] [--store disk|redis] [--seconds 10] [--tag fastpath]

Installs Debian's ``nginx`` and ``wrk`` if they are missing (bench-only: the tests
and the service need neither). Builds one kernel (the default configs, so the
manifest is of realistic size), writes its manifest JSON and its largest blob
into a folder nginx serves, then runs wrk against both at 16 and 64 connections
(loopback, bounded in time), once per ``--http-workers`` count. Target on a 2-core
machine: the service at >= 25% of nginx's requests/s, p99 < 20 ms at 16
connections. wrk, nginx and the service share the machine's cores. Writes JSON
lines to bench/results/ with the load average before and after each run (the
machine may be shared) and how many answers the read fast path gave. With
``--ceiling`` it also measures a trivial ASGI app that returns the same bytes
under the same uvicorn (httptools, uvloop, one worker): the most any Python app
served this way reaches here.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import httpx  # noqa: E402
from live_server import free_port, live_server  # noqa: E402

#: how the service is served (serve picks httptools and uvloop when installed: flexsn_service.serving)
SERVER = "uvicorn+httptools+uvloop" if all(importlib.util.find_spec(m) for m in ("httptools", "uvloop")) else "uvicorn"


def ensure_tools() -> None:
    missing = [pkg for cmd, pkg in (("nginx", "nginx"), ("wrk", "wrk")) if shutil.which(cmd) is None]
    if missing:
        print(f"installing {' '.join(missing)} (bench-only)", flush=True)
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True)
        subprocess.run([*sudo, "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-qq",
                        "--no-install-recommends", *missing], check=True)


def start_nginx(folder: Path, port: int) -> subprocess.Popen:
    conf = folder / "nginx.conf"
    conf.write_text(f"""
worker_processes auto;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
daemon off;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    etag on;
    client_body_temp_path {folder}/tmp;
    proxy_temp_path {folder}/tmp;
    fastcgi_temp_path {folder}/tmp;
    uwsgi_temp_path {folder}/tmp;
    scgi_temp_path {folder}/tmp;
    types {{ application/json json; application/octet-stream bin; }}
    server {{
        listen 127.0.0.1:{port};
        root {folder}/www;
    }}
}}
""")
    (folder / "tmp").mkdir(exist_ok=True)
    proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(folder)])
    time.sleep(0.5)
    return proc


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def wrk(url: str, connections: int, seconds: int) -> dict:
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", url],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    requests = re.search(r"(\d+) requests in", out)
    return {"rps": rps, "p50_ms": float(p50.group(1)) * _UNITS[p50.group(2)],
            "p99_ms": float(p99.group(1)) * _UNITS[p99.group(2)],
            "non_2xx": int(errors.group(1)) if errors else 0, "requests": int(requests.group(1))}


#: The ceiling of any Python app behind uvicorn here: an ASGI app that answers every request with
#: constant bytes (no routing, auth or lookup), served as `flexsn-cache serve` serves (serving.py).
RAW_APP = """
import os
BODY = open(os.environ["RAW_BODY"], "rb").read()
HEADERS = [(b"content-length", str(len(BODY)).encode()), (b"content-type", b"application/octet-stream")]

async def app(scope, receive, send):
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        await send({"type": "http.response.body", "body": BODY})
"""


def start_raw_asgi(folder: Path, body: Path, port: int) -> subprocess.Popen:
    (folder / "raw_asgi.py").write_text(RAW_APP)
    code = ("import sys, uvicorn; sys.path.insert(0, sys.argv[1]); "
            "from flexsn_service.serving import http_protocol, loop_name; "
            "uvicorn.run('raw_asgi:app', port=int(sys.argv[2]), http=http_protocol(), loop=loop_name(), "
            "log_config=None, access_log=False, lifespan='off')")
    env = {**os.environ, "RAW_BODY": str(body), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder), str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
            return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the raw ASGI app did not start")


def fast_reads(url: str) -> int:
    """Answers of the read fast path so far (from /metrics): shows the figures are the fast path's."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("flexsn_http_fast_reads_total{")))


def run_one(args: argparse.Namespace, workers: int, tmp_path: Path) -> list[dict]:
    import neurons

    from flexsn_core import KernelSpec

    settings = {"http_workers": str(workers)}
    redis_ctx = None
    if args.store == "redis":
        from redis_server import start_redis

        redis_ctx = start_redis()
        settings["store"] = redis_ctx.__enter__()
    env = {"FLEXSN_SERVICE_CONFIGS": ""}  # flexsn_core's default configs: a manifest of realistic size
    rows = []
    try:
        with live_server(tmp_path / f"service-{workers}", extra_env=env, **settings) as server:
            model = neurons.MODELS["lif_hard"]
            spec = KernelSpec.from_core(model.core, model.num_inputs, model.num_states, model.num_outputs)
            with server.client(timeout=900) as http:
                built = http.post("/v1/kernels", params={"wait": "true"}, json=spec.to_dict())
                built.raise_for_status()
                manifest = http.get(f"/v1/kernels/{spec.key}").content
                blob = max(built.json()["binaries"], key=lambda b: b["size"])["sha256"]
                blob_bytes = http.get(f"/v1/blobs/{blob}").content
            www = tmp_path / f"nginx-{workers}" / "www"
            www.mkdir(parents=True)
            (www / "manifest.json").write_bytes(manifest)
            (www / "blob.bin").write_bytes(blob_bytes)
            port = free_port()
            nginx = start_nginx(tmp_path / f"nginx-{workers}", port)
            raw = None
            try:
                urls = {
                    "manifest": (f"{server.url}/v1/kernels/{spec.key}", f"http://127.0.0.1:{port}/manifest.json"),
                    "blob": (f"{server.url}/v1/blobs/{blob}", f"http://127.0.0.1:{port}/blob.bin"),
                }
                for what, (service_url, nginx_url) in urls.items():
                    for connections in (16, 64):
                        wrk(service_url, connections, 2)  # warm-up (every worker's cache fills)
                        load = os.getloadavg()[0]
                        # /metrics sums every worker's counts; with several, each folds its fast-path
                        # counts into the shared counters once a second (flexsn_service/main.py)
                        settle = 1.5 if workers > 1 else 0.0
                        time.sleep(settle)
                        fast_before = fast_reads(server.url)
                        svc = wrk(service_url, connections, args.seconds)
                        time.sleep(settle)
                        fast = fast_reads(server.url) - fast_before
                        ngx = wrk(nginx_url, connections, args.seconds)
                        ceiling = None
                        if args.ceiling and workers == args.http_workers[0]:
                            if raw is None or raw[0] != what:
                                if raw is not None:
                                    raw[1].terminate()
                                    raw[1].wait(timeout=10)
                                raw_port = free_port()
                                body = www / ("manifest.json" if what == "manifest" else "blob.bin")
                                raw = (what, start_raw_asgi(tmp_path, body, raw_port), raw_port)
                                wrk(f"http://127.0.0.1:{raw[2]}/", connections, 2)
                            ceiling = wrk(f"http://127.0.0.1:{raw[2]}/", connections, args.seconds)
                        row = {
                            "bench": "read_bench", "what": what, "connections": connections,
                            "bytes": len(manifest if what == "manifest" else blob_bytes),
                            "service_rps": svc["rps"], "service_p50_ms": svc["p50_ms"],
                            "service_p99_ms": svc["p99_ms"], "service_non_2xx": svc["non_2xx"],
                            "service_requests": svc["requests"], "service_fast_path_answers": fast,
                            "nginx_rps": ngx["rps"], "nginx_p50_ms": ngx["p50_ms"], "nginx_p99_ms": ngx["p99_ms"],
                            "ratio": round(svc["rps"] / ngx["rps"], 3),
                            "raw_asgi_rps": ceiling and ceiling["rps"], "raw_asgi_p99_ms": ceiling and ceiling["p99_ms"],
                            "raw_asgi_ratio": ceiling and round(ceiling["rps"] / ngx["rps"], 3),
                            "target_met": svc["rps"] >= 0.25 * ngx["rps"] and (connections != 16 or svc["p99_ms"] < 20),
                            "http_workers": workers, "store": args.store, "server": SERVER,
                            "loadavg_1m_before": round(load, 2), "loadavg_1m_after": round(os.getloadavg()[0], 2),
                            "cpus": os.cpu_count(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
                        }
                        rows.append(row)
                        print(f"{what:8} w={workers} c={connections:<3} service {svc['rps']:9.0f} req/s "
                              f"p99 {svc['p99_ms']:7.2f} ms | nginx {ngx['rps']:9.0f} req/s p99 {ngx['p99_ms']:7.2f} ms"
                              f" | ratio {row['ratio']:.2f} | load {load:.1f}"
                              + (f" | raw ASGI app {ceiling['rps']:9.0f} req/s" if ceiling else ""), flush=True)
            finally:
                nginx.terminate()
                nginx.wait(timeout=10)
                if raw is not None:
                    raw[1].terminate()
                    raw[1].wait(timeout=10)
    finally:
        if redis_ctx is not None:
            redis_ctx.__exit__(None, None, None)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http-workers", type=int, nargs="+", default=[1, 2],
                        help="uvicorn worker counts to measure, one service each")
    parser.add_argument("--store", choices=("disk", "redis"), default="disk")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--tag", default="", help="added to the results file's name, e.g. fastpath")
    parser.add_argument("--ceiling", action="store_true",
                        help="also measure a trivial ASGI app returning the same bytes under the same uvicorn "
                             "(the most any Python app served this way could do; with the first worker count)")
    args = parser.parse_args()
    ensure_tools()
    rows = []
    with tempfile.TemporaryDirectory(prefix="flexsn-read-bench-") as tmp:
        for workers in args.http_workers:
            rows += run_one(args, workers, Path(tmp))
    tag = f"-{args.tag}" if args.tag else ""
    out = ROOT / "bench" / "results" / f"{datetime.date.today()}-read_bench-{os.cpu_count()}cpu{tag}.jsonl"
    with out.open("a") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
