"""Training benchmark: a spiking conv network, one optimizer step, side by side in one run.

    python bench/train_bench.py [--neurons lif,alif] [--T 4,8] [--dtypes float32,bfloat16]
                                [--impls ours,ours_compiled,loop_compiled,sj_flexsn,sj_lifnode]
                                [--batch 128] [--steps 20] [--warmup 5] [--timeout 300] [--out PATH]
    python bench/train_bench.py --smoke --out /tmp/smoke.jsonl   # CPU, seconds: keeps the script alive
    python bench/train_bench.py --table FILE.jsonl               # reprint the tables of a finished run

The network (``SpikingConvNet``): 5 blocks of 3x3 conv (no bias) + BatchNorm +
spiking neuron, channels 64-128-128-256-256, 2x2 max-pooling after blocks 2, 4
and 5, on CIFAR-shaped input ``[T, B, 3, 32, 32]`` (random data and labels,
fixed seed); a linear head on the time-mean of the last spikes; cross-entropy;
SGD with momentum. Convs and BN run time-distributed (T folded into the
batch); the neuron sees ``[T, B, C, H, W]``.

Neurons, each a plain single-step core from ``tests/neurons.py`` used by every
implementation: ``lif`` (``lif_hard``: hard reset, sigmoid straight-through
surrogate, tau 2, threshold 1, alpha 4 -- the core of bench/gpu_perf.py) and
``alif`` (two states: membrane and adaptive threshold).

Implementations (``--impls``):

* ``ours``           FlexSN(core, backend="triton"), eager;
* ``ours_compiled``  the same, whole model under ``torch.compile``;
* ``loop_compiled``  a plain PyTorch loop over the core, whole model under ``torch.compile``;
* ``loop_eager``     that loop without compile (not in the default set);
* ``sj_flexsn``      SpikingJelly's FlexSN (2.0.0 API, older API as a fallback), eager;
* ``sj_lifnode``     SpikingJelly's hand-written LIFNode(step_mode="m"), eager, ``lif`` only.

Precision (``--dtypes``): ``float32``, or ``bfloat16`` autocast
(``torch.autocast("cuda", torch.bfloat16)``; the neurons see BN's output dtype,
probed once, and our FlexSN builds that dtype's kernels at construction).

Each configuration runs in a fresh subprocess (peaks and caches do not leak),
one per GPU at a time, spread over all visible GPUs, with a time limit. Per
configuration: ms per optimizer step (forward + backward + SGD step; CUDA
events around each step, back to back, median after warm-up), peak memory
(``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` before
the timed steps), the first step's wall time (with ``torch.compile``: compile
time), the loss of the first and last step (the same initial weights and data
for every implementation: a cross-check). A failing implementation is
recorded as ``{"impl": ..., "error": ...}`` and the run goes on; SpikingJelly
missing gives ``{"unavailable": ...}`` records.

Writes JSON lines (one per configuration as it finishes, then a summary with
the ratios of issue #14's targets) to
``bench/results/<date>-train_bench-<device>.jsonl`` (or ``--out``: a
``.jsonl`` file or a folder), prints the tables, and plots with
``bench/plot_train.py`` (``FILE.png`` beside the JSONL).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

# --------------------------------------------------------------------- the grid
#: neuron name -> (core in tests/neurons.py, number of states)
NEURONS: dict[str, tuple[str, int]] = {"lif": ("lif_hard", 1), "alif": ("alif", 2)}
IMPLS = ("ours", "ours_compiled", "loop_compiled", "sj_flexsn", "sj_lifnode")
ALL_IMPLS = (*IMPLS, "loop_eager")
COMPILED = ("ours_compiled", "loop_compiled")
SPIKINGJELLY = ("sj_flexsn", "sj_lifnode")
DTYPES = ("float32", "bfloat16")
DTYPE_ALIASES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16"}

#: (out channels, 2x2 max-pool after the block)
BLOCKS: tuple[tuple[int, bool], ...] = ((64, False), (128, True), (128, False), (256, True), (256, True))
SMOKE_BLOCKS: tuple[tuple[int, bool], ...] = ((4, True), (8, True))
SIZE, SMOKE_SIZE = 32, 8
CLASSES = 10
LR, MOMENTUM = 0.05, 0.9

#: issue #14's targets: our figure / the compiled plain loop's, at most
TARGETS = {
    "eager_time_vs_loop_compiled": 1.0,
    "compiled_time_vs_loop_compiled": 0.9,
    "eager_peak_vs_loop_compiled": 1.0,
    "compiled_peak_vs_loop_compiled": 1.0,
}

RESULT_PREFIX = "RESULT "


@dataclass(frozen=True)
class Config:
    """One measurement: everything the child process needs, JSON-serializable."""

    neuron: str
    T: int
    dtype: str
    impl: str
    batch: int
    steps: int
    warmup: int
    device: str = "cuda"
    smoke: bool = False
    compile_backend: str = "inductor"
    compile_mode: str = "default"

    @property
    def label(self) -> str:
        return f"{self.neuron} T={self.T} {self.dtype} {self.impl}"

    def key(self) -> tuple[str, int, str, str]:
        return (self.neuron, self.T, self.dtype, self.impl)


def make_grid(
    neurons: Sequence[str], Ts: Sequence[int], dtypes: Sequence[str], impls: Sequence[str], **common: Any
) -> list[Config]:
    """Every (neuron, T, dtype, impl); LIFNode only where the neuron is LIF."""
    return [
        Config(neuron=n, T=T, dtype=d, impl=i, **common)
        for n in neurons for T in Ts for d in dtypes for i in impls
        if not (i == "sj_lifnode" and n != "lif")
    ]


def estimated_cost(cfg: Config) -> float:
    """Rough relative wall time, to start the long configurations first (balances the GPUs)."""
    cost = 4.0 if cfg.impl in COMPILED else 1.0
    cost *= 1.0 + cfg.T / 8 + 0.3 * (NEURONS[cfg.neuron][1] - 1)
    if cfg.impl == "sj_flexsn":
        cost *= 1.5  # SpikingJelly JIT-compiles its Triton kernels in the process
    return cost


# --------------------------------------------------------------------- the network
class LoopNeuron(nn.Module):
    """The plain PyTorch baseline: a Python loop over time calling the core (states start at zero)."""

    def __init__(self, core: Callable[..., Any], num_states: int) -> None:
        super().__init__()
        self.core = core
        self.num_states = num_states

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        states = [torch.zeros_like(x_seq[0]) for _ in range(self.num_states)]
        spikes = []
        for t in range(x_seq.shape[0]):
            spike, *states = self.core(x_seq[t], *states)
            spikes.append(spike)
        return torch.stack(spikes)


class SpikingConvNet(nn.Module):
    """VGG-style blocks of conv + BN (time-distributed) + a multi-step neuron ``[T, B, C, H, W]``."""

    def __init__(
        self,
        make_neuron: Callable[[], nn.Module],
        blocks: tuple[tuple[int, bool], ...] = BLOCKS,
        size: int = SIZE,
        in_channels: int = 3,
        classes: int = CLASSES,
    ) -> None:
        super().__init__()
        self.convs, self.bns, self.neurons = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        self.pools = tuple(pool for _, pool in blocks)
        channels = in_channels
        for out, pool in blocks:
            self.convs.append(nn.Conv2d(channels, out, 3, padding=1, bias=False))
            self.bns.append(nn.BatchNorm2d(out))
            self.neurons.append(make_neuron())
            channels = out
            size = size // 2 if pool else size
        self.head = nn.Linear(channels * size * size, classes)

    def reset_neurons(self) -> None:
        """Fresh neuron states for the next sequence (memory modules keep the last call's states)."""
        for neuron in self.neurons:
            reset = getattr(neuron, "reset", None)
            if reset is not None:
                reset()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B = x.shape[:2]
        h = x.flatten(0, 1)
        for conv, bn, neuron, pool in zip(self.convs, self.bns, self.neurons, self.pools):
            h = bn(conv(h))
            h = neuron(h.unflatten(0, (T, B))).flatten(0, 1)
            if pool:
                h = F.max_pool2d(h, 2)
        return self.head(h.unflatten(0, (T, B)).mean(0).flatten(1))


# --------------------------------------------------------------------- neurons per implementation
class Unavailable(Exception):
    """An implementation this host cannot run (SpikingJelly not installed)."""


def autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager[Any]:
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, dtype))


