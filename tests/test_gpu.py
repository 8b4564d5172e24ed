"""Checks that need a CUDA GPU (skipped elsewhere; run on the GPU machine with `pytest -m gpu`)."""

from __future__ import annotations

import neurons
import pytest
import torch
from reference import run_reference

from flexsn_core import FlexSN, counters

pytestmark = pytest.mark.gpu

CASES = [
    (neurons.lif_hard, 1, 1, 1),
    (neurons.alif, 1, 2, 1),
    (neurons.two_inputs, 2, 1, 2),
    (neurons.synaptic_refractory, 1, 3, 1),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0].__name__)
def test_flexsn_on_cuda_matches_torch(case, dtype) -> None:  # noqa: ANN001
    core, ni, ns, no = case
    examples = tuple(torch.zeros(5, device="cuda", dtype=dtype) for _ in range(ni + ns))
    fast = FlexSN(core, ni, ns, no, example_inputs=examples)
    xs = [(torch.randn(8, 1000, 33, device="cuda") + 0.5).to(dtype) for _ in range(ni)]
    inits = [torch.zeros(1000, 33, device="cuda", dtype=dtype) for _ in range(ns)]
    g_outs = [torch.ones(8, 1000, 33, device="cuda", dtype=dtype) for _ in range(no)]
    # The plain PyTorch loop (for bf16: each step in fp32, stored in bf16, as the kernels do).
    ref = run_reference(core, no, xs, inits, [], grads=(g_outs, [None] * ns, [None] * ns))
    xg = [x.clone().requires_grad_() for x in xs]
    ys = fast(*xg)
    ys = [ys] if isinstance(ys, torch.Tensor) else list(ys)
    for a, b in zip(ys, ref["outs"]):
        assert (a.detach() != b).float().mean() < 1e-4  # spikes may flip on ulp-level ties
    got = torch.autograd.grad([y for y in ys], xg, g_outs)
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    for a, b in zip(got, ref["grad_inputs"]):
        off = (a.float() - b.float()).abs() > tol * b.float().abs().max()
        # A spike that flips on an ulp-level tie (exp and the sigmoid's reciprocal are
        # approximate on the GPU) changes that neuron's gradient path: allow a handful.
        assert off.float().mean() < 1e-3, f"{off.float().mean().item():.2e} of gradients differ"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", [CASES[1], CASES[3]], ids=lambda c: c[0].__name__)
def test_recompute_backward_with_width_capped_scratch_matches_stored(case, dtype, monkeypatch) -> None:  # noqa: ANN001
    """Several states regenerated on a layer wider than the scratch (SMs x 16384 columns): each
    program walks several blocks and reuses its scratch columns. The gradients equal the stored
    mode's (the recompute forward is the forward that ran); a wrongly placed column would not."""
    core, ni, ns, no = case
    sm = torch.cuda.get_device_properties(0).multi_processor_count
    n = sm * 16384 * 2 + 333  # more than twice the scratch width, not a multiple of any block
    examples = tuple(torch.zeros(5, device="cuda", dtype=dtype) for _ in range(ni + ns))
    xs = [(torch.randn(4, n, device="cuda") + 0.5).to(dtype) for _ in range(ni)]
    grads = {}
    for mode in ("stored", "recompute"):
        monkeypatch.setenv("FLEXSN_BACKWARD", mode)
        fast = FlexSN(core, ni, ns, no, example_inputs=examples)
        xg = [x.clone().requires_grad_() for x in xs]
        ys = fast(*xg)
        ys = [ys] if isinstance(ys, torch.Tensor) else list(ys)
        grads[mode] = torch.autograd.grad(ys, xg, [torch.ones_like(y) for y in ys])
    # fp32: the same values; bf16: stored mode keeps some values rounded to bf16 (about one ulp)
    tol = {} if dtype == torch.float32 else {"rtol": 1.6e-2, "atol": 1.6e-2}
    for a, b in zip(grads["recompute"], grads["stored"]):
        torch.testing.assert_close(a.float(), b.float(), **tol)


