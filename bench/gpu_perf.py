"""GPU performance, side by side with the peer, in one run.

    python bench/gpu_perf.py [--out DIR] [--skip-warm-start]

The same LIF core (hard reset, sigmoid straight-through surrogate, tau=2,
threshold 1, alpha 4) runs as:

* ``ours``      FlexSN(backend="triton") of this project;
* ``peer``      SpikingJelly 2.0's FlexSN(backend="triton");
* ``lifnode``   SpikingJelly 2.0's hand-written LIFNode(step_mode="m");
* ``eager``     a PyTorch loop over time;
* ``compiled``  the same loop under torch.compile.

Figures (all times are per call, back to back, CUDA events, after warm-up):

* G1 warm start: fresh processes, construction -> first training step done
  (T=8, 2^20, fp32): ours via the cache service (new node and seen node) vs the
  peer with a warm local Triton cache;
* G2 inference bandwidth: T in {8, 32}, N in {2^22, 2^24}, fp32 and bf16: bytes
  read + written / time, as a fraction of the measured device copy bandwidth;
* G3 training step (forward + backward), T=8, 2^24, fp32;
* G4 small call: T=8, 2^20 inference.

Writes JSON lines (one per measurement, then a summary with the target keys)
to ``bench/results/<date>-gpu_perf-<device>.jsonl`` (or ``--out``), and a plot.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

TAU, V_TH, ALPHA = 2.0, 1.0, 4.0
RESULTS: list[dict] = []


def emit(record: dict) -> None:
    RESULTS.append(record)
    print(json.dumps(record), flush=True)


def cuda_time(fn, iters: int = 30, warmup: int = 5) -> float:  # noqa: ANN001
    """Mean milliseconds per call of ``fn`` run back to back."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / iters


def copy_bandwidth() -> float:
    """Device copy bandwidth (bytes read + written per second)."""
    import torch

    src = torch.empty(1 << 28, device="cuda")  # 1 GiB
    dst = torch.empty_like(src)
    ms = cuda_time(lambda: dst.copy_(src), iters=20)
    return 2 * src.numel() * 4 / (ms / 1e3)


# --------------------------------------------------------------------- models
def make_models(dtype):  # noqa: ANN001, ANN201
    import torch
    from neurons import lif_hard

    from flexsn_core import FlexSN

    models = {}
    example = (torch.zeros(4, device="cuda", dtype=dtype),) * 2
    models["ours"] = FlexSN(lif_hard, 1, 1, 1, example_inputs=example, backend="triton")

    def loop(x_seq, v):  # noqa: ANN001, ANN202
        spikes = []
        for t in range(x_seq.shape[0]):
            s, v = lif_hard(x_seq[t], v)
            spikes.append(s)
        return torch.stack(spikes), v

    def eager(x):  # noqa: ANN001, ANN202
        return loop(x, torch.zeros_like(x[0]))[0]

    compiled_loop = torch.compile(loop)

    def compiled(x):  # noqa: ANN001, ANN202
        return compiled_loop(x, torch.zeros_like(x[0]))[0]

    models["eager"] = eager
    models["compiled"] = compiled
    try:
        from spikingjelly.activation_based import neuron, surrogate

        models["peer"] = make_peer_flexsn(neuron, lif_hard, example)
        models["lifnode"] = neuron.LIFNode(
            tau=TAU, v_threshold=V_TH, v_reset=0.0, surrogate_function=surrogate.Sigmoid(alpha=ALPHA),
            detach_reset=False, step_mode="m",
        ).to("cuda")
    except Exception as exc:  # noqa: BLE001 - the table then lacks the peer rows
        emit({"error": f"peer unavailable: {type(exc).__name__}: {exc}"})
    return models


def make_peer_flexsn(neuron, core, example):  # noqa: ANN001, ANN201
    """SpikingJelly 2.0's FlexSN (its 2.0.0 API infers input/output counts; older ones take them)."""
    try:
        return neuron.FlexSN(core, num_states=1, step_mode="m")
    except TypeError:
        return neuron.FlexSN(core, 1, 1, 1, example_inputs=example, step_mode="m", backend="triton")