def neuron_input_dtype(device: torch.device, dtype: str) -> torch.dtype:
    """The dtype BN hands to the neurons under this precision (autocast decides; probed, not assumed)."""
    conv, bn = nn.Conv2d(3, 4, 3, padding=1, bias=False).to(device), nn.BatchNorm2d(4).to(device)
    with torch.no_grad(), autocast(device, dtype):
        return bn(conv(torch.zeros(2, 3, 4, 4, device=device))).dtype


def import_spikingjelly() -> Any:
    try:
        from spikingjelly.activation_based import neuron, surrogate
    except Exception as exc:  # noqa: BLE001 - any import failure means "not on this host"
        raise Unavailable(f"spikingjelly not importable: {type(exc).__name__}: {exc}") from exc
    return neuron, surrogate


def spikingjelly_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("spikingjelly")
    except metadata.PackageNotFoundError:
        return None


def make_sj_flexsn(neuron: Any, core: Callable[..., Any], num_states: int, example: torch.Tensor) -> nn.Module:
    """SpikingJelly's FlexSN: the 2.0.0 API infers input/output counts; older ones take them."""
    try:
        return neuron.FlexSN(core, num_states=num_states, step_mode="m")
    except TypeError:
        examples = (example,) * (1 + num_states)
        return neuron.FlexSN(core, 1, num_states, 1, example_inputs=examples, step_mode="m", backend="triton")


