"""Plain PyTorch references (a Python loop under autograd) and comparison helpers."""

from __future__ import annotations

import torch


def _fp32_step(core):
    """The step semantics of fp16/bf16 kernels: compute in fp32, store in the dtype."""

    def step(*args):
        dtype = args[0].dtype
        res = core(*(a.float() for a in args))
        res = (res,) if isinstance(res, torch.Tensor) else tuple(res)
        return tuple(r.to(dtype) for r in res)

    return step


def run_reference(core, num_outputs, xs, inits, statics, grads=None):
    """Loop ``core`` over time with autograd.

    Returns outputs, state sequences and final states; with ``grads`` =
    (grad_outs, grad_sseqs, grad_finals) also the gradients of inputs, initial
    states and statics (None entries in grads are skipped). For fp16/bf16 each
    step computes in fp32 and rounds what it returns, as the kernels do.
    """
    if xs[0].dtype in (torch.float16, torch.bfloat16):
        core = _fp32_step(core)
    xs = [x.detach().clone().requires_grad_(True) for x in xs]
    inits = [s.detach().clone().requires_grad_(True) for s in inits]
    statics = [s.detach().clone().requires_grad_(True) for s in statics]
    T = xs[0].shape[0]
    states = list(inits)
    outs = [[] for _ in range(num_outputs)]
    seqs = [[] for _ in range(len(inits))]
    with torch.enable_grad():
        for t in range(T):
            res = core(*[x[t] for x in xs], *states, *statics)
            res = (res,) if isinstance(res, torch.Tensor) else tuple(res)
            for i in range(num_outputs):
                outs[i].append(res[i])
            states = list(res[num_outputs:])
            for j, s in enumerate(states):
                seqs[j].append(s)
        out_seqs = [torch.stack(o) for o in outs]
        state_seqs = [torch.stack(s) for s in seqs]
        result = {
            "outs": [o.detach() for o in out_seqs],
            "sseqs": [s.detach() for s in state_seqs],
            "finals": [s.detach() for s in states],
        }
        if grads is not None:
            g_outs, g_sseqs, g_fins = grads
            terms = []
            for value, g in [*zip(out_seqs, g_outs), *zip(state_seqs, g_sseqs), *zip(states, g_fins)]:
                if g is not None and value.requires_grad:
                    terms.append((value.float() * g.float()).sum())
            leaves = [*xs, *inits, *statics]
            if terms:
                got = torch.autograd.grad(sum(terms), leaves, allow_unused=True)
            else:
                got = [None] * len(leaves)
            got = [torch.zeros_like(l) if g is None else g for g, l in zip(got, leaves)]
            n_in, n_st = len(xs), len(inits)
            result["grad_inputs"] = got[:n_in]
            result["grad_inits"] = got[n_in : n_in + n_st]
            result["grad_statics"] = got[n_in + n_st :]
    return result


TOLERANCES = {
    torch.float32: (1e-5, 1e-4),
    torch.float16: (2e-3, 1e-2),
    torch.bfloat16: (1e-2, 4e-2),
}


def assert_close(actual, expected, dtype, what, scale=1.0):
    """|actual - expected| <= atol + rtol * max|expected|, elementwise max."""
    atol, rtol = TOLERANCES[dtype]
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    a, e = actual.double(), expected.double()
    bound = (atol + rtol * e.abs().max().item()) * scale
    err = (a - e).abs().max().item() if a.numel() else 0.0
    assert err <= bound, f"{what}: max error {err:.3g} > {bound:.3g} (max |ref| {e.abs().max().item():.3g})"
