"""Kernel providers by name: core never imports the client, nothing secret is pickled."""

from __future__ import annotations

import importlib.metadata
import io
import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import flexsn_client.provider as client_provider
import neurons
import pytest
import torch

from flexsn_core import FlexSN, counters, providers
from flexsn_core.module import KernelOwner
from flexsn_core.providers import ProviderNotFoundError

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "s3cret-token-" + "x" * 20


@pytest.fixture
def registry(monkeypatch):  # noqa: ANN001, ANN201
    """A private copy of the registry: what a test registers or hides does not leak."""
    monkeypatch.setattr(providers, "_registered", {})
    monkeypatch.setattr(providers, "_entry_points", None)
    monkeypatch.setattr(client_provider, "_providers", {})
    return providers


def _run(code: str) -> dict:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "TRITON_INTERPRET": "1"}
    script = f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r})\n" + textwrap.dedent(code)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_core_never_imports_the_client() -> None:
    result = _run(
        """
        import json, sys, torch, neurons
        from flexsn_core import FlexSN
        m = FlexSN(neurons.lif_hard, 1, 1, 1, backend="triton")
        m(torch.randn(3, 5))
        before = "flexsn_client" in sys.modules
        FlexSN(neurons.lif_hard, 1, 1, 1, backend="remote-cache", cache_url="http://127.0.0.1:9")._kernels.provider
        print(json.dumps({"before": before, "after": "flexsn_client" in sys.modules}))
        """
    )
    assert result == {"before": False, "after": True}  # loaded only when remote-cache is asked for


def test_remote_cache_comes_from_the_clients_entry_point(registry) -> None:  # noqa: ANN001
    (entry,) = [ep for ep in importlib.metadata.entry_points(group=providers.ENTRY_POINT_GROUP) if ep.name == "remote-cache"]
    assert entry.value == "flexsn_client.provider:remote_cache_provider"
    assert providers.provider_factory("remote-cache") is client_provider.remote_cache_provider
    assert providers.provider_names()[:2] == ("triton", "inductor") and "remote-cache" in providers.provider_names()


def test_the_remote_cache_provider_loads_no_http_stack_and_no_code_generation() -> None:
    """What a GPU node's local hit imports on top of FlexSN: neither httpx (a remote call loads it)
    nor tracing and code generation (a local build loads them): 0.2-0.3 s of a warm start."""
    result = _run(
        """
        import json, sys, torch
        from flexsn_core import FlexSN
        before = set(sys.modules)
        import flexsn_client.provider
        heavy = ("httpx", "rich", "flexsn_core.artifacts", "flexsn_core.ir", "flexsn_client.api")
        print(json.dumps(sorted(name for name in set(sys.modules) - before if name.startswith(heavy))))
        """
    )
    assert result == []


def test_remote_cache_is_found_without_listing_every_installed_package(registry, monkeypatch) -> None:  # noqa: ANN001
    """Listing the group reads every distribution's metadata (0.1 s of a warm start on a GPU node);
    the known provider is read from its own distribution."""

    def listing(**_: object) -> None:
        raise AssertionError("the whole entry point group was listed")

    monkeypatch.setattr(importlib.metadata, "entry_points", listing)
    assert providers.is_provider("remote-cache")
    assert providers.provider_factory("remote-cache") is client_provider.remote_cache_provider


def _remote_module(monkeypatch) -> FlexSN:  # noqa: ANN001
    # Without the interpreter nothing is built at construction, so no service is contacted.
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    return FlexSN(neurons.lif_hard, 1, 1, 1, backend="remote-cache", cache_url="http://cache.test:8000",
                  cache_token=TOKEN)