def make_sj_lifnode(neuron: Any, surrogate: Any) -> tuple[nn.Module, str]:
    """LIFNode with the LIF core's constants; 2.0.0 picks its CUDA kernel itself, older ones take a backend."""
    from neurons import ALPHA, TAU, V_TH

    node = neuron.LIFNode(
        tau=TAU, v_threshold=V_TH, v_reset=0.0, surrogate_function=surrogate.Sigmoid(alpha=ALPHA),
        detach_reset=False, step_mode="m",
    )
    backends = tuple(getattr(node, "supported_backends", ()))
    for backend in ("triton", "cupy"):  # fastest first; older releases list cupy even where it is missing
        if backend in backends and importlib.util.find_spec(backend) is not None:
            node.backend = backend
            return node, backend
    return node, "auto"


def neuron_factory(cfg: Config, device: torch.device, dtype: torch.dtype, info: dict[str, Any]) -> Callable[[], nn.Module]:
    """A constructor of one neuron layer for ``cfg.impl``; ``info`` collects what the record should say."""
    import neurons

    core_name, num_states = NEURONS[cfg.neuron]
    core = getattr(neurons, core_name)
    example = torch.zeros(4, device=device, dtype=dtype)
    if cfg.impl in ("ours", "ours_compiled"):
        from flexsn_core import FlexSN

        return lambda: FlexSN(core, 1, num_states, 1, example_inputs=(example,) * (1 + num_states), backend="triton")
    if cfg.impl in ("loop_compiled", "loop_eager"):
        return lambda: LoopNeuron(core, num_states)
    if cfg.impl in SPIKINGJELLY:
        sj_neuron, surrogate = import_spikingjelly()
        info["spikingjelly"] = spikingjelly_version()
        if cfg.impl == "sj_flexsn":
            return lambda: make_sj_flexsn(sj_neuron, core, num_states, example)
        if cfg.neuron != "lif":
            raise ValueError("sj_lifnode runs the LIF neuron only")

        def lifnode() -> nn.Module:
            node, info["sj_backend"] = make_sj_lifnode(sj_neuron, surrogate)
            return node

        return lifnode
    raise ValueError(f"unknown implementation {cfg.impl!r}; known: {', '.join(ALL_IMPLS)}")


