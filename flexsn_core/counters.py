"""Process-wide work counters.

Tests and benchmarks read them to prove that a warm start did no work:
``traces`` (core traced into FX graphs), ``compiles`` (``triton.compile``
calls), ``local_hits`` (artifacts found in the local mirror), ``remote_hits``
and ``remote_misses`` (artifacts asked of the cache service), ``autotunes``
(size buckets benchmarked on a GPU).
"""

from __future__ import annotations

import threading
from collections import Counter

__all__ = ["counters", "reset_counters"]

_NAMES = ("traces", "compiles", "local_hits", "remote_hits", "remote_misses", "autotunes")
_lock = threading.Lock()
_counts: Counter[str] = Counter({name: 0 for name in _NAMES})


def counters() -> dict[str, int]:
    """Return a snapshot of the process-wide counters."""
    with _lock:
        return {name: _counts[name] for name in _NAMES}


def reset_counters() -> None:
    """Set every counter back to zero (tests use this between cases)."""
    with _lock:
        for name in _NAMES:
            _counts[name] = 0


def bump(name: str, amount: int = 1) -> None:
    if name not in _NAMES:
        raise KeyError(f"unknown counter {name!r}; known: {', '.join(_NAMES)}")
    with _lock:
        _counts[name] += amount
