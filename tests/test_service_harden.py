"""Hardening against a real service process: auth before bodies, streamed body limits,
a damaged store healing while the service runs, and source checks that do not starve reads."""

from __future__ import annotations

import hashlib
import secrets
import socket
import threading
import time
from pathlib import Path

import httpx
import neurons
import pytest
import store_damage
from live_server import Server, live_server, run_cli

from flexsn_core import KernelSpec

TOKENS = {scope: secrets.token_urlsafe(32) for scope in ("read", "build", "admin")}
LIMIT = 300_000


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Server:  # noqa: ANN001
    root = tmp_path_factory.mktemp("harden")
    tokens = root / "tokens.txt"
    tokens.write_text("".join(f"{value} {scope} {scope}-user\n" for scope, value in TOKENS.items()))
    # 2048x8 makes some cubins larger than diskcache's 32 KiB: the store then holds blobs of both kinds
    # (files and SQLite rows), and the healing test damages one of each.
    # read_cache_mb=0: these tests damage the store behind the service's back and check that the store
    # itself heals; with the read cache on, the service (rightly) keeps serving the copy it verified.
    with live_server(root, tokens=str(tokens), max_request_bytes=str(LIMIT), configs="2048x8",
                     read_cache_mb="0") as s:
        yield s


def _spec(name: str, **kw) -> dict:
    model = neurons.MODELS[name]
    return KernelSpec.from_core(model.core, model.num_inputs, model.num_states, model.num_outputs,
                                num_static=len(model.statics), **kw).to_dict()