def test_no_token_in_a_pickled_or_saved_module(registry, monkeypatch) -> None:  # noqa: ANN001
    m = _remote_module(monkeypatch)
    assert m._kernels.provider.client.token == TOKEN  # the live module does use it
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), m)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    for data in (pickle.dumps(m), pickle.dumps(model), buffer.getvalue()):
        assert TOKEN.encode() not in data and b"s3cret" not in data
        assert b"http://cache.test:8000" in data  # the URL is no secret and is kept

    monkeypatch.setenv("FLEXSN_CACHE_TOKEN", "token-from-the-environment")
    restored = pickle.loads(pickle.dumps(m))
    assert restored.backend == "remote-cache" and restored.cache_url == "http://cache.test:8000"
    assert restored._kernels.provider.client.token == "token-from-the-environment"
    loaded = torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)
    assert loaded[1]._kernels.provider.client.url == "http://cache.test:8000"
    x = torch.randn(4, 3, 4) + 0.5
    with torch.no_grad():
        torch.testing.assert_close(restored(x), FlexSN(neurons.lif_hard, 1, 1, 1, backend="torch")(x))


def test_a_pickled_triton_module_rebuilds_its_kernels() -> None:
    m = FlexSN(neurons.lif_hard, 1, 1, 1)
    x = torch.randn(5, 6) + 0.5
    with torch.no_grad():
        expected = m(x)
        m.reset()
        restored = pickle.loads(pickle.dumps(m))
        traces = counters()["traces"]
        torch.testing.assert_close(restored(x), expected)
    assert counters()["traces"] == traces  # the process memo still has the kernels


def test_checkpoints_from_before_the_registry_still_load(registry, monkeypatch) -> None:  # noqa: ANN001
    owner = KernelOwner.__new__(KernelOwner)
    owner.__setstate__({"core": neurons.lif_hard, "counts": (1, 1, 1, 0), "requires_grad": None,
                        "remote": ("http://old.test", "old-token")})
    assert owner.backend == "remote-cache" and owner.cache_url == "http://old.test"
    assert owner.provider.client.token == "old-token"
    assert b"old-token" not in pickle.dumps(owner)  # and it is not written again


def test_a_missing_provider_says_what_to_install(registry, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(providers, "_entry_points", {})  # as on a machine without the client
    with pytest.raises(ProviderNotFoundError, match=r"not a supported backend.*pip install flexsn-cache") as info:
        FlexSN(neurons.lif_hard, 1, 1, 1, backend="remote-cache")
    assert isinstance(info.value, NotImplementedError)
    with pytest.raises(NotImplementedError, match="'cupy'.*check the name|cupy is not a supported backend"):
        FlexSN(neurons.lif_hard, 1, 1, 1, backend="cupy")
    broken = importlib.metadata.EntryPoint("remote-cache", "no_such_module_here:factory", providers.ENTRY_POINT_GROUP)
    monkeypatch.setattr(providers, "_entry_points", {"remote-cache": broken})
    with pytest.raises(ProviderNotFoundError, match="could not be imported.*pip install flexsn-cache"):
        providers.get_provider("remote-cache")


def test_a_registered_provider_is_a_backend(registry) -> None:  # noqa: ANN001
    asked = []

    def no_kernels(*, cache_url=None, cache_token=None):  # noqa: ANN001, ANN202
        def provide(spec, device):  # noqa: ANN001, ANN202
            asked.append((spec.entry, device.type, cache_url))
            return None  # nothing for this spec: the module runs the HOP path

        return provide

    providers.register_provider("nothing", no_kernels)
    with pytest.raises(ValueError, match="already registered"):
        providers.register_provider("nothing", lambda **kw: None)
    with pytest.raises(ValueError, match="built-in"):
        providers.register_provider("triton", no_kernels)
    m = FlexSN(neurons.lif_hard, 1, 1, 1, backend="nothing", cache_url="http://x.test")
    assert asked == [("lif_hard", "cpu", "http://x.test")] and "nothing" in m.supported_backends
    x = torch.randn(4, 3) + 0.5
    with torch.no_grad():
        torch.testing.assert_close(m(x), FlexSN(neurons.lif_hard, 1, 1, 1, backend="torch")(x))
    assert pickle.loads(pickle.dumps(m)).backend == "nothing"
