"""One GPU run that decides issue #14's open choices, ours side by side with the baselines.

    python bench/gpu_sweep.py [--out PATH] [--budget-s 330] [--sections infer,train,step] [--no-compile]
    python bench/gpu_sweep.py --smoke [--out PATH]    # CPU, Triton's interpreter, seconds

Needs one CUDA GPU, no network (SpikingJelly is used when importable). The LIF
core of bench/gpu_perf.py (``tests/neurons.py: lif_hard``) and, for memory,
ALIF (two states). Every measurement is one JSON line; a failing one becomes
``{"error": ...}`` and the run goes on; past ``--budget-s`` the remaining
measurements are recorded as ``{"skipped": "budget"}``.

Sections:

``copy``   device copy bandwidth (1 GiB fp32 ``copy_``: bytes read + written / s).
``infer``  inference (outputs + final state, zero initial state) bandwidth as a
           fraction of the copy bandwidth (back to back from the host, and
           replayed from a CUDA graph: the kernels' own time), T in {8, 32} x N in {2^22, 2^24} x
           fp32 / bf16 / fp16, for every candidate config of :data:`CANDIDATES`
           pinned through the manifest's tuning table (block x warps, PREFETCH
           on/off, persistent grids ``-gK`` = at most K programs per SM), and
           SpikingJelly's LIFNode on the same input; ``copy_same_bytes`` is torch's copy of as
           many bytes as the kernel moves, for how close a kernel that short can get.
``train``  the training kernels alone (forward + backward through
           ``run_forward``/``run_backward``), T=8, N=2^24, fp32 and bf16, per
           candidate config, in both backward modes (``stored``: the save plan;
           ``recompute``: inputs only), and for bf16 the old rule (every extra
           saved in fp32, ``fp32x``) next to the new one; with the bytes the
           step keeps alive for its backward.
``step``   a whole training step through autograd (fresh input that requires
           grad -> neuron -> ``(y * g).sum().backward()``), T=8, N=2^24, fp32 and
           bf16, LIF and ALIF, 3 runs each: ours (FlexSN eager, backward modes
           ``auto``/``stored``/``recompute``), ours under ``torch.compile``, the
           plain loop over the core under ``torch.compile``, SpikingJelly's
           FlexSN and LIFNode (LIF). ms per step and peak memory above the
           input and gradient (``torch.cuda.max_memory_allocated``).

Prints three tables at the end and writes JSON lines to
``bench/results/<date>-gpu_sweep-<device>.jsonl`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

if "--smoke" in sys.argv:  # before Triton is imported: kernels run in its interpreter on CPU
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

from flexsn_core import FlexSN, KernelSpec  # noqa: E402
from flexsn_core.artifacts import build_artifacts  # noqa: E402
from flexsn_core.codegen.kernels import generate_kernels  # noqa: E402
from flexsn_core.compile import KernelConfig  # noqa: E402
from flexsn_core.runtime import KernelSet, run_backward, run_forward, run_inference_final  # noqa: E402
from flexsn_core.runtime.selection import BUCKET_BOUNDS, record_choice  # noqa: E402
from flexsn_core.trace import trace_core  # noqa: E402

TAU, V_TH, ALPHA = 2.0, 1.0, 4.0


def _cfg(block: int, warps: int, prefetch: bool = False, per_sm: int = 0) -> KernelConfig:
    return KernelConfig(block, warps, 1, True, prefetch, per_sm)


#: Candidate configs per dtype group: today's defaults first (compile.DEFAULT_SHAPES), then the
#: variants to decide (more elements per thread for 16-bit, prefetch, persistent grids).
CANDIDATES: dict[str, tuple[KernelConfig, ...]] = {
    "float32": (
        _cfg(512, 4), _cfg(1024, 8), _cfg(1024, 8, True),
        _cfg(1024, 4, True), _cfg(1024, 8, False, 4), _cfg(1024, 8, True, 4), _cfg(2048, 8, True),
    ),
    "16bit": (
        _cfg(2048, 8), _cfg(1024, 4, True), _cfg(2048, 4, True),
        _cfg(4096, 8), _cfg(4096, 8, True), _cfg(2048, 4, True, 8), _cfg(4096, 8, True, 4), _cfg(1024, 8),
    ),
}
SMOKE_CANDIDATES = (_cfg(512, 4), _cfg(1024, 8, True), _cfg(1024, 8, True, 4))

RESULTS: list[dict] = []


class Budget:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> bool:
        return time.monotonic() < self.end


def _cuda_ms(run: Callable[[], Any]) -> float:
    """GPU ms that ``run()`` takes, between CUDA events (after the queue drains)."""
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    run()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


class Ctx:
    """What every section needs: device, sizes, timing, the budget."""

    def __init__(self, smoke: bool, budget_s: float, compile_: bool) -> None:
        self.smoke = smoke
        self.device = torch.device("cpu" if smoke else "cuda")
        self.budget = Budget(budget_s)
        self.compile = compile_
        self.Ts = (2,) if smoke else (8, 32)
        self.Ns = (64,) if smoke else (1 << 22, 1 << 24)
        self.train_T, self.train_N = (3, 64) if smoke else (8, 1 << 24)
        self.target = "" if smoke else _target()

    def time_ms(self, fn: Callable[[], Any], iters: int = 20, warmup: int = 3) -> float:
        """Mean ms per call, back to back (CUDA events; wall clock in smoke mode)."""
        if self.smoke:
            iters, warmup = 1, 1
        for _ in range(warmup):
            fn()
        if self.smoke:
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
        def run() -> None:
            for _ in range(iters):
                fn()

        return _cuda_ms(run) / iters

    def time_ms_graph(self, fn: Callable[[], Any], iters: int = 20) -> float | None:
        """Mean GPU ms per call with ``iters`` calls captured in one CUDA graph and replayed:
        the kernels' own time, without the host's launch work (which bounds a back-to-back
        loop of short kernels). None in smoke mode."""
        if self.smoke:
            return None
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(iters):
                fn()
        graph.replay()
        return _cuda_ms(graph.replay) / iters

    def reset_peak(self) -> int:
        if self.smoke:
            return 0
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()

    def peak_above(self, base: int) -> int | None:
        if self.smoke:
            return None
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base


def _target() -> str:
    major, minor = torch.cuda.get_device_capability()
    return f"cuda:{major}{minor}"


def emit(record: dict) -> None:
    RESULTS.append(record)
    print(json.dumps(record), flush=True)


@contextlib.contextmanager
def recorded(ctx: Ctx, base: dict) -> Iterator[dict]:
    """Yield a record to fill; emit it, with the error if the block raised (the run goes on)."""
    rec = dict(base)
    if not ctx.budget.left():
        emit({**rec, "skipped": "budget"})
        yield {}
        return
    try:
        yield rec
    except ImportError as exc:  # SpikingJelly not installed on this machine
        rec["unavailable"] = f"{type(exc).__name__}: {exc}"[:200]
    except Exception as exc:  # noqa: BLE001 - one failing variant must not end the run
        rec["error"] = f"{type(exc).__name__}: {exc}"[:400]
        rec["trace"] = traceback.format_exc(limit=3)[-600:]
    finally:
        if not ctx.smoke:
            torch.cuda.empty_cache()
    emit(rec)


@contextlib.contextmanager
def backward_mode(mode: str) -> Iterator[None]:
    old = os.environ.get("FLEXSN_BACKWARD")
    os.environ["FLEXSN_BACKWARD"] = mode
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("FLEXSN_BACKWARD", None)
        else:
            os.environ["FLEXSN_BACKWARD"] = old


# --------------------------------------------------------------------- kernels
def _spec(name: str, dtype: torch.dtype) -> KernelSpec:
    from neurons import MODELS

    m = MODELS[name]
    return KernelSpec.from_core(m.core, m.num_inputs, m.num_states, m.num_outputs, dtype=dtype)


def _group(dtype: torch.dtype) -> str:
    return "float32" if dtype == torch.float32 else "16bit"


class Variants:
    """One build per (neuron, dtype, saved-dtype rule) with every candidate config; a kernel set per pinned config."""

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx
        self._builds: dict[tuple[str, torch.dtype, bool], tuple[dict, dict, Any]] = {}

    def candidates(self, dtype: torch.dtype) -> tuple[KernelConfig, ...]:
        return SMOKE_CANDIDATES if self.ctx.smoke else CANDIDATES[_group(dtype)]

    def _build(self, name: str, dtype: torch.dtype, round_extras: bool) -> tuple[dict, dict, Any]:
        key = (name, dtype, round_extras)
        if key not in self._builds:
            spec = _spec(name, dtype)
            gen = generate_kernels(trace_core(spec), round_extras=round_extras)
            targets = () if self.ctx.smoke else (self.ctx.target,)
            t0 = time.perf_counter()
            art = build_artifacts(spec, targets=targets, configs=self.candidates(dtype), generated=gen,
                                  workers=min(16, os.cpu_count() or 1))
            emit({"section": "build", "neuron": name, "dtype": str(dtype)[6:], "round_extras": round_extras,
                  "binaries": len(art.manifest["binaries"]), "seconds": round(time.perf_counter() - t0, 2)})
            self._builds[key] = (art.manifest, art.blobs, gen)
        return self._builds[key]

    def kernels(self, name: str, dtype: torch.dtype, config: KernelConfig, round_extras: bool = True) -> KernelSet:
        manifest, blobs, gen = self._build(name, dtype, round_extras)
        manifest = json.loads(json.dumps(manifest))
        if self.ctx.smoke:
            ks = KernelSet(manifest, generated=gen)
            ks.interpreter_prefetch = config.prefetch
            ks.interpreter_programs = 1 if config.programs_per_sm else None  # grid-stride over every block
            return ks
        for kind in manifest["kernels"]:
            for bucket in range(len(BUCKET_BOUNDS) + 1):
                record_choice(manifest, self.ctx.target, kind, bucket, True, config.id)
        return KernelSet(manifest, fetch=blobs.get)


def section_copy(ctx: Ctx) -> float:
    with recorded(ctx, {"section": "copy"}) as rec:
        src = torch.empty((1 << 28) if not ctx.smoke else (1 << 16), device=ctx.device)
        dst = torch.empty_like(src)
        ms = ctx.time_ms(lambda: dst.copy_(src), iters=20)
        rec["bytes_per_s"] = 2 * src.numel() * 4 / (ms / 1e3)
        del src, dst
    return float(rec.get("bytes_per_s") or 0.0)


def _lifnode() -> Any:
    from spikingjelly.activation_based import neuron, surrogate

    return neuron.LIFNode(tau=TAU, v_threshold=V_TH, v_reset=0.0, surrogate_function=surrogate.Sigmoid(alpha=ALPHA),
                          detach_reset=False, step_mode="m")


def _fraction(moved: int, ms: float, copy_bw: float) -> float:
    """Bytes per second over the copy bandwidth, to 4 significant digits (in smoke runs on
    the interpreter it is tiny, and 4 decimals would round it to 0)."""
    return float(f"{moved / (ms / 1e3) / copy_bw:.4g}")


def section_infer(ctx: Ctx, variants: Variants, copy_bw: float) -> None:
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        size = dtype.itemsize
        for T in ctx.Ts:
            for n in ctx.Ns:
                x = (torch.randn(T, n, device=ctx.device) + 0.5).to(dtype)
                moved = (2 * T * n + n) * size  # read x, write spikes; write the final state
                base = {"section": "infer", "dtype": str(dtype)[6:], "T": T, "N": n}
                for config in variants.candidates(dtype):
                    with recorded(ctx, {**base, "impl": "ours", "config": config.id}) as rec:
                        ks = variants.kernels("lif_hard", dtype, config)
                        with torch.no_grad():
                            ms = ctx.time_ms(lambda ks=ks: run_inference_final(ks, [x], [None]))
                            try:
                                graph_ms = ctx.time_ms_graph(lambda ks=ks: run_inference_final(ks, [x], [None]))
                            except Exception as exc:  # keep the back-to-back figure  # noqa: BLE001
                                graph_ms, rec["graph_error"] = None, f"{type(exc).__name__}: {exc}"[:300]
                        rec.update(ms=round(ms, 4), bw_fraction=_fraction(moved, ms, copy_bw))
                        if graph_ms:
                            rec.update(graph_ms=round(graph_ms, 4),
                                       graph_bw_fraction=_fraction(moved, graph_ms, copy_bw))
                with recorded(ctx, {**base, "impl": "copy_same_bytes"}) as rec:
                    # torch's copy of as many bytes as the kernel moves: what a kernel this short can
                    # reach at all (the reference above is a 1 GiB copy, which has no ramp or tail)
                    src = torch.empty(moved // (2 * size), device=ctx.device, dtype=dtype)
                    dst = torch.empty_like(src)
                    copied = 2 * src.numel() * size
                    ms = ctx.time_ms(lambda src=src, dst=dst: dst.copy_(src))
                    rec.update(ms=round(ms, 4), bw_fraction=_fraction(copied, ms, copy_bw))
                    graph_ms = ctx.time_ms_graph(lambda src=src, dst=dst: dst.copy_(src))
                    if graph_ms:
                        rec.update(graph_ms=round(graph_ms, 4), graph_bw_fraction=_fraction(copied, graph_ms, copy_bw))
                    del src, dst
                with recorded(ctx, {**base, "impl": "sj_lifnode"}) as rec:
                    node = _lifnode().to(ctx.device)

                    def call(node=node) -> None:  # noqa: ANN001
                        node.reset()
                        node(x)

                    with torch.no_grad():
                        ms = ctx.time_ms(call)
                    rec.update(ms=round(ms, 4), bw_fraction=_fraction(moved, ms, copy_bw))
                del x


def _saved_bytes(ks: KernelSet, mode: str) -> int:
    plan = ks.plan
    if mode == "recompute":
        return len(plan.recompute_inputs) * ks.dtype.itemsize
    return plan.held_bytes_per_step


def section_train(ctx: Ctx, variants: Variants) -> None:
    T, n = ctx.train_T, ctx.train_N
    for dtype in (torch.float32, torch.bfloat16):
        x = (torch.randn(T, n, device=ctx.device) + 0.5).to(dtype)
        g = torch.randn(T, n, device=ctx.device).to(dtype)
        rules = (True, False) if dtype == torch.bfloat16 else (True,)
        for round_extras in rules:
            for mode in ("stored", "recompute"):
                if not round_extras and mode == "recompute":
                    continue  # recompute saves no extras: the rule does not matter
                for config in variants.candidates(dtype):
                    base = {"section": "train", "dtype": str(dtype)[6:], "T": T, "N": n, "mode": mode,
                            "saved_rule": "new" if round_extras else "fp32x", "config": config.id}
                    with recorded(ctx, base) as rec:
                        ks = variants.kernels("lif_hard", dtype, config, round_extras)
                        recompute = mode == "recompute"

                        def step(ks=ks, recompute=recompute) -> None:  # noqa: ANN001
                            # What the training op keeps for its backward in this mode (ops._setup_training);
                            # run_backward refuses a call missing a buffer the plan reads.
                            outs, sseqs, _, extras = run_forward(ks, [x], [None], store_state_seqs=False,
                                                                 recompute=recompute)
                            plan = ks.plan
                            kept_x = [x] if 0 in (plan.recompute_inputs if recompute else plan.inputs) else [None]
                            kept_outs = [o if not recompute and i in plan.outputs else None for i, o in enumerate(outs)]
                            run_backward(ks, kept_x, [None], [], kept_outs, None if recompute else sseqs, extras,
                                         [g], [None], [None], recompute=recompute, shape=x.shape, device=x.device)

                        runs = [ctx.time_ms(step, iters=15) for _ in range(3)]
                        rec.update(ms=round(statistics.median(runs), 4), runs=[round(r, 4) for r in runs],
                                   saved_bytes_per_step=_saved_bytes(ks, mode))
        del x, g


# ----------------------------------------------------------------- whole step
def _loop(core: Callable[..., Any], num_states: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(x_seq: torch.Tensor) -> torch.Tensor:
        states = [torch.zeros_like(x_seq[0]) for _ in range(num_states)]
        spikes = []
        for t in range(x_seq.shape[0]):
            res = core(x_seq[t], *states)
            spikes.append(res[0])
            states = list(res[1:])
        return torch.stack(spikes)

    return run


def _impls(ctx: Ctx, name: str, dtype: torch.dtype) -> dict[str, Callable[[], Callable[[torch.Tensor], Any]]]:
    """Factories of the step's neurons (built lazily, each inside its own record)."""
    from neurons import MODELS

    m = MODELS[name]
    example = (torch.zeros(4, device=ctx.device, dtype=dtype),) * (1 + m.num_states)

    def ours() -> Callable[[torch.Tensor], Any]:
        return FlexSN(m.core, 1, m.num_states, 1, example_inputs=example, backend="triton").to(ctx.device)

    def ours_compiled() -> Callable[[torch.Tensor], Any]:
        return torch.compile(ours(), backend="aot_eager" if ctx.smoke else "inductor")

    def loop_compiled() -> Callable[[torch.Tensor], Any]:
        return torch.compile(_loop(m.core, m.num_states), backend="aot_eager" if ctx.smoke else "inductor")

    def sj_flexsn() -> Callable[[torch.Tensor], Any]:
        from spikingjelly.activation_based import neuron
        from train_bench import make_sj_flexsn  # knows multi-state neurons (ALIF)

        return make_sj_flexsn(neuron, m.core, m.num_states, example[0]).to(ctx.device)

    def sj_lifnode() -> Callable[[torch.Tensor], Any]:
        return _lifnode().to(ctx.device)

    impls: dict[str, Callable[[], Callable[[torch.Tensor], Any]]] = {
        "ours[auto]": ours, "ours[stored]": ours, "ours[recompute]": ours,
    }
    if ctx.compile:
        impls["ours_compiled"] = ours_compiled
        impls["loop_compiled"] = loop_compiled
    impls["loop_eager"] = lambda: _loop(m.core, m.num_states)
    impls["sj_flexsn"] = sj_flexsn
    if name == "lif_hard":
        impls["sj_lifnode"] = sj_lifnode
    return impls


