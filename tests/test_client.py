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

import bad_neurons
import flexsn_client.cache as cache_module
import flexsn_client.provider as provider_module
from flexsn_client import KernelCacheClient, KernelCacheWarning, RemoteProvider, ServiceAPI, SpecRejectedError
from flexsn_core import (
    ArtifactError,
    AuthError,
    BuildFailedError,
    CacheUnavailableError,
    CoreSignatureError,
    CoreTraceError,
    FlexSN,
    IntegrityError,
    KernelSpec,
    UnsupportedOpError,
    counters,
)
from flexsn_core.local import LocalStore


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Server:  # noqa: ANN001
    with live_server(tmp_path_factory.mktemp("client-service")) as s:
        yield s


@pytest.fixture(autouse=True)
def fresh_mirror(tmp_path, monkeypatch):  # noqa: ANN001, ANN201
    """Each test gets its own local mirror, provider and connection pools (clients are per process)."""
    import flexsn_client.cache as cache_module

    monkeypatch.setenv("FLEXSN_CACHE_DIR", str(tmp_path / "mirror"))
    monkeypatch.setattr(provider_module, "_providers", {})
    monkeypatch.setattr(cache_module, "_pools", {})
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
                      "grad_ok": bool(torch.isfinite(x.grad).all()), "httpx_imported": "httpx" in sys.modules}}))
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
    # A local hit never loads the HTTP stack (0.2 s of a warm start); the remote hit needed it.
    assert result["httpx_imported"] and not offline["httpx_imported"]