def call(model, x):  # noqa: ANN001, ANN201
    """One multi-step call from fresh (zero) states."""
    if hasattr(model, "reset"):
        model.reset()
    y = model(x)
    return y[0] if isinstance(y, (tuple, list)) else y


def inference_grid(models_by_dtype, copy_bw: float) -> None:  # noqa: ANN001
    import torch

    for dtype_name, models in models_by_dtype.items():
        dtype = getattr(torch, dtype_name)
        size = torch.empty((), dtype=dtype).element_size()
        for T in (8, 32):
            for n in (1 << 22, 1 << 24):
                x = torch.randn(T, n, device="cuda").to(dtype) + 0.5
                moved = (2 * T * n + n) * size  # read x, write spikes; write the final state
                for name, model in models.items():
                    if name == "compiled" and (T, n) != (8, 1 << 22):
                        continue  # one point is enough for the slow baselines
                    if name == "eager" and n != 1 << 22:
                        continue
                    try:
                        with torch.no_grad():
                            ms = cuda_time(lambda m=model: call(m, x), iters=20)
                    except Exception as exc:  # noqa: BLE001
                        emit({"figure": "G2", "impl": name, "error": f"{type(exc).__name__}: {exc}"[:300]})
                        continue
                    emit({"figure": "G2", "impl": name, "dtype": dtype_name, "T": T, "N": n, "ms": round(ms, 4),
                          "bw_fraction": round(moved / (ms / 1e3) / copy_bw, 4)})
                del x
                torch.cuda.empty_cache()


def training_step(models, T: int = 8, n: int = 1 << 24) -> None:  # noqa: ANN001
    import torch

    x = torch.randn(T, n, device="cuda") + 0.5
    g = torch.randn(T, n, device="cuda")
    for name, model in models.items():
        xg = x.clone().requires_grad_()

        def step(m=model) -> None:  # noqa: ANN001
            xg.grad = None
            call(m, xg).backward(g)

        try:
            ms = cuda_time(step, iters=15)
        except Exception as exc:  # noqa: BLE001
            emit({"figure": "G3", "impl": name, "error": f"{type(exc).__name__}: {exc}"[:300]})
            continue
        emit({"figure": "G3", "impl": name, "dtype": "float32", "T": T, "N": n, "ms": round(ms, 4)})


def small_call(models, T: int = 8, n: int = 1 << 20) -> None:  # noqa: ANN001
    import torch

    x = torch.randn(T, n, device="cuda") + 0.5
    for name, model in models.items():
        with torch.no_grad():
            ms = cuda_time(lambda m=model: call(m, x), iters=200, warmup=20)
        emit({"figure": "G4", "impl": name, "dtype": "float32", "T": T, "N": n, "ms": round(ms, 4)})


# ----------------------------------------------------------------- warm start
_PEER_CHILD = """
import json, sys, time
sys.path.insert(0, {tests!r})
import torch, neurons
from spikingjelly.activation_based import neuron
x = torch.randn(8, 1 << 20, device="cuda") + 0.5
torch.cuda.synchronize()
xg = x.requires_grad_()
t0 = time.perf_counter()
try:
    m = neuron.FlexSN(neurons.lif_hard, num_states=1, step_mode="m")
except TypeError:
    m = neuron.FlexSN(neurons.lif_hard, 1, 1, 1, example_inputs=(x[0], x[0]), step_mode="m", backend="triton")
m(xg).sum().backward()
torch.cuda.synchronize()
print(json.dumps({{"construct_to_first_step_s": round(time.perf_counter() - t0, 4)}}))
"""


def peer_warm_start() -> None:
    cache = tempfile.mkdtemp(prefix="peer-triton-")
    env = dict(os.environ, TRITON_CACHE_DIR=cache)
    script = _PEER_CHILD.format(tests=str(ROOT / "tests"))
    for label in ("empty Triton cache", "warm Triton cache"):
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
        if out.returncode:
            emit({"figure": "G1", "impl": "peer", "run": label, "error": out.stderr[-500:]})
            return
        emit({"figure": "G1", "impl": "peer", "run": label, **json.loads(out.stdout.strip().splitlines()[-1])})