# --------------------------------------------------------------------- one configuration (child process)
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed_steps(step: Callable[[], torch.Tensor], steps: int, device: torch.device) -> tuple[list[float], float]:
    """Milliseconds of each step (run back to back, no sync between steps) and of the whole window."""
    if device.type == "cuda":
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(steps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(steps)]
        for start, end in zip(starts, ends):
            start.record()
            step()
            end.record()
        torch.cuda.synchronize()
        return [s.elapsed_time(e) for s, e in zip(starts, ends)], starts[0].elapsed_time(ends[-1])
    times = []
    t_window = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    return times, (time.perf_counter() - t_window) * 1e3


def _dynamo_stats() -> dict[str, int]:
    from torch._dynamo.utils import counters

    return {
        "graphs": int(counters["stats"].get("unique_graphs", 0)),
        "graph_breaks": int(sum(counters["graph_break"].values())),
    }


def run_config(cfg: Config) -> dict[str, Any]:
    """Build the network for ``cfg``, train ``warmup + steps`` steps, measure. Raises on failure."""
    import triton

    device = torch.device(cfg.device)
    record: dict[str, Any] = {
        "torch": torch.__version__, "triton": triton.__version__,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }
    torch.manual_seed(0)  # the same weights and data for every implementation
    g = torch.Generator().manual_seed(1)
    size = SMOKE_SIZE if cfg.smoke else SIZE
    x = torch.randn(cfg.T, cfg.batch, 3, size, size, generator=g).to(device)
    y = torch.randint(0, CLASSES, (cfg.batch,), generator=g).to(device)

    t0 = time.perf_counter()
    ndtype = neuron_input_dtype(device, cfg.dtype)
    make_neuron = neuron_factory(cfg, device, ndtype, record)
    model = SpikingConvNet(make_neuron, SMOKE_BLOCKS if cfg.smoke else BLOCKS, size).to(device)
    _sync(device)
    record["build_s"] = round(time.perf_counter() - t0, 3)
    record["neuron_dtype"] = str(ndtype).removeprefix("torch.")
    record["neuron_elements_per_step"] = _neuron_elements(cfg)

    forward: Callable[[torch.Tensor], torch.Tensor] = model
    if cfg.impl in COMPILED:
        forward = torch.compile(model, backend=cfg.compile_backend, mode=None if cfg.compile_mode == "default" else cfg.compile_mode)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)

    def step() -> torch.Tensor:
        model.reset_neurons()
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, cfg.dtype):
            loss = F.cross_entropy(forward(x), y)
        loss.backward()
        optimizer.step()
        return loss.detach()

    t0 = time.perf_counter()
    loss = step()
    _sync(device)
    first_step_s = time.perf_counter() - t0
    record["loss_first"] = round(float(loss), 6)
    for _ in range(cfg.warmup - 1):
        step()
    _sync(device)
    if device.type == "cuda":
        record["mem_between_steps_bytes"] = torch.cuda.memory_allocated()  # weights, grads, momentum, data
        torch.cuda.reset_peak_memory_stats()
    times, window = _timed_steps(step, cfg.steps, device)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
        record["peak_mem_bytes"] = peak
        record["peak_mem_gb"] = round(peak / 1e9, 4)
        record["peak_reserved_gb"] = round(torch.cuda.max_memory_reserved() / 1e9, 4)
    else:
        record["peak_mem_bytes"] = record["peak_mem_gb"] = None  # no allocator statistics on CPU
    record["loss_last"] = round(float(step()), 6)
    median = statistics.median(times)
    record.update({
        "ms": round(median, 4),
        "ms_mean": round(window / cfg.steps, 4),
        "ms_min": round(min(times), 4),
        "ms_max": round(max(times), 4),
        "first_step_s": round(first_step_s, 3),
        "compile_s": round(first_step_s - median / 1e3, 3) if cfg.impl in COMPILED else None,
    })
    if cfg.impl in COMPILED:
        record.update(_dynamo_stats())
    if cfg.impl.startswith("ours"):
        from flexsn_core import counters

        record["flexsn_counters"] = counters()
    return record


def _neuron_elements(cfg: Config) -> int:
    """Neurons updated per time step over the whole network (the size the neuron kernels see)."""
    size = SMOKE_SIZE if cfg.smoke else SIZE
    total = 0
    for out, pool in SMOKE_BLOCKS if cfg.smoke else BLOCKS:
        total += cfg.batch * out * size * size
        size = size // 2 if pool else size
    return total