def test_unreachable_service_falls_back_with_one_warning(fresh_mirror: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.warns(KernelCacheWarning, match="could not serve lif_soft.*built its kernels locally") as caught:
        m = FlexSN(neurons.lif_soft, 1, 1, 1, backend="remote-cache", cache_url=dead)
    assert len(caught) == 1
    assert caught[0].filename == __file__  # the user's line, not flexsn_client's
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
    # batch mode (stderr is a pipe): no progress drawn, one summary line
    assert result.stderr.strip().splitlines()[-1].startswith("warmed 2/2 kernel(s)"), result.stderr
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
        body = {"hits": 1, "misses": 0, "kernels": 0, "bytes": 0}
        return httpx.Response(503) if len(calls) < 3 else httpx.Response(200, json=body)

    assert _api(handler).stats()["hits"] == 1
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


# ------------------------------------------------------------ issue #11: honest about failures
@pytest.mark.parametrize(("core", "error"), [(bad_neurons.sorts, UnsupportedOpError),
                                             (bad_neurons.branches, CoreTraceError)], ids=["sort", "branch"])
def test_a_core_the_service_cannot_build_raises_what_triton_raises(server: Server, core, error) -> None:  # noqa: ANN001
    """Not a warning followed by the HOP path running torch.sort across neurons."""
    with pytest.raises(error) as local:
        FlexSN(core, 1, 1, 1, backend="triton")
    with warnings.catch_warnings():
        warnings.simplefilter("error", KernelCacheWarning)
        with pytest.raises(error) as remote:
            FlexSN(core, 1, 1, 1, backend="remote-cache", cache_url=server.url)
    assert str(remote.value) == str(local.value)
    if error is UnsupportedOpError:
        assert remote.value.op == local.value.op == "aten.sort.default"
        assert remote.value.line == local.value.line is not None


def test_the_client_raises_the_core_error_the_service_reports(server: Server, tmp_path: Path) -> None:
    """A spec FlexSN's own checks would catch first, sent straight to the service."""
    client = KernelCacheClient(server.url, local_dir=tmp_path)
    with pytest.raises(CoreSignatureError, match="returned 3 values"):
        client.kernels(KernelSpec.from_core(bad_neurons.three_returns, 1, 1, 1), torch.device("cpu"))
    rejected = KernelSpec(source="import os\n\ndef core(x, v):\n    return x, v\n", entry="core",
                          num_inputs=1, num_states=1, num_outputs=1)
    with pytest.raises(SpecRejectedError, match="rejected"):
        client.kernels(rejected, torch.device("cpu"))


def test_a_float_spike_in_a_bf16_core_is_served_and_cast(server: Server) -> None:
    examples = (torch.zeros(5, dtype=torch.bfloat16),) * 2
    x = (torch.randn(6, 5) + 0.8).to(torch.bfloat16)
    remote = FlexSN(bad_neurons.float_spike, 1, 1, 1, backend="remote-cache", cache_url=server.url,
                    example_inputs=examples)
    local = FlexSN(bad_neurons.float_spike, 1, 1, 1, backend="triton", example_inputs=examples)
    with torch.no_grad():
        y = remote(x)
        assert y.dtype == torch.bfloat16
        torch.testing.assert_close(y, local(x))
    assert counters()["remote_hits"] + counters()["remote_misses"] >= 1


class _Counting(httpx.BaseTransport):
    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner, self.calls = inner, 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        return self.inner.handle_request(request)


def test_a_dead_service_costs_one_warning_and_one_try_for_a_whole_model(monkeypatch) -> None:  # noqa: ANN001
    """Four distinct cores against a dead URL: the first call finds it down, the other three skip it."""
    dead = f"http://127.0.0.1:{free_port()}"
    transport = _Counting(httpx.HTTPTransport())
    api = ServiceAPI(dead, transport=transport)
    monkeypatch.setattr(cache_module, "shared_api", lambda *_args, **_kwargs: api)
    cores = [(neurons.lif_hard, 1, 1, 1), (neurons.lif_soft, 1, 1, 1), (neurons.alif, 1, 2, 1),
             (neurons.two_inputs, 2, 1, 2)]
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = [FlexSN(*c, backend="remote-cache", cache_url=dead) for c in cores]
    elapsed = time.perf_counter() - started
    cache_warnings = [w for w in caught if issubclass(w.category, KernelCacheWarning)]
    assert len(cache_warnings) == 1, [str(w.message) for w in cache_warnings]
    assert cache_warnings[0].filename == __file__
    assert transport.calls == 2  # one refused connection, retried once; then the service is skipped
    assert api.unavailable()
    print(f"4 cores against a dead URL: {elapsed:.2f} s, {transport.calls} connection attempts")
    assert all(m._kernels.handles for m in model)  # every core got local kernels


def _mock(routes) -> ServiceAPI:  # noqa: ANN001
    """A ServiceAPI over a MockTransport: routes maps (method, path prefix) to a response factory."""

    def handler(request: httpx.Request) -> httpx.Response:
        for (method, prefix), answer in routes.items():
            if request.method == method and request.url.path.startswith(prefix):
                return answer(request)
        return httpx.Response(404, json={"detail": "not found"})

    return ServiceAPI("http://cache.test", transport=httpx.MockTransport(handler), retries=1, build_wait_s=0.6)


def _failed_build(spec: KernelSpec, **status) -> ServiceAPI:  # noqa: ANN003
    accepted = {"build_id": "b1", "key": spec.key, "state": "queued", "status_url": "/v1/builds/b1"}
    return _mock({
        ("POST", "/v1/kernels"): lambda r: httpx.Response(202, json=accepted),
        ("GET", "/v1/builds/b1"): lambda r: httpx.Response(200, json={"build_id": "b1", "key": spec.key, **status}),
    })


def test_every_wait_for_a_build_has_a_limit(tmp_path: Path) -> None:
    spec = KernelSpec.from_core(neurons.lif_hard, 1, 1, 1)
    api = _failed_build(spec, state="running", log_tail=[])
    client = KernelCacheClient("http://cache.test", local_dir=tmp_path, api=api)
    started = time.monotonic()
    with pytest.raises(CacheUnavailableError, match="did not finish build b1 within 0.6 s"):
        client.get_or_build(spec)
    assert time.monotonic() - started < 5
    # FlexSN builds locally instead (a timeout is the service's trouble, not the core's).
    with pytest.warns(KernelCacheWarning, match="did not finish build") as caught:
        ks = RemoteProvider(client)(spec, torch.device("cpu"))
    assert ks is not None and caught[0].filename == __file__


@pytest.mark.parametrize(("status", "raised"), [
    ({"error_type": "UnsupportedOpError", "error_op": "aten.sort.default", "error_line": 5, "user_error": True,
      "error": "unsupported op aten.sort.default at line 5"}, UnsupportedOpError),
    ({"error_type": "WorkerDied", "user_error": True, "error": "the jailed build worker stopped"}, BuildFailedError),
    ({"error_type": "SourceRejected", "user_error": True, "error": "uses import os"}, SpecRejectedError),
], ids=["core error", "the core's fault", "source check"])
def test_a_build_that_failed_because_of_the_core_is_raised(tmp_path: Path, status, raised) -> None:  # noqa: ANN001
    spec = KernelSpec.from_core(neurons.lif_hard, 1, 1, 1)
    api = _failed_build(spec, state="failed", log_tail=["last words"], **status)
    provider = RemoteProvider(KernelCacheClient("http://cache.test", local_dir=tmp_path, api=api))
    with warnings.catch_warnings():
        warnings.simplefilter("error", KernelCacheWarning)
        with pytest.raises(raised) as info:
            provider(spec, torch.device("cpu"))
    if raised is UnsupportedOpError:
        assert (info.value.op, info.value.line) == ("aten.sort.default", 5)
    if raised is BuildFailedError:
        assert info.value.build_id == "b1" and info.value.user_error and "last words" in str(info.value)


def test_a_build_that_failed_for_the_service_falls_back(tmp_path: Path) -> None:
    spec = KernelSpec.from_core(neurons.lif_hard, 1, 1, 1)
    api = _failed_build(spec, state="failed", log_tail=[], error_type="StoreError", user_error=False,
                        error="could not store the artifact")
    provider = RemoteProvider(KernelCacheClient("http://cache.test", local_dir=tmp_path, api=api))
    with pytest.warns(KernelCacheWarning, match="StoreError.*built its kernels locally"):
        assert provider(spec, torch.device("cpu")) is not None


def test_a_service_of_another_version_is_not_used(tmp_path: Path) -> None:
    spec = KernelSpec.from_core(neurons.lif_hard, 1, 1, 1)
    other = {"build_id": "b1", "key": "0" * 64, "state": "queued", "status_url": "/v1/builds/b1"}
    api = _mock({("POST", "/v1/kernels"): lambda r: httpx.Response(202, json=other)})
    client = KernelCacheClient("http://cache.test", local_dir=tmp_path, api=api)
    with pytest.raises(ArtifactError, match="another torch, Triton or codegen version"):
        client.get_or_build(spec)
    with pytest.warns(KernelCacheWarning, match="another torch"):
        assert RemoteProvider(client)(spec, torch.device("cpu")) is not None


def test_a_failing_service_is_skipped_for_a_while() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(503, json={"detail": "store unavailable"})

    api = ServiceAPI("http://cache.test", transport=httpx.MockTransport(handler), retries=1, unavailable_s=0.5)
    with pytest.raises(CacheUnavailableError, match="answered 503"):
        api.stats()
    assert len(calls) == 2
    with pytest.raises(CacheUnavailableError, match="skipped for another"):
        api.stats()
    assert len(calls) == 2  # no request while it is skipped
    time.sleep(0.6)
    with pytest.raises(CacheUnavailableError, match="answered 503"):
        api.stats()
    assert len(calls) == 4 and api.outages == 2
