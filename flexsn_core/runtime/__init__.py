"""Load and launch a spec's kernels from its artifact, without compiling anything.

    index.py        KernelIndex: a manifest's kernel layouts and binaries by (kind, target, config)
    selection.py    size buckets, usable configs for an alignment, default and tuned choices
    autotune.py     benchmark a bucket's configs with an injectable timer; failures score inf
    launchers/      one Launcher interface: CUDA driver (ctypes), Triton, interpreter
    cuda.py         the CUDA facts asked of PyTorch (target arch, stream, graph capture)
    kernel_set.py   KernelSet: choose a binary per (kind, device, bucket, alignment), load, launch
    kinds.py        the four kinds as tensor functions (run_*), StaticArg
"""

from __future__ import annotations

from ..settings import interpreter_enabled
from .index import KernelIndex
from .kernel_set import BlobFetcher, KernelSet
from .kinds import StaticArg, run_backward, run_forward, run_inference, run_inference_final
from .selection import BUCKET_BOUNDS, default_config_id, size_bucket, usable_configs

#: the name this helper had before the split (tests and callers import it)
_default_config_id = default_config_id

__all__ = [
    "KernelSet",
    "KernelIndex",
    "BlobFetcher",
    "BUCKET_BOUNDS",
    "size_bucket",
    "usable_configs",
    "default_config_id",
    "interpreter_enabled",
    "run_inference",
    "run_inference_final",
    "run_forward",
    "run_backward",
    "StaticArg",
]
