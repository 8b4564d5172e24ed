"""Where a training step's peak memory goes: the tensors alive at the peak, by where they were allocated.

    python bench/train_memory.py --neuron alif --impl ours_compiled --dtype float32 [--T 8] [--batch 128]
    python bench/train_memory.py --smoke      # CPU: builds the network and runs a step (no allocator there)

Builds ``bench/train_bench.py``'s network and implementation, runs a few
warm-up steps, then records one optimizer step with PyTorch's CUDA memory
history (``torch.cuda.memory._record_memory_history``) and replays its
allocation events to find the moment of the peak. It prints what was alive
then: the memory held before the step (weights, gradients, momentum, data),
and every block allocated during the step and not yet freed, grouped by the
innermost frame of our code, the benchmark's or Inductor's generated code
that allocated it, largest first, with the allocating source line (for
Inductor that names the buffer, e.g. ``buf12 = empty_strided_cuda(...)``).

This is the profile behind issue #14's memory figures: ``train_bench`` says how
much, this says which tensors.
"""

from __future__ import annotations

import argparse
import json
import linecache
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import train_bench as tb  # noqa: E402

#: frames from these files say nothing about which tensor it is
_SKIP = ("/torch/", "/triton/", "<frozen", "/functools.py", "/contextlib.py", "train_memory.py")


def _site(frames: list[dict[str, Any]]) -> str:
    """The innermost frame outside torch/triton internals (our ops, the bench, generated code), with its line."""
    for fr in frames:
        name = fr.get("filename", "")
        if not name or any(s in name for s in _SKIP):
            continue
        line = linecache.getline(name, fr.get("line", 0)).strip()
        short = name.rsplit("/", 1)[-1]
        return f"{short}:{fr.get('line')} {fr.get('name')} | {line[:90]}"
    return "(no python frame)"


def live_at_peak(snapshot: dict[str, Any], device: int = 0) -> tuple[int, list[tuple[int, str]]]:
    """Replay the device's allocation events: (peak bytes above the start, the blocks alive at that moment)."""
    live: dict[int, tuple[int, str]] = {}
    total = peak = 0
    at_peak: list[tuple[int, str]] = []
    for event in snapshot["device_traces"][device]:
        action, addr, size = event["action"], event["addr"], event["size"]
        if action == "alloc":
            live[addr] = (size, _site(event.get("frames", [])))
            total += size
            if total > peak:
                peak, at_peak = total, list(live.values())
        elif action == "free_completed" and addr in live:
            total -= live.pop(addr)[0]
    return peak, at_peak


def profile(cfg: tb.Config, *, warmup: int) -> dict[str, Any]:
    device = torch.device(cfg.device)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    size = tb.SMOKE_SIZE if cfg.smoke else tb.SIZE
    x = torch.randn(cfg.T, cfg.batch, 3, size, size, generator=g).to(device)
    y = torch.randint(0, tb.CLASSES, (cfg.batch,), generator=g).to(device)
    make_neuron = tb.neuron_factory(cfg, device, tb.neuron_input_dtype(device, cfg.dtype), {})
    model = tb.SpikingConvNet(make_neuron, tb.SMOKE_BLOCKS if cfg.smoke else tb.BLOCKS, size).to(device)
    forward = torch.compile(model) if cfg.impl in tb.COMPILED else model
    optimizer = torch.optim.SGD(model.parameters(), lr=tb.LR, momentum=tb.MOMENTUM)

    def step() -> None:
        model.reset_neurons()
        optimizer.zero_grad(set_to_none=True)
        with tb.autocast(device, cfg.dtype):
            loss = F.cross_entropy(forward(x), y)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    if device.type != "cuda":
        return {"config": cfg.label, "note": "no CUDA allocator: the step ran, nothing to profile"}
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    torch.cuda.memory._record_memory_history(max_entries=1_000_000, stacks="python")
    step()
    torch.cuda.synchronize(device)
    snapshot = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    peak_above, blocks = live_at_peak(snapshot, device.index or 0)
    by_site: dict[str, list[int]] = defaultdict(list)
    for size_b, site in blocks:
        by_site[site].append(size_b)
    rows = sorted(((sum(s), len(s), site) for site, s in by_site.items()), reverse=True)
    return {
        "config": cfg.label,
        "before_step_gb": round(before / 1e9, 4),
        "replayed_peak_gb": round((before + peak_above) / 1e9, 4),
        "max_memory_allocated_gb": round(torch.cuda.max_memory_allocated(device) / 1e9, 4),
        "at_peak": [{"gb": round(b / 1e9, 4), "blocks": n, "site": site} for b, n, site in rows],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--neuron", default="alif", choices=sorted(tb.NEURONS))
    p.add_argument("--impl", default="ours_compiled", choices=tb.ALL_IMPLS)
    p.add_argument("--dtype", default="float32", choices=tb.DTYPES)
    p.add_argument("--T", type=int, default=8)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--top", type=int, default=25, help="allocation sites printed")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny network: the script runs end to end")
    args = p.parse_args(argv)
    cfg = tb.Config(neuron=args.neuron, T=2 if args.smoke else args.T, dtype=args.dtype, impl=args.impl,
                    batch=2 if args.smoke else args.batch, steps=1, warmup=args.warmup,
                    device="cpu" if args.smoke else "cuda", smoke=args.smoke)
    result = profile(cfg, warmup=1 if args.smoke else args.warmup)
    rows = result.pop("at_peak", [])
    print(json.dumps(result))
    for row in rows[: args.top]:
        print(f"  {row['gb']:8.4f} GB  x{row['blocks']:<3d} {row['site']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