def our_warm_start() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_warm_start.py")], capture_output=True, text=True)
    if out.returncode:
        emit({"figure": "G1", "impl": "ours", "error": out.stderr[-800:]})
        return
    for line in out.stdout.strip().splitlines():
        record = json.loads(line)
        if "run" in record:
            emit({"figure": "G1", "impl": "ours", **record})


# ----------------------------------------------------------------- summary
def _pick(figure: str, impl: str, **where) -> list[dict]:  # noqa: ANN003
    return [r for r in RESULTS if r.get("figure") == figure and r.get("impl") == impl and "error" not in r
            and all(r.get(k) == v for k, v in where.items())]


def summary(device: dict) -> dict:
    ours_g1 = _pick("G1", "ours")
    peer_g1 = _pick("G1", "peer", run="warm Triton cache")
    ours_worst = max((r["construct_to_first_step_s"] for r in ours_g1), default=None)
    g2 = _pick("G2", "ours")
    g3_ours, g3_lif = _pick("G3", "ours"), _pick("G3", "lifnode")
    g4_ours, g4_comp = _pick("G4", "ours"), _pick("G4", "compiled")
    result = {
        "summary": True, **device,
        "warm_start_speedup_vs_peer": (
            round(peer_g1[0]["construct_to_first_step_s"] / ours_worst, 1) if peer_g1 and ours_worst else None
        ),
        "warm_start_s": {r["run"]: r["construct_to_first_step_s"] for r in ours_g1},
        "warm_start_counters": {r["run"]: {k: r["counters"][k] for k in ("traces", "compiles")} for r in ours_g1},
        "inference_bw_fraction": min((r["bw_fraction"] for r in g2), default=None),
        "train_time_vs_lifnode": round(g3_ours[0]["ms"] / g3_lif[0]["ms"], 3) if g3_ours and g3_lif else None,
        "small_call_time_vs_compile": round(g4_ours[0]["ms"] / g4_comp[0]["ms"], 3) if g4_ours and g4_comp else None,
    }
    emit(result)
    return result


def plot(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    impls = ["ours", "peer", "lifnode", "compiled", "eager"]
    colors = {"ours": "#1f77b4", "peer": "#ff7f0e", "lifnode": "#2ca02c", "compiled": "#9467bd", "eager": "#8c564b"}
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = [
        ("G2", {"dtype": "float32", "T": 8, "N": 1 << 24}, "inference, T=8, 2^24, fp32 (ms)"),
        ("G3", {}, "training step, T=8, 2^24, fp32 (ms)"),
        ("G4", {}, "small call, T=8, 2^20 inference (ms)"),
    ]
    for ax, (figure, where, title) in zip(axes, panels):
        names, values = [], []
        for impl in impls:
            rows = _pick(figure, impl, **where)
            if rows:
                names.append(impl)
                values.append(rows[0]["ms"])
        ax.barh(names, values, color=[colors[n] for n in names])
        ax.set_title(title, fontsize=10)
        ax.invert_yaxis()
        for i, v in enumerate(values):
            ax.text(v, i, f" {v:.3g}", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--skip-warm-start", action="store_true")
    args = parser.parse_args()
    import torch
    import triton

    props = torch.cuda.get_device_properties(0)
    device = {"device": props.name, "torch": torch.__version__, "triton": triton.__version__,
              "date": datetime.date.today().isoformat()}
    bw = copy_bandwidth()
    emit({"figure": "copy_bandwidth", **device, "bytes_per_s": round(bw), "TB_per_s": round(bw / 1e12, 3)})
    try:
        models = {d: make_models(getattr(torch, d)) for d in ("float32", "bfloat16")}
        inference_grid(models, bw)
        training_step(models["float32"])
        small_call(models["float32"])
    except Exception:  # noqa: BLE001 - keep what was measured
        emit({"error": traceback.format_exc()[-1500:]})
    if not args.skip_warm_start:
        for fn in (peer_warm_start, our_warm_start):
            try:
                fn()
            except Exception:  # noqa: BLE001
                emit({"error": traceback.format_exc()[-800:]})
    summary(device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{device['date']}-gpu_perf-{device['device'].replace(' ', '_')}"
    (out / f"{stem}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RESULTS))
    try:
        plot(out / f"{stem}.png")
    except Exception as exc:  # noqa: BLE001
        print(f"no plot: {exc}")


if __name__ == "__main__":
    main()
