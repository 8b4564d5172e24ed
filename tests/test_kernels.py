"""All four kernel kinds against plain PyTorch autograd, in Triton's interpreter.

Every model x dtype x T in {1, 4, 17} on an odd element count checks outputs,
final states, state sequences, and gradients of inputs, initial states and
static inputs, through both training paths (with and without stored state
sequences).
"""

from __future__ import annotations

import functools

import pytest
import torch
from neurons import MODELS, Model
from reference import assert_close, run_reference

from flexsn_core import KernelSpec
from flexsn_core.artifacts import build_artifacts, generate
from flexsn_core.runtime import (
    KernelSet,
    StaticArg,
    run_backward,
    run_forward,
    run_inference,
    run_inference_final,
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SHAPE = (3, 13)  # 39 neurons: odd, not a multiple of the block
N = 39


def _spec(model: Model, dtype: torch.dtype) -> KernelSpec:
    requires_grad = (True,) * (model.num_inputs + model.num_states) + (
        model.static_grad or (False,) * len(model.statics)
    )
    return KernelSpec.from_core(
        model.core,
        model.num_inputs,
        model.num_states,
        model.num_outputs,
        num_static=len(model.statics),
        dtype=dtype,
        requires_grad=requires_grad,
    )


@functools.lru_cache(maxsize=None)
def _kernel_set(name: str, dtype: torch.dtype) -> KernelSet:
    spec = _spec(MODELS[name], dtype)
    gen = generate(spec)
    manifest = build_artifacts(spec, targets=(), generated=gen).manifest
    return KernelSet(manifest, generated=gen)


def _flat(xs):
    return [x.reshape(x.shape[0], -1 if x.shape[0] else N).contiguous() for x in xs]


def _case(name: str, dtype: torch.dtype, T: int, seed: int = 0):
    model = MODELS[name]
    ks = _kernel_set(name, dtype)
    xs, inits, statics = model.make_inputs(T, SHAPE, dtype, seed=seed)
    prepared = [StaticArg.prepare(s, torch.Size(SHAPE), dtype) for s in statics]
    return model, ks, xs, inits, statics, prepared


def _unflat(ts):
    return [t.reshape(t.shape[0], *SHAPE) for t in ts]


@pytest.mark.parametrize("T", [1, 4, 17])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("name", sorted(MODELS))
def test_inference_kernels_match_pytorch(name: str, dtype: torch.dtype, T: int) -> None:
    model, ks, xs, inits, statics, prepared = _case(name, dtype, T)
    ref = run_reference(model.core, model.num_outputs, xs, inits, statics)
    flat_inits = [s.reshape(-1) for s in inits]

    outs, sseqs = run_inference(ks, _flat(xs), flat_inits, prepared)
    for i, (a, e) in enumerate(zip(_unflat(outs), ref["outs"])):
        assert_close(a, e, dtype, f"inference output {i}")
    for j, (a, e) in enumerate(zip(_unflat(sseqs), ref["sseqs"])):
        assert_close(a, e, dtype, f"inference state sequence {j}")

    outs, finals = run_inference_final(ks, _flat(xs), flat_inits, prepared)
    for i, (a, e) in enumerate(zip(_unflat(outs), ref["outs"])):
        assert_close(a, e, dtype, f"final-state output {i}")
    for j, (a, e) in enumerate(zip(finals, ref["finals"])):
        assert_close(a.reshape(SHAPE), e, dtype, f"final state {j}")


def _random_grads(model: Model, T: int, dtype: torch.dtype, with_seqs: bool):
    g = torch.Generator().manual_seed(1234)
    g_outs = [torch.randn((T, *SHAPE), generator=g).to(dtype) for _ in range(model.num_outputs)]
    g_seqs = [
        torch.randn((T, *SHAPE), generator=g).to(dtype) if with_seqs else None for _ in range(model.num_states)
    ]
    g_fins = [torch.randn(SHAPE, generator=g).to(dtype) for _ in range(model.num_states)]
    return g_outs, g_seqs, g_fins


@pytest.mark.parametrize("store_state_seqs", [True, False], ids=["state_seqs", "final_state"])
@pytest.mark.parametrize("T", [1, 4, 17])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("name", sorted(MODELS))
def test_training_kernels_match_autograd(name: str, dtype: torch.dtype, T: int, store_state_seqs: bool) -> None:
    model, ks, xs, inits, statics, prepared = _case(name, dtype, T, seed=7)
    assert ks.trainable
    g_outs, g_seqs, g_fins = _random_grads(model, T, dtype, store_state_seqs)
    ref = run_reference(model.core, model.num_outputs, xs, inits, statics, grads=(g_outs, g_seqs, g_fins))
    flat_inits = [s.reshape(-1) for s in inits]

    outs, sseqs, finals, extras = run_forward(ks, _flat(xs), flat_inits, prepared, store_state_seqs=store_state_seqs)
    for i, (a, e) in enumerate(zip(_unflat(outs), ref["outs"])):
        assert_close(a, e, dtype, f"training output {i}")
    if store_state_seqs:
        assert sseqs is not None
        for j, (a, e) in enumerate(zip(_unflat(sseqs), ref["sseqs"])):
            assert_close(a, e, dtype, f"training state sequence {j}")
    for j, (a, e) in enumerate(zip(finals, ref["finals"])):
        assert_close(a.reshape(SHAPE), e, dtype, f"training final state {j}")

    g_in, g_init, g_st = run_backward(
        ks,
        _flat(xs),
        flat_inits,
        prepared,
        outs,
        sseqs,
        extras,
        _flat(g_outs),
        [None if g is None else g.reshape(T, -1).contiguous() for g in g_seqs],
        [g.reshape(-1) for g in g_fins],
    )
    # Gradients flow back through up to T steps of rounding: allow a little more.
    scale = 4.0 if dtype != torch.float32 else 1.0
    for i, (a, e) in enumerate(zip(g_in, ref["grad_inputs"])):
        assert_close(a.reshape(T, *SHAPE), e, dtype, f"grad of input {i}", scale)
    for j, (a, e) in enumerate(zip(g_init, ref["grad_inits"])):
        assert_close(a.reshape(SHAPE), e, dtype, f"grad of initial state {j}", scale)
    for c, (a, e) in enumerate(zip(g_st, ref["grad_statics"])):
        if not model.static_grad[c]:
            assert a is None
            continue
        # Summed over T steps and (for a scalar) over all neurons.
        assert_close(a, e, dtype, f"grad of static input {c}", scale * 2)


def test_zero_initial_states_need_no_tensor() -> None:
    """A missing initial state is read as zeros inside the kernel (no zeros tensor)."""
    model, ks, xs, inits, statics, prepared = _case("alif", torch.float32, 5)
    zeros = [torch.zeros_like(s) for s in inits]
    ref = run_reference(model.core, model.num_outputs, xs, zeros, statics)
    outs, finals = run_inference_final(ks, _flat(xs), [None, None], prepared)
    assert_close(_unflat(outs)[0], ref["outs"][0], torch.float32, "output with implicit zero states")
    for j in range(2):
        assert_close(finals[j].reshape(SHAPE), ref["finals"][j], torch.float32, f"final state {j}")


def test_sequence_length_zero_launches_nothing() -> None:
    _, ks, xs, inits, _, _ = _case("lif_hard", torch.float32, 0)
    outs, finals = run_inference_final(ks, _flat(xs), [s.reshape(-1) for s in inits], [])
    assert outs[0].shape == (0, N)
    assert torch.equal(finals[0], inits[0].reshape(-1))


def test_one_binary_serves_every_length_and_size() -> None:
    """T and N are runtime arguments: the same kernel set handles new shapes."""
    ks = _kernel_set("lif_hard", torch.float32)
    model = MODELS["lif_hard"]
    for T, shape in [(2, (5,)), (9, (4, 33)), (3, (1,))]:
        xs, inits, _ = model.make_inputs(T, shape, torch.float32, seed=T)
        ref = run_reference(model.core, 1, xs, inits, [])
        outs, _ = run_inference(ks, _flat(xs), [s.reshape(-1) for s in inits], [])
        assert torch.equal(outs[0].reshape(T, *shape), ref["outs"][0])


def test_scalar_and_broadcast_static_inputs() -> None:
    """Statics may be scalars, per-neuron, or anything broadcastable (e.g. per channel)."""
    model = MODELS["plif"]
    ks = _kernel_set("plif", torch.float32)
    T = 6
    xs, inits, _ = model.make_inputs(T, SHAPE, torch.float32)
    for static in (torch.tensor(0.3), torch.randn(3, 1), torch.randn(13)):
        ref = run_reference(
            model.core, 1, xs, inits, [static],
            grads=([torch.ones(T, *SHAPE)], [None], [torch.ones(SHAPE)]),
        )
        prepared = [StaticArg.prepare(static, torch.Size(SHAPE), torch.float32)]
        outs, sseqs, finals, extras = run_forward(ks, _flat(xs), [inits[0].reshape(-1)], prepared)
        assert_close(_unflat(outs)[0], ref["outs"][0], torch.float32, f"output, static {tuple(static.shape)}")
        _, _, g_st = run_backward(
            ks, _flat(xs), [inits[0].reshape(-1)], prepared, outs, sseqs, extras,
            [torch.ones(T, N)], [None], [torch.ones(N)],
        )
        assert g_st[0].shape == static.shape
        assert_close(g_st[0], ref["grad_statics"][0], torch.float32, f"static grad {tuple(static.shape)}", 2.0)


def test_lif_backward_saves_one_tensor() -> None:
    """The save plan stores only the pre-reset membrane potential for LIF."""
    ks = _kernel_set("lif_hard", torch.float32)
    plan = ks.manifest["plan"]
    assert [v["kind"] for v in plan["loads"]] == ["extra"]
    assert plan["bytes_per_step"] == 8 and plan["held_bytes_per_step"] == 4
    assert not plan["needs_state_seqs"]
    # recompute mode: only the input, the membrane sequence rebuilt in a scratch buffer
    assert plan["recompute_inputs"] == [0] and plan["recompute_states"] == [0]


def test_non_differentiable_output_has_no_tangent() -> None:
    ks = _kernel_set("hard_spike", torch.float32)
    assert ks.differentiable_returns == (False, True)


def test_unaligned_calls_never_get_aligned_binaries() -> None:
    from flexsn_core.compile import KernelConfig
    from flexsn_core.runtime import _default_config_id, usable_configs

    configs = [KernelConfig(1024, 4, 1, True), KernelConfig(1024, 4, 1, False), KernelConfig(512, 4, 1, True)]
    assert [c.aligned for c in usable_configs(configs, aligned=False)] == [False]
    assert len(usable_configs(configs, aligned=True)) == 3
    assert _default_config_id(usable_configs(configs, False), False) == "b1024-w4-s1-u"
    assert _default_config_id(usable_configs(configs, True), True) == "b1024-w4-s1-a16"


def test_saved_dtypes_follow_the_rounding_rule() -> None:
    """bf16 steps run in fp32. What the backward recomputes a threshold from stays exact (fp32, or
    a saved boolean); a value used only smoothly is kept in bf16; rounded outputs or new states are
    never reloaded; fp16 extras stay fp32 (an fp32 intermediate may overflow fp16)."""

    def loads(name: str, dtype: torch.dtype) -> list[tuple[str, str]]:
        return [(v["kind"], v["dtype"]) for v in _kernel_set(name, dtype).manifest["plan"]["loads"]]

    assert loads("lif_hard", torch.float32) == [("extra", "float32")]
    # h in bf16 (sigmoid surrogate, reset multiplier) + the spike mask h >= th as one byte
    assert loads("lif_hard", torch.bfloat16) == [("extra", "bfloat16"), ("extra", "bool")]
    # relu(h) is an output whose backward compares it with 0: h stays exact
    assert loads("two_inputs", torch.bfloat16) == [("extra", "float32")]
    for name in sorted(MODELS):
        for dtype in (torch.float16, torch.bfloat16):
            plan = loads(name, dtype)
            assert all(kind not in ("output", "state_new") for kind, _ in plan), (name, dtype, plan)
            if dtype == torch.float16:
                assert all(dt in ("float32", "bool") for kind, dt in plan if kind == "extra"), (name, plan)


def _check_training(name: str, dtype: torch.dtype, T: int, *, recompute: bool, store_state_seqs: bool = False,
                    prefetch: bool = True, programs: int | None = None, block: int | None = None) -> None:
    """Forward + backward through the kernels vs autograd, giving the backward only what the mode keeps."""
    model, ks, xs, inits, statics, prepared = _case(name, dtype, T, seed=11)
    g_outs, g_seqs, g_fins = _random_grads(model, T, dtype, store_state_seqs)
    ref = run_reference(model.core, model.num_outputs, xs, inits, statics, grads=(g_outs, g_seqs, g_fins))
    flat_inits = [s.reshape(-1) for s in inits]
    ks.interpreter_prefetch, ks.interpreter_programs, ks.interpreter_block_size = prefetch, programs, block
    try:
        outs, sseqs, finals, extras = run_forward(
            ks, _flat(xs), flat_inits, prepared, store_state_seqs=store_state_seqs, recompute=recompute
        )
        plan = ks.plan
        if recompute:
            assert extras == []
            keep_x, keep_init = plan.recompute_inputs, plan.recompute_needs_init
            outs_kept, seqs_kept = [None] * len(outs), None
        else:
            keep_x, keep_init = plan.inputs, plan.needs_init
            outs_kept = [o if i in plan.outputs else None for i, o in enumerate(outs)]
            seqs_kept = [q if j in plan.state_seqs else None for j, q in enumerate(sseqs or [None] * len(inits))]
        g_in, g_init, g_st = run_backward(
            ks,
            [x if i in keep_x else None for i, x in enumerate(_flat(xs))],
            flat_inits if keep_init else [None] * len(inits),
            prepared,
            outs_kept,
            seqs_kept,
            extras,
            _flat(g_outs),
            [None if g is None else g.reshape(T, -1).contiguous() for g in g_seqs],
            [g.reshape(-1) for g in g_fins],
            recompute=recompute,
            shape=(T, N),
            device=torch.device("cpu"),
        )
    finally:
        ks.interpreter_prefetch, ks.interpreter_programs, ks.interpreter_block_size = True, None, None
    for i, (a, e) in enumerate(zip(_unflat(outs), ref["outs"])):
        assert_close(a, e, dtype, f"training output {i}")
    scale = 4.0 if dtype != torch.float32 else 1.0
    for i, (a, e) in enumerate(zip(g_in, ref["grad_inputs"])):
        assert_close(a.reshape(T, *SHAPE), e, dtype, f"grad of input {i}", scale)
    for j, (a, e) in enumerate(zip(g_init, ref["grad_inits"])):
        assert_close(a.reshape(SHAPE), e, dtype, f"grad of initial state {j}", scale)
    for c, (a, e) in enumerate(zip(g_st, ref["grad_statics"])):
        if model.static_grad[c]:
            assert_close(a, e, dtype, f"grad of static input {c}", scale * 2)


@pytest.mark.parametrize("T", [1, 6])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("name", sorted(MODELS))
def test_recompute_backward_matches_autograd(name: str, dtype: torch.dtype, T: int) -> None:
    """Recompute mode: the backward gets only the inputs and initial states, rebuilds the state
    sequences in a first pass (the first in the input gradient's buffer) and the saved values per step."""
    _check_training(name, dtype, T, recompute=True)


@pytest.mark.parametrize("recompute", [False, True], ids=["stored", "recompute"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("name", sorted(MODELS))
def test_without_prefetch_and_with_persistent_programs(name: str, dtype: torch.dtype, recompute: bool) -> None:
    """The PREFETCH=False variant, and fewer programs than blocks (grid-stride, as a persistent launch):
    the same results. 39 neurons in blocks of 16 are 3 blocks for 2 programs."""
    _check_training(name, dtype, 5, recompute=recompute, prefetch=False)
    _check_training(name, dtype, 5, recompute=recompute, store_state_seqs=True, programs=2, block=16)


class _AllocationSpy:
    """Stands in for ``torch`` inside flexsn_core.runtime.kinds: records the shape of every ``torch.empty``."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def __getattr__(self, name: str):
        return getattr(torch, name)

    def empty(self, *args, **kwargs) -> torch.Tensor:
        t = torch.empty(*args, **kwargs)
        self.shapes.append(tuple(t.shape))
        return t


MULTI_STATE = sorted(n for n in MODELS if len(_kernel_set(n, torch.float32).plan.recompute_states) > 1)


def test_some_models_regenerate_several_states() -> None:
    assert {"alif", "izhikevich"} <= set(MULTI_STATE)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("name", MULTI_STATE)
def test_recompute_scratch_of_further_states_is_a_fraction_of_a_sequence(name: str, dtype: torch.dtype,
                                                                          monkeypatch) -> None:
    """Issue #14: recompute mode regenerated every state after the first into a full ``[T, N]``
    buffer (ALIF under torch.compile peaked 0.54 GB above LIF on a conv net). Those states now
    go to ``[T, programs x BLOCK]`` scratch whose columns each program reuses block after block;
    here 39 neurons in blocks of 16 are 3 blocks for 2 programs: 32 columns, and program 0
    regenerates block 2 into the columns it used for block 0. Gradients stay exact."""
    from flexsn_core.runtime import kinds

    spy = _AllocationSpy()
    monkeypatch.setattr(kinds, "torch", spy)
    T = 5
    _check_training(name, dtype, T, recompute=True, programs=2, block=16)
    model = MODELS[name]
    full = [s for s in spy.shapes if s == (T, N)]
    assert len(full) == model.num_inputs, spy.shapes  # the input gradients (the first doubles as scratch)
    own = len(_kernel_set(name, dtype).plan.recompute_states) - 1
    assert spy.shapes.count((T, 32)) == own, spy.shapes
