"""The straight-through spike ``sg + (h - sg).detach()`` lowers to ``h`` (codegen/straight_through.py).

Same bits as the sum it replaces (NaN where it was NaN), and the sigmoid is gone
from the compiled forward kernels: no ``ex2`` left in their PTX, so 16-bit
inference is no longer issue-bound on it (issue #14).
"""

from __future__ import annotations

import neurons
import pytest
import torch

from flexsn_core import FlexSN
from flexsn_core.artifacts import generate
from flexsn_core.compile import _attrs, _signature, load_generated_module
from flexsn_core.spec import KernelSpec


def _ptx(spec: KernelSpec, kind: str) -> str:
    """The PTX of one generated kernel, cross-compiled for sm_90 (no GPU needed)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    gen = generate(spec)
    kdef = gen.kernels[kind]
    fn = JITFunction(getattr(load_generated_module(gen), kdef.name))
    src = ASTSource(fn=fn, signature=_signature(kdef), attrs=_attrs(kdef, True),
                    constexprs={"BLOCK": 1024, "INTERPRET": False, "PREFETCH": True})
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "enable_fp_fusion": False})
    return compiled.asm["ptx"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_forward_kernels_of_a_straight_through_core_compute_no_sigmoid(dtype: torch.dtype) -> None:
    spec = KernelSpec.from_core(neurons.lif_hard, 1, 1, 1, dtype=dtype)
    for kind in ("inference_final", "forward"):
        assert "ex2" not in _ptx(spec, kind), kind
    # the backward still needs the surrogate's slope
    assert "ex2" in _ptx(spec, "backward")


def test_a_sum_that_is_not_straight_through_keeps_its_sigmoid() -> None:
    def leaky_sigmoid(x, v):  # sg + (h - sg) without detach of a non-0/1 h: not the pattern
        h = v + x
        sg = torch.sigmoid(h)
        out = sg + (h * 0.5 - sg)
        return out, h * 0.9

    spec = KernelSpec.from_core(leaky_sigmoid, 1, 1, 1)
    assert "ex2" in _ptx(spec, "inference_final")


def test_the_matcher_sees_both_orders_through_detach() -> None:
    def swapped(x, v):
        h = v + x
        sg = torch.sigmoid(4.0 * (h - 1.0))
        spike = ((h - 1.0 >= 0).to(h.dtype) - sg).detach() + sg
        return spike, h * (1.0 - spike)

    assert "ex2" not in _ptx(KernelSpec.from_core(swapped, 1, 1, 1), "inference_final")


SPECIALS = torch.tensor([float("nan"), float("inf"), -float("inf"), 1.0, 0.999, 1e30, -1e30, 0.0, -0.0, 3e-39])


@pytest.mark.parametrize("core", [neurons.lif_hard, neurons.alif], ids=["lif_hard", "alif"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
def test_spikes_equal_the_sum_bit_for_bit_on_special_values(core, dtype: torch.dtype) -> None:  # noqa: ANN001
    """Inference and the training forward against PyTorch's own sg + (h - sg), NaN and infinities included."""
    num_states = 2 if core is neurons.alif else 1
    T = 3
    x = torch.cat([SPECIALS, torch.linspace(-3, 3, 22)]).to(dtype).expand(T, -1).contiguous()
    example = (torch.zeros(4, dtype=dtype),) * (1 + num_states)
    ours = FlexSN(core, 1, num_states, 1, example_inputs=example)
    ref = FlexSN(core, 1, num_states, 1, example_inputs=example, backend="torch")
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            xs = x.clone().requires_grad_(grad)
            ours.reset()
            ref.reset()
            got, want = ours(xs), ref(xs)
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
