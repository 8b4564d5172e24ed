"""Surrogate gradients on every backend, and SpikingJelly-style cores through the service (issue #13).

Each surrogate's gradient must equal its formula (fp32, 1e-6) whichever
backend runs the core: ``torch``, ``hop``, ``triton`` (Triton's interpreter
here) and ``remote-cache`` (a live service builds the kernels from the spec's
source text plus its surrogates, carried as data).
"""

from __future__ import annotations

import pytest
import surrogate_cores as sc
import torch
from live_server import Server, live_server

import flexsn_client.cache as cache_module
import flexsn_client.provider as provider_module
from flexsn_core import FlexSN, KernelSpec, counters, surrogate

# Both sides of every formula's corners, zero (and minus zero), and far tails.
POINTS = torch.tensor(
    [-5.0, -1.3, -1.0, -0.71, -0.5, -0.3, -1e-7, -0.0, 0.0, 1e-7, 0.3, 0.5, 0.69, 1.0, 1.2, 2.0, 7.5]
)
N = len(sc.KINDS)


def _check_every_surrogate(m: FlexSN) -> None:
    """Input i of ``every_surrogate`` goes through surrogate i: spikes exact, gradients the formulas."""
    xs = [POINTS.repeat(3, 1).clone().requires_grad_() for _ in range(N)]  # T = 3 steps of the points
    ys = m(*xs)
    upstream = torch.linspace(0.5, 2.0, len(POINTS)).repeat(3, 1)
    torch.autograd.backward(ys, [upstream] * N)
    for kind, x, y in zip(sc.KINDS, xs, ys):
        assert torch.equal(y.detach(), (x.detach() >= 0).float()), kind
        expected = sc.formula(kind, POINTS).repeat(3, 1) * upstream.double()
        torch.testing.assert_close(x.grad.double(), expected, atol=1e-6, rtol=1e-6, msg=kind)


@pytest.mark.parametrize("backend", ["torch", "hop", "triton"])
def test_every_surrogate_gradient_is_the_formula_on_each_backend(backend: str) -> None:
    _check_every_surrogate(FlexSN(sc.every_surrogate, N, 0, N, backend=backend))


# ------------------------------------------------------------------ the service
@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Server:  # noqa: ANN001
    with live_server(tmp_path_factory.mktemp("surrogate-service")) as s:
        yield s


@pytest.fixture(autouse=True)
def fresh_client(tmp_path, monkeypatch):  # noqa: ANN001, ANN201
    """Each test its own mirror and providers: every build goes to the service."""
    monkeypatch.setenv("FLEXSN_CACHE_DIR", str(tmp_path / "mirror"))
    monkeypatch.setattr(provider_module, "_providers", {})
    monkeypatch.setattr(cache_module, "_pools", {})


def test_every_surrogate_gradient_is_the_formula_through_the_service(server: Server) -> None:
    assert KernelSpec.from_core(sc.every_surrogate, N, 0, N).surrogates  # the spec carries them as data
    m = FlexSN(sc.every_surrogate, N, 0, N, backend="remote-cache", cache_url=server.url)
    _check_every_surrogate(m)
    assert counters()["compiles"] == 0  # built by the service, not here


SJ_STYLE = {
    # the tutorial's complicated LIF: ATan captured in a closure, 2 inputs, 2 outputs, 2 states
    "complicated_lif": (sc.complicated_lif_core_generator(0.5, 0.8), 2, 2, 2),
    # a SpikingJelly Sigmoid(alpha=4.0) instance captured as a global
    "sj_instance": (sc.sj_lif, 1, 1, 1),
    # a helper function, a module constant, surrogates called inline (module, classes)
    "helper": (sc.helper_core, 1, 1, 1),
}


@pytest.mark.parametrize("name", list(SJ_STYLE))
def test_spikingjelly_style_cores_build_through_the_service_and_match_torch(server: Server, name: str) -> None:
    core, ni, ns, no = SJ_STYLE[name]
    remote = FlexSN(core, ni, ns, no, backend="remote-cache", cache_url=server.url)
    local = FlexSN(core, ni, ns, no, backend="torch")
    torch.manual_seed(0)
    xs = [torch.randn(5, 2, 7) + 0.6 for _ in range(ni)]
    results = []
    for m in (remote, local):
        args = [x.clone().requires_grad_() for x in xs]
        out = m(*args)
        out = out if isinstance(out, (tuple, list)) else (out,)  # several outputs: a list, as in SpikingJelly
        loss = sum((o * torch.arange(o.numel()).reshape(o.shape)).sum() for o in out)
        (loss + sum(s.square().sum() for s in m.states)).backward()
        results.append(([o.detach() for o in out], [a.grad for a in args]))
    assert counters()["compiles"] == 0  # built by the service, not here
    (out_r, grad_r), (out_l, grad_l) = results
    for a, b in zip(out_r, out_l):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    for a, b in zip(grad_r, grad_l):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_a_spec_with_surrogates_round_trips_through_json() -> None:
    spec = KernelSpec.from_core(sc.complicated_lif_core_generator(0.5, 0.8), 2, 2, 2)
    again = KernelSpec.from_dict(spec.to_dict())
    assert again == spec and again.key == spec.key
    core = again.load_core()
    x = torch.randn(2, 4)
    torch.testing.assert_close(core(x, x, x, x), spec.load_core()(x, x, x, x))
    assert {ref.kind for ref in spec.surrogates} == {"ATan"} and surrogate.ATan().params == {"alpha": 2.0}
