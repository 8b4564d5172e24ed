"""The cache service, started for real as a subprocess (uvicorn, a temp store)."""

from __future__ import annotations

import concurrent.futures
import hashlib
import secrets
import time

import neurons
import pytest
from live_server import Server, live_server, run_cli

from flexsn_core import KINDS, KernelSpec


def _spec(name: str, **kw) -> dict:
    model = neurons.MODELS[name]
    spec = KernelSpec.from_core(model.core, model.num_inputs, model.num_states, model.num_outputs,
                                num_static=len(model.statics), **kw)
    return spec.to_dict()


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Server:  # noqa: ANN001
    # access times are written in batches; a short interval lets the gc test see its touch
    with live_server(tmp_path_factory.mktemp("service"), touch_flush_s="0.2") as s:
        yield s


def test_build_then_hit_with_verified_blobs(server: Server) -> None:
    body = _spec("lif_hard")
    with server.client() as http:
        first = http.post("/v1/kernels", json=body)
        assert first.status_code == 202, first.text
        accepted = first.json()
        status = server.wait_build(http, accepted["build_id"])
        assert status["state"] == "succeeded", status
        manifest = http.get(f"/v1/kernels/{accepted['key']}").json()
        have = {(b["kind"], b["target"]) for b in manifest["binaries"]}
        assert have == {(k, t) for k in KINDS for t in ("cuda:80", "cuda:90")}
        for entry in manifest["binaries"] + [manifest["source"]]:
            blob = http.get(f"/v1/blobs/{entry['sha256']}")
            assert blob.status_code == 200
            assert hashlib.sha256(blob.content).hexdigest() == entry["sha256"]
            assert blob.headers["etag"] == f'"{entry["sha256"]}"'
            assert "immutable" in blob.headers["cache-control"]
        again = http.post("/v1/kernels", json=body)
        assert again.status_code == 200 and again.json()["key"] == accepted["key"]
        stats = http.get("/v1/stats").json()
        assert stats["hits"] >= 1 and stats["builds_succeeded"] >= 1 and stats["kernels"] >= 1
        metrics = http.get("/metrics").text
        assert "flexsn_cache_hits_total" in metrics and "flexsn_builds_started_total" in metrics


def test_concurrent_identical_requests_share_one_build(server: Server) -> None:
    body = _spec("alif")
    with server.client() as http:
        before = http.get("/v1/stats").json()["builds_started"]

        def post(_: int):  # noqa: ANN202
            with server.client() as c:
                return c.post("/v1/kernels", json=body)

        with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
            responses = list(pool.map(post, range(20)))
        assert all(r.status_code == 202 for r in responses), [r.status_code for r in responses]
        # one record per HTTP worker asked (the default is 2), for one build: every id answers anywhere
        ids = {r.json()["build_id"] for r in responses}
        assert 1 <= len(ids) <= 2
        assert http.get("/v1/stats").json()["builds_started"] == before + 1
        for build_id in ids:
            assert server.wait_build(http, build_id)["state"] == "succeeded"


def test_wait_true_returns_the_manifest(server: Server) -> None:
    body = _spec("lif_soft")
    with server.client(timeout=300) as http:
        response = http.post("/v1/kernels", params={"wait": "true"}, json=body)
        assert response.status_code == 200, response.text
        assert response.json()["key"] == KernelSpec.from_dict(body).key


def test_a_request_joins_only_a_build_of_its_targets(server: Server) -> None:
    """Issue #11: a cuda:90 request that joined an in-flight cuda:80 build got a manifest without cuda:90."""
    body = _spec("lif_hard", dtype="float16")
    with server.client(timeout=300) as http:
        first = http.post("/v1/kernels", json={**body, "targets": ["cuda:80"]})
        assert first.status_code == 202, first.text
        assert http.get(f"/v1/builds/{first.json()['build_id']}").json()["state"] in ("queued", "running")
        second = http.post("/v1/kernels", params={"wait": "true"}, json={**body, "targets": ["cuda:90"]})
        assert second.status_code == 200, second.text
        assert "cuda:90" in {b["target"] for b in second.json()["binaries"]}
        assert server.wait_build(http, first.json()["build_id"])["state"] == "succeeded"
        # A request for targets a running build covers still joins it.
        third = http.post("/v1/kernels", json={**_spec("lif_hard", dtype="bfloat16"), "targets": ["cuda:80", "cuda:90"]})
        fourth = http.post("/v1/kernels", json={**_spec("lif_hard", dtype="bfloat16"), "targets": ["cuda:90"]})
        assert third.status_code == fourth.status_code == 202
        assert third.json()["build_id"] == fourth.json()["build_id"]
        assert server.wait_build(http, third.json()["build_id"])["state"] == "succeeded"
        # Both builds' binaries end up in one manifest.
        manifest = http.get(f"/v1/kernels/{first.json()['key']}").json()
        assert {b["target"] for b in manifest["binaries"]} == {"cuda:80", "cuda:90"}


