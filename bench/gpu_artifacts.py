"""GPU check: artifacts built in one process load and run in a fresh one, compiling nothing.

    python bench/gpu_artifacts.py                 # build here, then load in a fresh process
    python bench/gpu_artifacts.py --prebuilt DIR  # also load a store cross-compiled elsewhere

``build`` compiles every kind for this GPU's arch into a local store; ``load``
(a fresh interpreter) reads the manifests and binaries, launches all four
kinds on the GPU and compares them with a PyTorch autograd loop. It prints one
JSON line per (core, dtype) with the errors, the counters (``traces`` and
``compiles`` must be 0) and the time from reading the manifest to the first
finished launch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

CASES = [("lif_hard", "float32"), ("lif_hard", "bfloat16"), ("alif", "float32"), ("izhikevich", "float32"),
         ("plif", "float16"), ("two_inputs", "float32"), ("synaptic_refractory", "float32")]


def _spec(name: str, dtype: str):
    import torch
    from neurons import MODELS

    from flexsn_core import KernelSpec

    m = MODELS[name]
    rg = (True,) * (m.num_inputs + m.num_states) + (m.static_grad or (False,) * len(m.statics))
    return KernelSpec.from_core(m.core, m.num_inputs, m.num_states, m.num_outputs,
                                num_static=len(m.statics), dtype=getattr(torch, dtype), requires_grad=rg)


def build(store_dir: str, targets: list[str] | None) -> None:
    import torch

    from flexsn_core import build_artifacts, counters
    from flexsn_core.local import LocalStore

    store = LocalStore(store_dir)
    if not targets:
        major, minor = torch.cuda.get_device_capability()
        targets = [f"cuda:{major * 10 + minor}"]
    for name, dtype in CASES:
        t0 = time.perf_counter()
        artifact = build_artifacts(_spec(name, dtype), targets=targets)
        store.put(artifact)
        print(json.dumps({"step": "build", "core": name, "dtype": dtype, "targets": targets,
                          "binaries": len(artifact.manifest["binaries"]),
                          "seconds": round(time.perf_counter() - t0, 3)}), flush=True)
    print(json.dumps({"step": "build", "counters": counters()}), flush=True)


def _compare(a, e) -> dict:
    """Fraction of elements that differ at all, and the max error relative to max |ref|."""
    a, e = a.double(), e.double()
    scale = e.abs().max().item() or 1.0
    return {"differ": round(float((a != e).double().mean()), 6),
            "max_rel_err": float(f"{(a - e).abs().max().item() / scale:.3g}")}


def load(store_dir: str, label: str) -> None:
    import torch
    from neurons import MODELS
    from reference import run_reference

    from flexsn_core import counters
    from flexsn_core.local import LocalStore
    from flexsn_core.runtime import KernelSet, StaticArg, run_backward, run_forward, run_inference, run_inference_final

    store = LocalStore(store_dir)
    device = torch.device("cuda")
    torch.zeros(1, device=device)  # CUDA context, outside the timed region
    T, shape = 8, (1 << 20) + 3
    ok = True
    for name, dtype_name in CASES:
        dtype = getattr(torch, dtype_name)
        model = MODELS[name]
        spec = _spec(name, dtype_name)
        xs, inits, statics = model.make_inputs(T, (shape,), dtype, seed=3)
        xs = [x.to(device) for x in xs]
        inits = [s.to(device) for s in inits]
        statics = [s.to(device) for s in statics]
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        manifest = store.get_manifest(spec.key)
        assert manifest is not None, f"no manifest for {name}/{dtype_name}"
        ks = KernelSet(manifest, fetch=store.get_blob)
        prepared = [StaticArg.prepare(s, torch.Size((shape,)), dtype) for s in statics]
        outs, finals = run_inference_final(ks, xs, inits, prepared)
        torch.cuda.synchronize()
        first_launch_s = time.perf_counter() - t0

        g = torch.Generator(device="cpu").manual_seed(5)
        g_outs = [torch.randn(T, shape, generator=g).to(dtype).to(device) for _ in range(model.num_outputs)]
        g_fins = [torch.randn(shape, generator=g).to(dtype).to(device) for _ in range(model.num_states)]
        ref = run_reference(model.core, model.num_outputs, xs, inits, statics,
                            grads=(g_outs, [None] * model.num_states, g_fins))
        report = {"store": label, "core": name, "dtype": dtype_name, "T": T, "N": shape,
                  "first_launch_s": round(first_launch_s, 4)}
        report["final_out0"] = _compare(outs[0], ref["outs"][0])
        report["final_state0"] = _compare(finals[0], ref["finals"][0])
        o2, s2 = run_inference(ks, xs, inits, prepared)
        report["inf_out0"] = _compare(o2[0], ref["outs"][0])
        report["inf_sseq0"] = _compare(s2[0], ref["sseqs"][0])
        fo, fs, ff, fe = run_forward(ks, xs, inits, prepared, store_state_seqs=False)
        gi, gs, gst = run_backward(ks, xs, inits, prepared, fo, fs, fe, g_outs, [None] * model.num_states, g_fins)
        report["train_out0"] = _compare(fo[0], ref["outs"][0])
        report["grad_input0"] = _compare(gi[0], ref["grad_inputs"][0])
        report["grad_init0"] = _compare(gs[0], ref["grad_inits"][0])
        if gst:
            report["grad_static0"] = _compare(gst[0], ref["grad_statics"][0])
        torch.cuda.synchronize()
        report["counters"] = counters()
        ok &= report["counters"]["compiles"] == 0 and report["counters"]["traces"] == 0
        print(json.dumps(report), flush=True)
    print(json.dumps({"store": label, "launcher": os.environ.get("FLEXSN_LAUNCHER", "driver"),
                      "no_compiles_no_traces": ok}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("step", nargs="?", default="all", choices=["all", "build", "load"])
    parser.add_argument("--store")
    parser.add_argument("--label", default="gpu-built")
    parser.add_argument("--targets", nargs="*")
    parser.add_argument("--prebuilt", help="a store cross-compiled on another machine")
    args = parser.parse_args()
    if args.step == "build":
        build(args.store, args.targets)
    elif args.step == "load":
        load(args.store, args.label)
    else:
        store = args.store or tempfile.mkdtemp(prefix="flexsn-bench-store-")
        me = [sys.executable, __file__]
        subprocess.run([*me, "build", "--store", store], check=True)
        subprocess.run([*me, "load", "--store", store, "--label", "gpu-built"], check=True)
        env = dict(os.environ, FLEXSN_LAUNCHER="triton")
        subprocess.run([*me, "load", "--store", store, "--label", "gpu-built"], check=True, env=env)
        if args.prebuilt:
            subprocess.run([*me, "load", "--store", args.prebuilt, "--label", "cross-compiled"], check=True)


if __name__ == "__main__":
    main()