def test_second_module_with_same_core_builds_nothing() -> None:
    FlexSN(neurons.lif_soft, 1, 1, 1, example_inputs=(torch.zeros(4, device="cuda"),) * 2)
    before = counters()
    FlexSN(neurons.lif_soft, 1, 1, 1, example_inputs=(torch.zeros(4, device="cuda"),) * 2)
    after = counters()
    assert after["traces"] == before["traces"] and after["compiles"] == before["compiles"]


TWO_GPUS = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")


@pytest.fixture(scope="module")
def service(tmp_path_factory):  # noqa: ANN001, ANN201
    """A live cache service (cross-compiling, as on a CPU host) for the remote-cache cases."""
    from live_server import live_server

    with live_server(tmp_path_factory.mktemp("gpu-service")) as server:
        yield server


@TWO_GPUS
@pytest.mark.parametrize("launcher", ["driver", "triton"])
@pytest.mark.parametrize("backend", ["triton", "remote-cache"])
@pytest.mark.parametrize("name", ["lif_hard", "plif"])
def test_kernels_run_on_the_tensors_device_not_the_current_one(
    name, backend, launcher, monkeypatch, tmp_path, request  # noqa: ANN001
) -> None:
    """Issue #11: cuda:0 current, tensors on cuda:1 (the ctypes launcher used device 0's context).

    Outputs, input gradients and (plif) parameter gradients equal to backend="torch", for locally built
    kernels and for kernels from a live service, through both launchers.
    """
    import flexsn_client.cache as cache_module
    import flexsn_client.provider as provider_module

    from flexsn_core.local import clear_memo

    monkeypatch.setenv("FLEXSN_LAUNCHER", launcher)
    monkeypatch.setenv("FLEXSN_CACHE_DIR", str(tmp_path / "cache"))  # nothing local: build or fetch now
    clear_memo()  # fresh kernel sets: load through this launcher
    monkeypatch.setattr(provider_module, "_providers", {})
    monkeypatch.setattr(cache_module, "_pools", {})
    kw = {"backend": backend}
    if backend == "remote-cache":
        kw["cache_url"] = request.getfixturevalue("service").url
    model = neurons.MODELS[name]
    args = (model.core, model.num_inputs, model.num_states, model.num_outputs)
    weight = torch.randn(1000, 37, device="cuda:1") * 0.5 if model.statics else None

    def statics() -> tuple:
        return (torch.nn.Parameter(weight.clone()),) if weight is not None else ()

    x = torch.randn(8, 1000, 37, device="cuda:1") + 0.5
    with torch.cuda.device(0):
        examples = (torch.zeros(1000, 37, device="cuda:1"),) * 2
        fast = FlexSN(*args, example_inputs=examples, static_inputs=statics(), **kw)
        slow = FlexSN(*args, backend="torch", static_inputs=statics()).to("cuda:1")
        for _ in range(2):  # a second call runs the cached choice
            fast.reset(), slow.reset()
            fast.zero_grad(), slow.zero_grad()
            xg = x.clone().requires_grad_()
            y = fast(xg)
            (y.sum() + fast.states[0].square().sum()).backward()
            assert y.device == torch.device("cuda:1") and torch.cuda.current_device() == 0
            xr = x.clone().requires_grad_()
            ref = slow(xr)
            (ref.sum() + slow.states[0].square().sum()).backward()
            assert (y.detach() != ref.detach()).float().mean() < 1e-4
            grads = [(xg.grad, xr.grad)] + [(a.grad, b.grad) for a, b in zip(fast.parameters(), slow.parameters())]
            for got, want in grads:
                off = (got - want).abs() > 1e-5 * want.abs().max()
                assert off.float().mean() < 1e-3  # a spike may flip on an ulp-level tie
        torch.cuda.synchronize(1)
    if backend == "remote-cache":
        assert counters()["compiles"] == 0  # the service built them; this process only loaded cubins
