"""The few CUDA facts the runtime asks PyTorch for, in one place.

Kept apart so CPU tests can stand in for a GPU by replacing these functions
(``monkeypatch.setattr(flexsn_core.runtime.cuda, "target", ...)``).
"""

from __future__ import annotations

import functools

import torch

__all__ = ["target", "stream", "device_index", "capturing", "sm_count"]


def target(index: int) -> str:
    """The compile target of a device, e.g. ``cuda:90``."""
    major, minor = torch.cuda.get_device_capability(index)
    return f"cuda:{major * 10 + minor}"


def stream(device: torch.device) -> int:
    """The raw handle of ``device``'s current stream (per device, not the current device's)."""
    return torch.cuda.current_stream(device).cuda_stream


def device_index(device: torch.device) -> int:
    """``device``'s index (the current device for a bare ``cuda``)."""
    return device.index if device.index is not None else torch.cuda.current_device()


def capturing() -> bool:
    """True while a CUDA graph is being captured (no benchmarking then)."""
    return torch.cuda.is_current_stream_capturing()


@functools.lru_cache(maxsize=None)
def sm_count(index: int) -> int:
    """The device's multiprocessor count (persistent launches size their grid by it)."""
    return int(torch.cuda.get_device_properties(index).multi_processor_count)