def _raw_request(server: Server, head: str, wait_s: float) -> bytes:
    """Send only a request head (no body) and return what the server answers within ``wait_s``."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait_s) as conn:
        conn.sendall(head.encode())
        try:
            return conn.recv(65536)
        except TimeoutError:
            return b""


# --------------------------------------------------------------------- auth
@pytest.mark.parametrize("framing", ["Content-Length: 900000", "Transfer-Encoding: chunked"])
def test_anonymous_requests_get_401_before_their_body_is_sent(server: Server, framing: str) -> None:
    head = f"POST /v1/kernels HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{framing}\r\n"
    answer = _raw_request(server, head + "\r\n", wait_s=10)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    wrong = _raw_request(server, head + f"Authorization: Bearer {secrets.token_urlsafe(32)}\r\n\r\n", wait_s=10)
    assert wrong.startswith(b"HTTP/1.1 401"), wrong[:200]
    # A known token: the service waits for the body it needs (so the 401 above came before reading it).
    if framing.startswith("Transfer"):
        waiting = _raw_request(server, head + f"Authorization: Bearer {TOKENS['build']}\r\n\r\n", wait_s=1.5)
        assert waiting == b""


def test_bodies_over_the_limit_get_413_declared_or_streamed(server: Server) -> None:
    def chunks():  # noqa: ANN202 - no Content-Length: httpx sends it chunked
        for _ in range(16):
            yield b" " * 25_000

    headers = {"Authorization": f"Bearer {TOKENS['build']}", "Content-Type": "application/json"}
    with server.client() as http:
        streamed = http.post("/v1/kernels", content=chunks(), headers=headers)
        assert streamed.status_code == 413, streamed.text
        assert streamed.json() == {"detail": f"request body over the {LIMIT}-byte limit"}
        declared = http.post("/v1/kernels", content=b" " * (LIMIT + 1), headers=headers)
        assert declared.status_code == 413
        assert http.get("/healthz").status_code == 200


# ------------------------------------------------------------ store healing
def _snapshot(http: httpx.Client, key: str) -> dict:
    manifest = http.get(f"/v1/kernels/{key}")
    assert manifest.status_code == 200, manifest.text
    return manifest.json()


def _wait_built(server: Server, http: httpx.Client, body: dict) -> dict:
    response = http.post("/v1/kernels", json=body)
    if response.status_code == 202:
        status = server.wait_build(http, response.json()["build_id"], timeout=300)
        assert status["state"] == "succeeded", status
    else:
        assert response.status_code == 200, response.text
    return _snapshot(http, KernelSpec.from_dict(body).key)


def _served_intact(http: httpx.Client, manifest: dict) -> None:
    for entry in [manifest["source"], *manifest["binaries"]]:
        blob = http.get(f"/v1/blobs/{entry['sha256']}")
        assert blob.status_code == 200 and hashlib.sha256(blob.content).hexdigest() == entry["sha256"]


def test_a_damaged_store_heals_under_a_running_service(server: Server) -> None:
    body = _spec("lif_hard")
    key = KernelSpec.from_dict(body).key
    store = Path(server.store)
    with server.client(TOKENS["build"], timeout=300) as http:
        manifest = _wait_built(server, http, body)
        by_place: dict[str, str] = {}
        for entry in manifest["binaries"]:
            place = "file" if store_damage.location(store, f"blob:{entry['sha256']}") else "row"
            by_place.setdefault(place, entry["sha256"])
        assert set(by_place) == {"file", "row"}, "the kernel should have blobs of both kinds"

        # 1. Damage a blob in a file, a blob in a row and the manifest, behind the service's back.
        for place, sha in by_place.items():
            assert store_damage.rewrite(store, f"blob:{sha}", store_damage.flip_tail) == place
        manifest_place = store_damage.rewrite(store, f"manifest:{key}", store_damage.edit_json)
        for sha in by_place.values():
            assert http.get(f"/v1/blobs/{sha}").status_code == 404  # never served, dropped
        assert http.get(f"/v1/kernels/{key}").status_code == 404, manifest_place
        assert http.get(f"/v1/kernels/{key}/bundle").status_code == 404
        assert http.get("/v1/kernels").status_code == 200

        # 2. The next request rebuilds it, and everything is served intact again.
        rebuilt = http.post("/v1/kernels", json=body)
        assert rebuilt.status_code == 202, rebuilt.text
        assert server.wait_build(http, rebuilt.json()["build_id"], timeout=300)["state"] == "succeeded"
        _served_intact(http, _snapshot(http, key))

        # 3. A manifest that is fine but names a damaged blob is a miss too (POST rebuilds).
        sha = by_place["row"]
        store_damage.rewrite(store, f"blob:{sha}", store_damage.flip_tail)
        again = http.post("/v1/kernels", json=body)
        assert again.status_code == 202, again.text
        assert server.wait_build(http, again.json()["build_id"], timeout=300)["state"] == "succeeded"
        _served_intact(http, _snapshot(http, key))
    check = run_cli("verify", "--store", f"disk:{store}")
    assert check.returncode == 0 and "ok" in check.stdout, check.stdout + check.stderr


# --------------------------------------------------------------- throughput
def _big_source() -> str:
    """About 190 kB that passes every rule until the last check (the entry's arity): the full cost."""
    helper = ("def helper_{i}(x, v):\n    h = v + (x - v) / 2.0 * torch.sigmoid(x) + torch.tanh(v) * 0.5\n"
              "    return h * (1.0 - h), torch.where(h > 1.0, h, v)\n\n")
    parts, size, i = ["import torch\n\n"], 0, 0
    while size < 190_000:
        parts.append(helper.format(i=i))
        size += len(parts[-1])
        i += 1
    return "".join(parts) + "def core(x, v, w):\n    return x, v\n"


def _blob_reads_per_second(server: Server, sha: str, seconds: float) -> float:
    with server.client(TOKENS["read"]) as http:
        http.get(f"/v1/blobs/{sha}")
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            assert http.get(f"/v1/blobs/{sha}").status_code == 200
            count += 1
        return count / (time.perf_counter() - start)


def test_blob_reads_are_served_while_large_sources_are_checked(server: Server) -> None:
    """Blob GETs/s on their own vs while 4 clients POST 190 kB sources (each fully checked).

    The windows alternate (idle, loaded, idle, loaded) and the idle ones start only once every
    check in flight has answered, so background load on a shared 2-core machine (another test,
    the spare build workers warming up) hits both sides alike.
    """
    import json

    with server.client(TOKENS["build"], timeout=300) as http:
        manifest = _wait_built(server, http, _spec("lif_hard"))
    sha = manifest["binaries"][0]["sha256"]
    source = _big_source()
    assert 180_000 < len(source) < 200_000
    payload = json.dumps({**_spec("lif_hard"), "source": source, "entry": "core"}).encode()  # encoded once

    go, stop = threading.Event(), threading.Event()
    in_flight = [0]
    lock = threading.Lock()
    answers: list[int] = []

    def post_sources() -> None:
        headers = {"Content-Type": "application/json"}
        with server.client(TOKENS["build"], timeout=120) as http:
            while not stop.is_set():
                if not go.wait(timeout=0.1):
                    continue
                with lock:
                    in_flight[0] += 1
                try:
                    answers.append(http.post("/v1/kernels", content=payload, headers=headers).status_code)
                finally:
                    with lock:
                        in_flight[0] -= 1

    def drained() -> None:
        deadline = time.monotonic() + 60
        while in_flight[0] and time.monotonic() < deadline:
            time.sleep(0.05)

    posters = [threading.Thread(target=post_sources) for _ in range(4)]
    for thread in posters:
        thread.start()
    idle, loaded = [], []
    try:
        for _ in range(2):
            go.clear()
            drained()
            idle.append(_blob_reads_per_second(server, sha, 2.0))
            go.set()
            time.sleep(0.5)  # the checks queue up
            loaded.append(_blob_reads_per_second(server, sha, 2.0))
    finally:
        stop.set()
        go.set()
        for thread in posters:
            thread.join(timeout=120)
    assert answers and set(answers) == {422}, set(answers)  # each one fully checked (arity is last)
    ratio = sum(loaded) / sum(idle)
    # The figures are printed, not asserted (no timed assertions in tests: on a loaded 2-core CI host the
    # ratio swung from 0.3 to 1.0); what must hold is that reads are served all the while the checks run.
    print(f"blob GETs/s idle {idle}, with 4 clients posting 190 kB sources {loaded}: ratio {ratio:.2f}")
    assert min(loaded) > 0 and min(idle) > 0, (idle, loaded)