def test_cli_build_ls_stats_verify_and_gc(server: Server) -> None:
    env = {"FLEXSN_CACHE_URL": server.url}
    listed = run_cli("ls", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    stats = run_cli("stats", "--json", env=env)
    assert stats.returncode == 0 and '"hits"' in stats.stdout
    # built by the tests above, or now (xdist may have run them on another worker)
    for core in ("lif_hard", "lif_soft", "lif_hard"):
        build = run_cli("build", f"{neurons.__file__}:{core}", "-i", "1", "-s", "1", "-o", "1", env=env)
        assert build.returncode == 0, build.stderr
    assert "cached" in build.stdout
    store = f"disk:{server.store}"
    ok = run_cli("verify", "--store", store)
    assert ok.returncode == 0 and "ok" in ok.stdout, ok.stdout + ok.stderr

    # gc: keep roughly one kernel; the least recently used ones go first.
    with server.client() as http:
        items = http.get("/v1/kernels").json()["items"]
        assert len(items) >= 2
        keep = items[0]["key"]
        http.get(f"/v1/kernels/{keep}")  # touch: now the most recently used ...
        time.sleep(1.0)  # ... once the service has written its batch of access times (every 0.2 s here)
        gc = run_cli("gc", "--max-bytes", str(items[0]["bytes"]), "--store", store)
        assert gc.returncode == 0, gc.stderr
        remaining = {i["key"] for i in http.get("/v1/kernels").json()["items"]}
        assert remaining == {keep}
        assert run_cli("verify", "--store", store).returncode == 0


def test_service_survives_kill_9_during_builds(tmp_path) -> None:  # noqa: ANN001
    root = tmp_path / "crash"
    with live_server(root) as first:
        with first.client() as http:
            ids = [http.post("/v1/kernels", json=_spec(n)).json()["build_id"] for n in ("lif_hard", "two_inputs")]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                states = [http.get(f"/v1/builds/{i}").json()["state"] for i in ids]
                if "running" in states:
                    break
                time.sleep(0.2)
            time.sleep(1.0)
        first.kill9()
    check = run_cli("verify", "--store", f"disk:{root / 'store'}")
    assert check.returncode == 0, check.stdout + check.stderr
    with live_server(root) as second:
        with second.client(timeout=300) as http:
            response = http.post("/v1/kernels", params={"wait": "true"}, json=_spec("lif_hard"))
            assert response.status_code == 200, response.text
            assert http.get("/healthz").json()["status"] == "ok"
    check = run_cli("verify", "--store", f"disk:{root / 'store'}")
    assert check.returncode == 0, check.stdout + check.stderr


def test_bearer_tokens_and_scopes(tmp_path) -> None:  # noqa: ANN001
    tokens = tmp_path / "tokens.txt"
    reader, builder = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    tokens.write_text(f"# token scopes name\n{reader} read ci-reader\n{builder} build trainer\n")
    with live_server(tmp_path / "auth", tokens=str(tokens)) as server:
        body = _spec("lif_hard")
        with server.client() as anonymous:
            assert anonymous.get("/v1/stats").status_code == 401
            assert anonymous.post("/v1/kernels", json=body).status_code == 401
            assert anonymous.get("/healthz").json()["auth"] == "tokens"
        with server.client(secrets.token_urlsafe(32)) as wrong:
            assert wrong.get("/v1/stats").status_code == 401
        with server.client(reader) as read:
            assert read.get("/v1/stats").status_code == 200
            denied = read.post("/v1/kernels", json=body)
            assert denied.status_code == 403 and "build" in denied.json()["detail"]
        with server.client(builder) as build:
            assert build.post("/v1/kernels", json=body).status_code == 202
            assert build.delete(f"/v1/kernels/{'0' * 64}").status_code == 403  # admin only