def child_main(payload: str) -> None:
    cfg = Config(**json.loads(payload))
    record: dict[str, Any] = asdict(cfg)
    try:
        record.update(run_config(cfg))
    except Unavailable as exc:
        record["unavailable"] = str(exc)
    except Exception as exc:  # noqa: BLE001 - the parent records it and goes on
        record["error"] = f"{type(exc).__name__}: {exc}"[:800]
        record["traceback"] = traceback.format_exc()[-2000:]
    print(RESULT_PREFIX + json.dumps(record), flush=True)


# --------------------------------------------------------------------- the parent: scheduling
_live: set[subprocess.Popen[str]] = set()
_live_lock = threading.Lock()


def kill_children() -> None:
    """Kill the process groups of the children still running (Ctrl-C: they are in sessions of their own)."""
    with _live_lock:
        for proc in _live:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


def run_child(cfg: Config, slot: str | None, timeout: float) -> dict[str, Any]:
    """Run one configuration in a fresh process; never raises (failures become records)."""
    env = dict(os.environ)
    if slot is not None:
        env["CUDA_VISIBLE_DEVICES"] = slot
    if cfg.device == "cpu":
        env["TRITON_INTERPRET"] = "1"  # our kernels run in Triton's interpreter on CPU tensors
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(asdict(cfg))]
    t0 = time.perf_counter()
    # A session of its own, so a timeout kills the compile workers too.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    with _live_lock:
        _live.add(proc)
    timed_out = False
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        timed_out = True
    finally:
        with _live_lock:
            _live.discard(proc)
    wall = round(time.perf_counter() - t0, 2)
    lines = [line for line in out.splitlines() if line.startswith(RESULT_PREFIX)]
    if timed_out:
        record = {**asdict(cfg), "error": f"timeout after {timeout:g} s: {err[-800:].strip()}"}
    elif lines:
        record = json.loads(lines[-1][len(RESULT_PREFIX):])
        if proc.returncode:  # measured, then died on the way out (e.g. in CUDA teardown): keep the figures
            record["exit_status"] = proc.returncode
    else:
        record = {**asdict(cfg), "error": f"exit status {proc.returncode}, no result line: {err[-800:].strip()}"}
    record["gpu"] = slot
    record["wall_s"] = wall
    return record


def run_grid(
    configs: list[Config], slots: list[str | None], timeout: float, sink: Callable[[dict[str, Any]], None]
) -> list[dict[str, Any]]:
    """Run configurations, one process per slot (GPU) at a time, longest first; records in grid order."""
    order = {cfg.key(): i for i, cfg in enumerate(configs)}
    pending: queue.Queue[Config] = queue.Queue()
    for cfg in sorted(configs, key=estimated_cost, reverse=True):
        pending.put(cfg)
    records: list[dict[str, Any]] = []
    lock = threading.Lock()

    def worker(slot: str | None) -> None:
        while True:
            try:
                cfg = pending.get_nowait()
            except queue.Empty:
                return
            record = run_child(cfg, slot, timeout)
            with lock:
                records.append(record)
                sink(record)
                print(f"[{len(records)}/{len(configs)}] {'cpu' if slot is None else 'gpu ' + slot} "
                      f"{cfg.label}: {describe(record)} ({record['wall_s']:.0f} s)", flush=True)

    threads = [threading.Thread(target=worker, args=(slot,), daemon=True) for slot in slots]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(records, key=lambda r: order.get((r["neuron"], r["T"], r["dtype"], r["impl"]), len(order)))


def visible_gpus() -> list[str]:
    """CUDA_VISIBLE_DEVICES entries for each GPU this process sees (what each child gets)."""
    count = torch.cuda.device_count()
    listed = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return listed[:count] if listed else [str(i) for i in range(count)]


def unavailable_record(cfg: Config, reason: str) -> dict[str, Any]:
    return {**asdict(cfg), "unavailable": reason, "gpu": None, "wall_s": 0.0}


