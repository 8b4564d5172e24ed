"""The client and FlexSN(backend="remote-cache"), end to end against a real service.

Kernels run in Triton's interpreter on CPU tensors, so the client regenerates
the source locally and checks it against the manifest (it never runs code it
received).
"""

from __future__ import annotations

import io
import json
import secrets
import subprocess
import tarfile
import sys
import textwrap
import time
import warnings
from pathlib import Path

import httpx
import neurons
import pytest
import torch
from live_server import ROOT, Server, free_port, live_server, run_cli

import flexsn_client.provider as provider_module
from flexsn_client import KernelCacheClient, KernelCacheWarning, ServiceAPI
from flexsn_core import AuthError, CacheUnavailableError, FlexSN, IntegrityError, KernelSpec, counters
from flexsn_core.local import LocalStore


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Server:  # noqa: ANN001
    with live_server(tmp_path_factory.mktemp("client-service")) as s:
        yield s


@pytest.fixture(autouse=True)
def fresh_mirror(tmp_path, monkeypatch):  # noqa: ANN001, ANN201
    """Each test gets its own local mirror and its own provider (clients are per process)."""
    monkeypatch.setenv("FLEXSN_CACHE_DIR", str(tmp_path / "mirror"))
    monkeypatch.setattr(provider_module, "_providers", {})
    yield tmp_path / "mirror"