def _first(y: Any) -> torch.Tensor:
    return y[0] if isinstance(y, (tuple, list)) else y


def section_step(ctx: Ctx) -> None:
    """Eager implementations of every group first, then the torch.compile ones (slow to build:
    if the budget runs out, it is their records that are skipped)."""
    T, n = ctx.train_T, ctx.train_N
    for compiled_pass in (False, True):
        for name in ("lif_hard", "alif"):
            for dtype in (torch.float32, torch.bfloat16):
                impls = {k: f for k, f in _impls(ctx, name, dtype).items() if ("compiled" in k) == compiled_pass}
                if not impls:
                    continue
                x0 = (torch.randn(T, n, device=ctx.device) + 0.5).to(dtype)
                g = torch.randn(T, n, device=ctx.device).to(dtype)
                for impl, factory in impls.items():
                    _step_record(ctx, name, dtype, impl, factory, x0, g)
                del x0, g


def _step_record(ctx: Ctx, name: str, dtype: torch.dtype, impl: str, factory: Callable[[], Any],
                 x0: torch.Tensor, g: torch.Tensor) -> None:
    T, n = x0.shape
    mode = impl[impl.index("[") + 1 : -1] if "[" in impl else "auto"
    base = {"section": "step", "neuron": name, "dtype": str(dtype)[6:], "T": T, "N": n, "impl": impl}
    with recorded(ctx, base) as rec, backward_mode(mode):
        model = factory()

        def step(model=model) -> None:  # noqa: ANN001
            if hasattr(model, "reset"):
                model.reset()
            x = x0.detach().requires_grad_()
            _first(model(x)).backward(g)

        step()  # build, compile, autotune
        base_mem = ctx.reset_peak()
        step()
        rec["peak_bytes"] = ctx.peak_above(base_mem)
        runs = [ctx.time_ms(step, iters=10) for _ in range(3)]
        rec.update(ms=round(statistics.median(runs), 4), runs=[round(r, 4) for r in runs])
        del model
        if "compiled" in impl:
            torch._dynamo.reset()


