"""Gradient error of the bf16 saved-value rule, against an fp64 loop (CPU, Triton's interpreter).

    TRITON_INTERPRET=1 python bench/saved_dtype_error.py [--T 8,32] [--n 4096] [--out FILE.jsonl]

For every neuron of ``tests/neurons.py`` whose bf16 save plan keeps an extra
value in bf16 (the rule of ``flexsn_core/codegen/partition.py``), runs the
training kernels twice on the same bf16 inputs and incoming gradients:

* ``fp32``    every extra kept in fp32 (``round_extras=False``: the old rule);
* ``rounded`` the plan as built (smooth-only extras in bf16, spike masks as bool),

and compares the input (and initial-state) gradients of both with a PyTorch
fp64 loop over the same core on the same (bf16-valued) inputs. Both bf16 runs
differ from fp64 by the bf16 rounding of the step's outputs and states; the
question is whether keeping extras in bf16 adds to that. Prints per neuron and
T the relative L2 error and the max abs error of each, and the relative L2
distance between the two bf16 runs. Writes JSON lines with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402
from neurons import MODELS, Model  # noqa: E402

from flexsn_core import KernelSpec  # noqa: E402
from flexsn_core.artifacts import build_artifacts  # noqa: E402
from flexsn_core.codegen.kernels import generate_kernels  # noqa: E402
from flexsn_core.runtime import KernelSet, StaticArg, run_backward, run_forward  # noqa: E402
from flexsn_core.trace import trace_core  # noqa: E402


def _spec(model: Model, dtype: torch.dtype) -> KernelSpec:
    req = (True,) * (model.num_inputs + model.num_states) + (model.static_grad or (False,) * len(model.statics))
    return KernelSpec.from_core(model.core, model.num_inputs, model.num_states, model.num_outputs,
                                num_static=len(model.statics), dtype=dtype, requires_grad=req)


def _kernels(spec: KernelSpec, round_extras: bool) -> KernelSet:
    gen = generate_kernels(trace_core(spec), round_extras=round_extras)
    return KernelSet(build_artifacts(spec, targets=(), generated=gen).manifest, generated=gen)


def _grads_kernels(ks: KernelSet, xs, inits, statics, g_outs, g_fins, shape):  # noqa: ANN001, ANN202
    T = xs[0].shape[0]
    flat = [x.reshape(T, -1).contiguous() for x in xs]
    flat_inits = [s.reshape(-1) for s in inits]
    prepared = [StaticArg.prepare(s, torch.Size(shape), ks.dtype) for s in statics]
    outs, sseqs, _, extras = run_forward(ks, flat, flat_inits, prepared, store_state_seqs=False)
    g_in, g_init, _ = run_backward(ks, flat, flat_inits, prepared, outs, sseqs, extras,
                                   [g.reshape(T, -1).contiguous() for g in g_outs], [None] * len(inits),
                                   [g.reshape(-1) for g in g_fins])
    return [g.double().reshape(-1) for g in (*g_in, *g_init) if g is not None]


def _grads_fp64(model: Model, xs, inits, statics, g_outs, g_fins):  # noqa: ANN001, ANN202
    xs = [x.double().requires_grad_() for x in xs]
    inits = [s.double().requires_grad_() for s in inits]
    statics = [s.double() for s in statics]
    states, terms = list(inits), []
    for t in range(xs[0].shape[0]):
        res = model.core(*[x[t] for x in xs], *states, *statics)
        res = (res,) if isinstance(res, torch.Tensor) else tuple(res)
        terms += [(res[i] * g_outs[i][t].double()).sum() for i in range(model.num_outputs)]
        states = list(res[model.num_outputs:])
    terms += [(s * g.double()).sum() for s, g in zip(states, g_fins)]
    grads = torch.autograd.grad(sum(terms), [*xs, *inits], allow_unused=True)
    return [torch.zeros_like(v).reshape(-1) if g is None else g.reshape(-1) for g, v in zip(grads, [*xs, *inits])]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--T", default="8,32")
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--neurons", default=",".join(sorted(MODELS)))
    ap.add_argument("--out")
    args = ap.parse_args()
    dtype, shape = torch.bfloat16, (args.n,)
    records = []
    print(f"{'neuron':22} {'T':>3} {'saved (rounded plan)':34} {'relL2 fp32':>11} {'relL2 rnd':>10} "
          f"{'max fp32':>9} {'max rnd':>9} {'rnd-vs-fp32':>11}")
    for name in args.neurons.split(","):
        model = MODELS[name]
        spec = _spec(model, dtype)
        rounded = _kernels(spec, True)
        loads = [(v["kind"], v["dtype"]) for v in rounded.manifest["plan"]["loads"]]
        if not any(kind == "extra" and dt == "bfloat16" for kind, dt in loads):
            continue  # the rule kept every extra exact: nothing to compare
        exact = _kernels(spec, False)
        for T in (int(t) for t in args.T.split(",")):
            xs, inits, statics = model.make_inputs(T, shape, dtype, seed=3)
            g = torch.Generator().manual_seed(5)
            g_outs = [torch.randn((T, *shape), generator=g).to(dtype) for _ in range(model.num_outputs)]
            g_fins = [torch.randn(shape, generator=g).to(dtype) for _ in range(model.num_states)]
            ref = torch.cat(_grads_fp64(model, xs, inits, statics, g_outs, g_fins))
            a = torch.cat(_grads_kernels(exact, xs, inits, statics, g_outs, g_fins, shape))
            b = torch.cat(_grads_kernels(rounded, xs, inits, statics, g_outs, g_fins, shape))
            rec = {"neuron": name, "T": T, "n": args.n, "loads": loads,
                   "rel_l2_fp32_saved": _rel(a, ref), "rel_l2_rounded": _rel(b, ref),
                   "max_abs_fp32_saved": float((a - ref).abs().max()), "max_abs_rounded": float((b - ref).abs().max()),
                   "rel_l2_rounded_vs_fp32": _rel(b, a)}
            records.append(rec)
            print(f"{name:22} {T:>3} {str(loads):34} {rec['rel_l2_fp32_saved']:>11.3e} {rec['rel_l2_rounded']:>10.3e} "
                  f"{rec['max_abs_fp32_saved']:>9.3e} {rec['max_abs_rounded']:>9.3e} {rec['rel_l2_rounded_vs_fp32']:>11.3e}",
                  flush=True)
    if args.out:
        Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in records))


if __name__ == "__main__":
    main()
