"""``collect_specs()``: learn which kernels a model needs without building them.

While the block runs, every kernel-backend FlexSN records its spec instead of
building (or fetching) kernels. ``flexsn-cache warm`` uses this to prefetch a
training script's kernels at job start.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ..spec import KernelSpec

__all__ = ["collect_specs", "collector"]

_collector: list[KernelSpec] | None = None


def collector() -> list[KernelSpec] | None:
    """The list specs are recorded into, while ``collect_specs()`` runs; else None."""
    return _collector


@contextlib.contextmanager
def collect_specs() -> Iterator[list[KernelSpec]]:
    """Record the spec of every FlexSN built inside the block, building nothing."""
    global _collector
    previous, _collector = _collector, []
    try:
        yield _collector
    finally:
        _collector = previous