def _train_step(m: FlexSN, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    m.reset()
    xg = x.clone().requires_grad_()
    y = m(xg)
    y = y if isinstance(y, torch.Tensor) else y[0]
    (y.sum() + sum(s.square().sum() for s in m.states)).backward()
    return y.detach(), xg.grad


@pytest.mark.parametrize("name", ["lif_hard", "alif", "plif"])
def test_remote_cache_matches_the_torch_backend(server: Server, name: str) -> None:
    model = neurons.MODELS[name]
    statics = (torch.nn.Parameter(torch.randn(3, 11) * 0.3),) if model.statics else ()
    args = (model.core, model.num_inputs, model.num_states, model.num_outputs)
    remote = FlexSN(*args, backend="remote-cache", cache_url=server.url, static_inputs=statics)
    local = FlexSN(*args, backend="torch", static_inputs=statics)
    x = torch.randn(6, 3, 11) + 0.5
    with torch.no_grad():
        torch.testing.assert_close(remote(x), local(x))
    for a, b in zip(_train_step(remote, x), _train_step(local, x)):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


_FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys, warnings
    import torch
    sys.path.insert(0, {tests!r})
    import neurons
    from flexsn_core import FlexSN, counters
    url = sys.argv[1]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = FlexSN(neurons.lif_hard, 1, 1, 1, backend="remote-cache", cache_url=url)
        x = (torch.randn(5, 7) + 0.5).requires_grad_()
        m(x).sum().backward()
    cache_warnings = [str(w.message) for w in caught if w.category.__name__ == "KernelCacheWarning"]
    print(json.dumps({{"counters": counters(), "warnings": cache_warnings,
                      "grad_ok": bool(torch.isfinite(x.grad).all())}}))
    """
)


def _fresh_process(url: str, mirror: Path) -> dict:
    script = _FRESH_PROCESS.format(tests=str(ROOT / "tests"))
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "TRITON_INTERPRET": "1", "FLEXSN_CACHE_DIR": str(mirror)}
    out = subprocess.run([sys.executable, "-c", script, url], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_fresh_process_gets_kernels_without_building(server: Server, tmp_path: Path) -> None:
    with server.client(timeout=300) as http:
        body = KernelSpec.from_core(neurons.lif_hard, 1, 1, 1).to_dict()
        assert http.post("/v1/kernels", params={"wait": "true"}, json=body).status_code == 200
        before = http.get("/v1/stats").json()["builds_started"]
        result = _fresh_process(server.url, tmp_path / "empty-mirror")
        assert http.get("/v1/stats").json()["builds_started"] == before  # no new build
    assert result["counters"]["compiles"] == 0
    assert result["counters"]["remote_hits"] >= 1
    assert result["warnings"] == [] and result["grad_ok"]

    # The service goes away: the mirror of that node still serves the kernel.
    dead = f"http://127.0.0.1:{free_port()}"
    offline = _fresh_process(dead, tmp_path / "empty-mirror")
    assert offline["counters"]["local_hits"] >= 1 and offline["counters"]["remote_hits"] == 0
    assert offline["warnings"] == [] and offline["grad_ok"]


def test_unreachable_service_falls_back_with_one_warning(fresh_mirror: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.warns(KernelCacheWarning, match="could not serve lif_soft.*built its kernels locally") as caught:
        m = FlexSN(neurons.lif_soft, 1, 1, 1, backend="remote-cache", cache_url=dead)
    assert len(caught) == 1
    x = (torch.randn(4, 6) + 0.5).requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("error", KernelCacheWarning)  # no second warning on use
        m(x).sum().backward()
        FlexSN(neurons.lif_soft, 1, 1, 1, backend="remote-cache", cache_url=dead)
    assert torch.isfinite(x.grad).all()


class _Tamper(httpx.BaseTransport):
    """Flips the tail of one blob on its way to the client (the service itself never serves a
    damaged blob: it re-hashes on read, see test_service_harden), in /v1/blobs and in bundles."""

    def __init__(self, sha: str) -> None:
        self.sha = sha
        self.inner = httpx.HTTPTransport()

    def _flip(self, data: bytes) -> bytes:
        return data[:-64] + bytes(b ^ 0x5A for b in data[-64:])

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        response.read()
        content = response.content
        if request.url.path == f"/v1/blobs/{self.sha}":
            content = self._flip(content)
        elif request.url.path.endswith("/bundle") and response.status_code == 200:
            out = io.BytesIO()
            with tarfile.open(fileobj=io.BytesIO(content)) as src, tarfile.open(fileobj=out, mode="w") as dst:
                for member in src.getmembers():
                    data = src.extractfile(member).read()
                    dst.addfile(member, io.BytesIO(self._flip(data) if member.name == self.sha else data))
            content = out.getvalue()
        headers = [(k, v) for k, v in response.headers.items() if k.lower() not in ("content-length", "content-encoding")]
        return httpx.Response(response.status_code, headers=headers, content=content, request=request)


def test_tampered_blob_is_refused(server: Server, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    spec = KernelSpec.from_core(neurons.izhikevich, 1, 2, 2)
    with server.client(timeout=300) as http:
        manifest = http.post("/v1/kernels", params={"wait": "true"}, json=spec.to_dict()).json()
    sha = manifest["binaries"][0]["sha256"]
    api = ServiceAPI(server.url, transport=_Tamper(sha))

    client = KernelCacheClient(server.url, local_dir=tmp_path / "mirror-a", api=api)
    with pytest.raises(IntegrityError, match="does not match its sha256 twice"):
        client.fetch_blob(sha)
    assert not client.mirror.has_blob(sha)
    with pytest.raises(IntegrityError):
        client.get(spec)
    assert client.mirror.get_manifest(spec.key) is None

    # FlexSN never uses it: it warns and builds locally.
    import flexsn_client.cache as cache_module

    monkeypatch.setattr(cache_module, "shared_api", lambda *_args, **_kwargs: api)
    with pytest.warns(KernelCacheWarning, match="IntegrityError"):
        FlexSN(neurons.izhikevich, 1, 2, 2, backend="remote-cache", cache_url=server.url)
    report = run_cli("verify", "--store", f"disk:{server.store}")
    assert report.returncode == 0, report.stdout  # the store itself is intact


def test_wrong_token_is_a_clear_auth_error(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(secrets.token_urlsafe(32) + " build trainer\n")
    with live_server(tmp_path / "auth", tokens=str(tokens)) as server:
        with pytest.raises(AuthError, match="FLEXSN_CACHE_TOKEN"):
            FlexSN(neurons.lif_hard, 1, 1, 1, backend="remote-cache", cache_url=server.url,
                   cache_token=secrets.token_urlsafe(32))
        with pytest.raises(AuthError, match="401"):
            KernelCacheClient(server.url).get(KernelSpec.from_core(neurons.lif_hard, 1, 1, 1))


def test_warm_prefetches_every_flexsn_a_model_builds(server: Server, tmp_path: Path) -> None:
    model_file = tmp_path / "snn_model.py"
    model_file.write_text(textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(ROOT / 'tests')!r})
        import torch
        import neurons
        from flexsn_core import FlexSN

        def build():
            return torch.nn.Sequential(
                torch.nn.Linear(4, 4),
                FlexSN(neurons.lif_hard, 1, 1, 1, backend="remote-cache"),
                FlexSN(neurons.two_inputs, 2, 1, 2, backend="remote-cache"),
            )
        """
    ))
    mirror = tmp_path / "warm-mirror"
    result = run_cli("warm", f"{model_file}:build", "--url", server.url,
                     env={"FLEXSN_CACHE_DIR": str(mirror), "TRITON_INTERPRET": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warmed 2 kernel(s)" in result.stdout
    store = LocalStore(mirror / "artifacts")
    for core, counts in ((neurons.lif_hard, (1, 1, 1)), (neurons.two_inputs, (2, 1, 2))):
        assert store.get_manifest(KernelSpec.from_core(core, *counts).key) is not None


# ------------------------------------------------------------ unit level
def _api(handler) -> ServiceAPI:  # noqa: ANN001
    return ServiceAPI("http://cache.test", transport=httpx.MockTransport(handler), retries=2)


def test_retries_with_backoff_then_succeeds() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(503) if len(calls) < 3 else httpx.Response(200, json={"hits": 1})

    assert _api(handler).stats() == {"hits": 1}
    assert len(calls) == 3


def test_unreachable_and_auth_errors_say_what_to_do() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    with pytest.raises(CacheUnavailableError, match="FLEXSN_CACHE_URL"):
        _api(refuse).stats()
    with pytest.raises(AuthError, match="FLEXSN_CACHE_TOKEN"):
        _api(lambda r: httpx.Response(403, json={"detail": "lacks build"})).stats()


def test_a_corrupt_blob_is_fetched_again_once(tmp_path: Path) -> None:
    good = b"cubin bytes"
    sha = __import__("hashlib").sha256(good).hexdigest()
    answers = [b"corrupted!!", good]
    api = _api(lambda r: httpx.Response(200, content=answers.pop(0)))
    client = KernelCacheClient("http://cache.test", local_dir=tmp_path, api=api)
    assert client.fetch_blob(sha) == good and client.mirror.get_blob(sha) == good


def test_a_node_mirrors_its_targets_binaries_and_tuning_only(tmp_path: Path) -> None:
    """The service's manifest holds cuda:80 and cuda:90 binaries, tuned on a cuda:90 host; a cuda:80
    node keeps a valid manifest of its own target (a choice of a target with no binaries would not be)."""
    from store_contract import config, make_artifact

    from flexsn_core.manifest import TuningChoice, merge_manifests, record_tuning

    a80, a90 = make_artifact(90, 2, target="cuda:80"), make_artifact(90, 2, target="cuda:90")
    served = merge_manifests(a80.manifest, a90.manifest)
    record_tuning(served, TuningChoice(target="cuda:90", kind="inference", bucket=1, variant="aligned",
                                       config_id=config(0).id))
    blobs = {**a80.blobs, **a90.blobs}

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.startswith("/v1/blobs/"):
            return httpx.Response(200, content=blobs[path.rsplit("/", 1)[1]])
        return httpx.Response(404, json={"detail": "no bundles here"})

    client = KernelCacheClient("http://cache.test", local_dir=tmp_path, api=_api(handler))
    kept = client._mirror(served, ["cuda:80"])
    assert {b["target"] for b in kept["binaries"]} == {"cuda:80"} and kept["tuning"] == {}
    assert client.mirror.get_intact_manifest(served["key"]) == kept


def test_tuning_decisions_are_mirrored_and_reported(tmp_path: Path, server: Server) -> None:
    spec = KernelSpec.from_core(neurons.lif_hard, 1, 1, 1)
    posted = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path.endswith("/tuning"):
            posted.append(json.loads(request.content))
            return httpx.Response(200, json={"accepted": 1, "tuning": {}})
        return httpx.request(request.method, f"{server.url}{request.url.raw_path.decode()}", content=request.content,
                             headers={"Content-Type": "application/json"}, timeout=300)

    client = KernelCacheClient("http://cache.test", local_dir=tmp_path, api=_api(handler))
    manifest = client.get_or_build(spec)
    assert manifest is not None
    config = manifest["binaries"][0]
    client._tuned(spec.key, {"target": config["target"], "kind": config["kind"], "bucket": 2,
                             "variant": "aligned", "config_id": config["config_id"], "timings_ms": {}})
    deadline = time.monotonic() + 10
    while not posted and time.monotonic() < deadline:
        time.sleep(0.05)
    assert posted == [{"target": config["target"], "choices": [
        {"kind": config["kind"], "bucket": 2, "variant": "aligned", "config_id": config["config_id"]}]}]
    stored = client.mirror.get_manifest(spec.key)
    assert stored["tuning"][config["target"]][config["kind"]]["2"]["aligned"] == config["config_id"]
    assert counters()["compiles"] == 0