# --------------------------------------------------------------------- summary and tables
def describe(record: dict[str, Any]) -> str:
    if "error" in record:
        return "error: " + record["error"].splitlines()[0][:160]
    if "unavailable" in record:
        return "unavailable: " + record["unavailable"][:160]
    peak = f", peak {record['peak_mem_gb']:.3f} GB" if record.get("peak_mem_gb") is not None else ""
    compile_s = f", compile {record['compile_s']:.1f} s" if record.get("compile_s") is not None else ""
    return f"{record['ms']:.3f} ms/step{peak}{compile_s}, loss {record['loss_first']:.4f}"


def _measured(records: list[dict[str, Any]]) -> dict[tuple[str, int, str, str], dict[str, Any]]:
    return {
        (r["neuron"], r["T"], r["dtype"], r["impl"]): r
        for r in records
        if not r.get("summary") and "ms" in r and "error" not in r and "unavailable" not in r
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def summarize(records: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """The ratios of issue #14's targets per (neuron, T, dtype), the worst of each, and whether it is met."""
    ok = _measured(records)
    groups = sorted({k[:3] for k in ok}, key=lambda k: (k[0], k[1], DTYPES.index(k[2]) if k[2] in DTYPES else 9))
    ratios = []
    for neuron, T, dtype in groups:
        def get(impl: str, field: str) -> float | None:
            return ok.get((neuron, T, dtype, impl), {}).get(field)

        row: dict[str, Any] = {"neuron": neuron, "T": T, "dtype": dtype}
        # Every implementation starts from the same weights and data: first losses should agree.
        losses = [r["loss_first"] for k, r in ok.items() if k[:3] == (neuron, T, dtype) and "loss_first" in r]
        row["loss_first_spread"] = round(max(losses) - min(losses), 6) if losses else None
        for ours, name in (("ours", "eager"), ("ours_compiled", "compiled")):
            row[f"{name}_time_vs_loop_compiled"] = _ratio(get(ours, "ms"), get("loop_compiled", "ms"))
            row[f"{name}_peak_vs_loop_compiled"] = _ratio(get(ours, "peak_mem_bytes"), get("loop_compiled", "peak_mem_bytes"))
            for peer in SPIKINGJELLY:
                row[f"{name}_time_vs_{peer}"] = _ratio(get(ours, "ms"), get(peer, "ms"))
                row[f"{name}_peak_vs_{peer}"] = _ratio(get(ours, "peak_mem_bytes"), get(peer, "peak_mem_bytes"))
        ratios.append(row)
    worst: dict[str, float | None] = {}
    met: dict[str, bool | None] = {}
    for name, target in TARGETS.items():
        values = [r[name] for r in ratios if r.get(name) is not None]
        worst[name] = max(values) if values else None
        met[name] = None if not values else worst[name] <= target
    failed = [f"{r['neuron']} T={r['T']} {r['dtype']} {r['impl']}" for r in records
              if not r.get("summary") and "error" in r]
    unavailable = [f"{r['neuron']} T={r['T']} {r['dtype']} {r['impl']}" for r in records
                   if not r.get("summary") and "unavailable" in r]
    return {"summary": True, **meta, "targets": TARGETS, "worst": worst, "met": met, "ratios": ratios,
            "failed": failed, "unavailable": unavailable}


def _cell(record: dict[str, Any] | None, field: str, fmt: str) -> str:
    if record is None:
        return "—"
    if "error" in record:
        return "timeout" if "timeout" in record["error"] else "error"
    if "unavailable" in record:
        return "n/a"
    value = record.get(field)
    return "—" if value is None else format(value, fmt)


def format_tables(records: list[dict[str, Any]]) -> str:
    """Markdown: per (neuron, T) one table in the issue's layout, then the target ratios."""
    rows = [r for r in records if not r.get("summary")]
    by_key = {(r["neuron"], r["T"], r["dtype"], r["impl"]): r for r in rows}
    dtypes = [d for d in DTYPES if any(r["dtype"] == d for r in rows)]
    impls = [i for i in ALL_IMPLS if any(r["impl"] == i for r in rows)]
    short = {"float32": "fp32", "bfloat16": "bf16-AMP"}
    out = []
    for neuron, T in sorted({(r["neuron"], r["T"]) for r in rows}):
        batch = next(r["batch"] for r in rows if r["neuron"] == neuron and r["T"] == T)
        out.append(f"\n{neuron}, T={T}, batch {batch}: ms per optimizer step, peak memory (GB), compile s\n")
        head = ["implementation"]
        for d in dtypes:
            head += [f"{short.get(d, d)} ms", f"{short.get(d, d)} peak GB"]
        head.append("compile s")
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + " --- |" * len(head))
        for impl in impls:
            recs = [by_key.get((neuron, T, d, impl)) for d in dtypes]
            if not any(recs):
                continue  # e.g. LIFNode for a neuron that is not LIF
            cells = [impl]
            for rec in recs:
                cells += [_cell(rec, "ms", ".2f"), _cell(rec, "peak_mem_gb", ".2f")]
            compiles = [f"{r['compile_s']:.1f}" for r in recs if r is not None and r.get("compile_s") is not None]
            cells.append(" / ".join(compiles) or "—")
            out.append("| " + " | ".join(cells) + " |")
    summary = next((r for r in records if r.get("summary")), None) or summarize(records, {})
    if summary["ratios"]:
        names = list(TARGETS)
        out.append("\nissue #14 targets (ours / compiled plain loop; met when ≤ the target)\n")
        out.append("| neuron | T | dtype | " + " | ".join(f"{n} (≤ {TARGETS[n]})" for n in names) + " |")
        out.append("|" + " --- |" * (3 + len(names)))
        for r in summary["ratios"]:
            cells = [r["neuron"], str(r["T"]), r["dtype"]] + ["—" if r[n] is None else f"{r[n]:.3f}" for n in names]
            out.append("| " + " | ".join(cells) + " |")
        worst = ["worst", "", ""] + [
            "—" if summary["worst"][n] is None else f"{summary['worst'][n]:.3f} ({'met' if summary['met'][n] else 'not met'})"
            for n in names
        ]
        out.append("| " + " | ".join(worst) + " |")
    return "\n".join(out).lstrip("\n")


# --------------------------------------------------------------------- command line
def _csv(kind: Callable[[str], Any], allowed: Iterable[Any] | None = None) -> Callable[[str], list[Any]]:
    allowed = None if allowed is None else tuple(allowed)

    def parse(text: str) -> list[Any]:
        values = [kind(v.strip()) for v in text.split(",") if v.strip()]
        if not values:
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        bad = [v for v in values if allowed is not None and v not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {', '.join(map(str, allowed))}")
        return values

    return parse


def _dtype(text: str) -> str:
    return DTYPE_ALIASES.get(text.lower(), text)


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--neurons", type=_csv(str, NEURONS), default=None, help="default lif,alif")
    p.add_argument("--T", type=_csv(_positive), default=None, help="time steps, default 4,8")
    p.add_argument("--dtypes", type=_csv(_dtype, DTYPES), default=None, help="default float32,bfloat16 (fp32, bf16)")
    p.add_argument("--impls", type=_csv(str, ALL_IMPLS), default=None, help=f"default {','.join(IMPLS)}")
    p.add_argument("--batch", type=_positive, default=None, help="default 128")
    p.add_argument("--steps", type=_positive, default=None, help="timed steps, default 20")
    p.add_argument("--warmup", type=_positive, default=None, help="steps before timing (the first compiles), default 5")
    p.add_argument("--timeout", type=float, default=None, help="seconds per configuration, default 300")
    p.add_argument("--compile-mode", default="default", help="torch.compile mode, e.g. max-autotune-no-cudagraphs")
    p.add_argument("--gpus", type=_csv(str), default=None, help="CUDA_VISIBLE_DEVICES entries to use, default all visible")
    p.add_argument("--out", default=None, help="a .jsonl file or a folder (default bench/results/)")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--smoke", action="store_true",
                   help="CPU only, seconds: tiny net, alif, T=2, batch 2, ours (Triton interpreter), ours and "
                        "the plain loop under an aot_eager compile; no SpikingJelly")
    p.add_argument("--table", metavar="FILE", help="print the tables of a finished run's JSONL and exit")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    smoke = args.smoke
    defaults = {
        # The smoke grid is one multi-state neuron: every child traces the core in a few seconds.
        "neurons": ["alif"] if smoke else ["lif", "alif"], "T": [2] if smoke else [4, 8],
        "dtypes": ["float32"] if smoke else list(DTYPES),
        "impls": ["ours", "ours_compiled", "loop_compiled"] if smoke else list(IMPLS),
        "batch": 2 if smoke else 128, "steps": 2 if smoke else 20, "warmup": 1 if smoke else 5,
        "timeout": 120.0 if smoke else 300.0,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if smoke and any(i in SPIKINGJELLY for i in args.impls):
        p.error("--smoke runs without SpikingJelly; drop sj_* from --impls")
    return args


def output_path(out: str | None, device_name: str, date: str, smoke: bool) -> Path:
    stem = f"{date}-train_bench-{device_name.replace(' ', '_')}"
    if out is None:
        folder = Path(tempfile.mkdtemp(prefix="train_bench-smoke-")) if smoke else ROOT / "bench" / "results"
        return folder / f"{stem}.jsonl"
    path = Path(out)
    return path if path.suffix == ".jsonl" else path / f"{stem}.jsonl"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        child_main(args.child)
        return 0
    if args.table is not None:
        if not Path(args.table).is_file():
            print(f"--table: {args.table} is not a file", file=sys.stderr)
            return 2
        records = [json.loads(line) for line in Path(args.table).read_text().splitlines() if line.strip()]
        print(format_tables(records))
        return 0

    if args.smoke:
        # Smoke figures mean nothing: two children at a time just halve the wall time.
        device, slots, device_name = "cpu", [None] * min(2, os.cpu_count() or 1), "cpu"
    else:
        if not torch.cuda.is_available():
            print("no CUDA device: run on a GPU host, or use --smoke on CPU", file=sys.stderr)
            return 2
        device, slots = "cuda", args.gpus or visible_gpus()
        device_name = torch.cuda.get_device_name(0)
    configs = make_grid(
        args.neurons, args.T, args.dtypes, args.impls, batch=args.batch, steps=args.steps, warmup=args.warmup,
        device=device, smoke=args.smoke, compile_backend="aot_eager" if args.smoke else "inductor",
        compile_mode=args.compile_mode,
    )
    date = datetime.date.today().isoformat()
    path = output_path(args.out, device_name, date, args.smoke)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"device_name": device_name, "date": date, "gpus": len(slots), "batch": args.batch,
            "steps": args.steps, "warmup": args.warmup, "torch": torch.__version__,
            "spikingjelly": spikingjelly_version()}
    print(f"train_bench: {len(configs)} configurations on {len(slots)} {'GPU' if device == 'cuda' else 'CPU'} "
          f"slot(s) -> {path}", flush=True)

    with path.open("w") as fh:
        def sink(record: dict[str, Any]) -> None:
            if fh.closed:  # a worker finishing after Ctrl-C
                return
            fh.write(json.dumps(record) + "\n")
            fh.flush()  # a run cut short keeps what it measured

        # Without SpikingJelly its configurations are recorded, not spawned.
        skipped: list[dict[str, Any]] = []
        if importlib.util.find_spec("spikingjelly") is None:
            skipped = [unavailable_record(c, "spikingjelly is not installed") for c in configs if c.impl in SPIKINGJELLY]
        for record in skipped:
            sink(record)
        t0 = time.perf_counter()
        runnable = [c for c in configs if not (skipped and c.impl in SPIKINGJELLY)]
        try:
            records = run_grid(runnable, slots, args.timeout, sink) + skipped
        except KeyboardInterrupt:
            kill_children()
            print(f"\ninterrupted; the configurations measured so far are in {path}", file=sys.stderr)
            return 130
        summary = summarize(records, {**meta, "wall_s": round(time.perf_counter() - t0, 1)})
        sink(summary)
    print(format_tables([*records, summary]))
    print(f"\nwrote {path}")
    if not args.no_plot:
        try:
            from plot_train import plot_file

            print(f"plot {plot_file(path)}")
        except Exception as exc:  # noqa: BLE001 - the JSONL is the result; the plot is a view of it
            print(f"no plot: {type(exc).__name__}: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
