"""Benchmark the configs of a (kind, size bucket, alignment) and pick the fastest.

Launches are idempotent (every kernel overwrites its outputs), so timing runs
on the call's own buffers. A config that fails to load or launch scores
infinity (as Triton's autotuner does) and is simply not chosen; when every
config fails the call fails with the reason.

The timer is injectable: ``timer(run, device) -> milliseconds per launch``.
On a GPU it is :func:`cuda_event_timer`; CPU tests pass a fake.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..compile import KernelConfig
from ..errors import ArtifactError

__all__ = ["Timer", "cuda_event_timer", "autotune", "report_timings", "TuneResult"]

#: ``timer(run, device)``: milliseconds one ``run()`` takes on ``device``.
Timer = Callable[[Callable[[], None], torch.device], float]
#: ``(best config id, {config id: ms or inf})``
TuneResult = tuple[str, dict[str, float]]


def cuda_event_timer(run: Callable[[], None], device: torch.device, *, warmup: int = 3, batches: int = 3, per_batch: int = 8) -> float:
    """The best of a few short batches timed with CUDA events: robust to a stray slow launch."""
    stream = torch.cuda.current_stream(device)
    for _ in range(warmup):
        run()
    best = math.inf
    for _ in range(batches):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(stream)
        for _ in range(per_batch):
            run()
        end.record(stream)
        end.synchronize()
        best = min(best, start.elapsed_time(end) / per_batch)
    return best


def autotune(
    candidates: Sequence[KernelConfig],
    make_run: Callable[[KernelConfig], Callable[[], None]],
    timer: Timer,
    device: torch.device,
    *,
    what: str = "kernel",
) -> TuneResult:
    """Time each candidate (``make_run(config)`` loads it and returns one launch); return the fastest.

    Ties go to the earlier candidate. Raises ArtifactError when every config fails.
    """
    timings: dict[str, float] = {}
    errors: dict[str, str] = {}
    for config in candidates:
        try:
            timings[config.id] = float(timer(make_run(config), device))
        except Exception as exc:  # noqa: BLE001 - a failing config is simply not chosen
            timings[config.id] = math.inf
            errors[config.id] = f"{type(exc).__name__}: {exc}"
    if not timings:
        raise ArtifactError(f"no {what} config to tune")
    best = min(timings, key=timings.__getitem__)
    if math.isinf(timings[best]):
        detail = "; ".join(f"{cid}: {msg}" for cid, msg in errors.items()) or "every timing was infinite"
        raise ArtifactError(f"every {what} config failed to launch ({detail})")
    return best, timings


def report_timings(timings: dict[str, float]) -> dict[str, Any]:
    """Timings as JSON (inf becomes None), rounded for the tuning report."""
    return {k: (None if math.isinf(v) else round(v, 5)) for k, v in timings.items()}
