"""Which binary runs a call: size buckets, alignment, tuned choices, defaults.

A call is described by its kernel kind, device, per-step element count ``n``
and whether it is *aligned* (every pointer 16-byte aligned and ``n % 16 == 0``).
Aligned binaries use vector loads, so they may only run aligned calls; an
unaligned binary runs any call. The choice for a (kind, device, size bucket,
alignment) is made once per kernel set and cached (a :data:`ChoiceCache`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .. import manifest as _manifest
from ..compile import KernelConfig
from ..manifest import BUCKET_BOUNDS, TuningChoice, variant_name

__all__ = [
    "BUCKET_BOUNDS",
    "size_bucket",
    "usable_configs",
    "default_config_id",
    "tuned_config_id",
    "record_choice",
    "variant_name",
    "ChoiceKey",
    "ChoiceCache",
]


def size_bucket(numel: int) -> int:
    """Tuning bucket of a per-step element count: 0 (small) .. 4 (huge)."""
    for i, bound in enumerate(BUCKET_BOUNDS):
        if numel <= bound:
            return i
    return len(BUCKET_BOUNDS)


def usable_configs(configs: Sequence[KernelConfig], aligned: bool) -> list[KernelConfig]:
    """Configs that may run a call: aligned binaries only when the call is aligned."""
    return [c for c in configs if aligned or not c.aligned]


def default_config_id(configs: Sequence[KernelConfig], aligned: bool) -> str:
    """Without a tuned choice: the matching variant, block size closest to 1024."""
    pool = [c for c in configs if c.aligned == aligned] or list(configs)
    best = min(pool, key=lambda c: (abs(c.block - 1024), c.num_warps, c.num_stages))
    return best.id


def tuned_config_id(manifest: Mapping[str, Any], target: str, kind: str, bucket: int, aligned: bool) -> str | None:
    """The manifest's usable tuned config id for (target, kind, bucket, variant), if any.

    Read through :func:`flexsn_core.manifest.tuned_config_id`: a choice that does
    not fit the binaries (an aligned-only binary as the unaligned choice, an
    unknown config) is ignored with a warning, as if the bucket were untuned.
    """
    return _manifest.tuned_config_id(manifest, target, kind, bucket, variant_name(aligned))


def record_choice(
    manifest: dict[str, Any], target: str, kind: str, bucket: int, aligned: bool, config_id: str
) -> bool:
    """Record a tuned choice in the manifest (in place, :func:`flexsn_core.manifest.record_tuning`).

    True if it was new; the first choice of a bucket and variant wins.
    """
    choice = TuningChoice(target=target, kind=kind, bucket=bucket, variant=variant_name(aligned), config_id=config_id)
    return _manifest.record_tuning(manifest, choice)


#: ``(kind, device index, size bucket, aligned)``
ChoiceKey = tuple[str, int, int, bool]
#: the chosen launch per key: ``(launchable.launch, block)``. A plain dict: the
#: hot path costs one lookup, ``choices.get((kind, index, size_bucket(n), aligned))``.
ChoiceCache = dict[ChoiceKey, tuple[Any, int]]