# --------------------------------------------------------------------- tables
def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)


def _val(rec: dict | None, key: str, fmt: str) -> str:
    if rec is None:
        return "-"
    if "error" in rec:
        return "ERR"
    if "skipped" in rec:
        return "skip"
    if "unavailable" in rec:
        return "n/a"
    v = rec.get(key)
    return "-" if v is None else format(v, fmt)


def tables(records: list[dict]) -> str:
    out = []
    infer = [r for r in records if r.get("section") == "infer"]
    if infer:
        cols = list(dict.fromkeys(r.get("config") or r["impl"] for r in infer))
        rows = [["inference bw / copy", *cols]]
        for key in dict.fromkeys((r["dtype"], r["T"], r["N"]) for r in infer):
            by = {(r.get("config") or r["impl"]): r for r in infer if (r["dtype"], r["T"], r["N"]) == key}
            rows.append([f"{key[0]} T={key[1]} N=2^{key[2].bit_length() - 1}",
                         *[_val(by.get(c), "bw_fraction", ".3f") for c in cols]])
        out.append(_table(rows))
        ours = [c for c in cols if any(r.get("config") == c for r in infer)]
        ours += [c for c in cols if c == "copy_same_bytes"]
        rows = [["inference bw / copy, CUDA graph (kernel time only)", *ours]]
        for key in dict.fromkeys((r["dtype"], r["T"], r["N"]) for r in infer):
            by = {(r.get("config") or r["impl"]): r for r in infer if (r["dtype"], r["T"], r["N"]) == key}
            rows.append([f"{key[0]} T={key[1]} N=2^{key[2].bit_length() - 1}",
                         *[_val(by.get(c), "graph_bw_fraction", ".3f") for c in ours]])
        out.append(_table(rows))
    train = [r for r in records if r.get("section") == "train"]
    if train:
        cols = list(dict.fromkeys(r["config"] for r in train))
        rows = [["training kernels ms (saved B/step)", *cols]]
        for key in dict.fromkeys((r["dtype"], r["mode"], r["saved_rule"]) for r in train):
            by = {r["config"]: r for r in train if (r["dtype"], r["mode"], r["saved_rule"]) == key}
            any_rec = next(iter(by.values()))
            rows.append([f"{key[0]} {key[1]} {key[2]} ({any_rec.get('saved_bytes_per_step', '?')} B)",
                         *[_val(by.get(c), "ms", ".3f") for c in cols]])
        out.append(_table(rows))
    step = [r for r in records if r.get("section") == "step"]
    if step:
        rows = [["training step", "ms", "peak MB", "x sj_lifnode", "x loop_compiled"]]
        for key in dict.fromkeys((r["neuron"], r["dtype"]) for r in step):
            group = {r["impl"]: r for r in step if (r["neuron"], r["dtype"]) == key}

            def ratio(r: dict, ref: str) -> str:
                other = group.get(ref)
                if not other or "ms" not in r or "ms" not in other or not other["ms"]:
                    return "-"
                return f"{r['ms'] / other['ms']:.2f}"

            for impl, r in group.items():
                peak = r.get("peak_bytes")
                rows.append([f"{key[0]} {key[1]} {impl}", _val(r, "ms", ".3f"),
                             "-" if peak is None else f"{peak / 2**20:.0f}",
                             ratio(r, "sj_lifnode"), ratio(r, "loop_compiled")])
        out.append(_table(rows))
    return "\n\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="CPU, interpreter, tiny sizes (keeps the script alive)")
    ap.add_argument("--out", help="a .jsonl file or a folder (default bench/results/)")
    ap.add_argument("--budget-s", type=float, default=330.0, help="stop measuring after this many seconds")
    ap.add_argument("--sections", default="infer,train,step")
    ap.add_argument("--no-compile", action="store_true", help="leave out the torch.compile implementations")
    args = ap.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("gpu_sweep: needs a CUDA GPU (or --smoke)")
    os.environ.setdefault("FLEXSN_AUTOTUNE", "0")  # configs are pinned; a tuned choice would hide them
    ctx = Ctx(args.smoke, args.budget_s, not args.no_compile)
    device = "cpu-smoke" if args.smoke else torch.cuda.get_device_name().replace(" ", "_")
    emit({"section": "device", "device": device, "torch": torch.__version__,
          "triton": __import__("triton").__version__, "smoke": args.smoke})
    sections = set(args.sections.split(","))
    variants = Variants(ctx)
    copy_bw = section_copy(ctx)
    if "infer" in sections:
        section_infer(ctx, variants, copy_bw or 1.0)
    if "train" in sections:
        section_train(ctx, variants)
    if "step" in sections:
        section_step(ctx)
    print("\n" + tables(RESULTS), flush=True)
    out = Path(args.out) if args.out else ROOT / "bench" / "results"
    if out.suffix != ".jsonl":
        out.mkdir(parents=True, exist_ok=True)
        out = out / f"{datetime.date.today()}-gpu_sweep-{device}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in RESULTS))
    print(f"wrote {out}", flush=True)


if __name__ == "__main__":
    main()
