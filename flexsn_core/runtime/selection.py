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

from ..compile import KernelConfig

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

#: Upper bounds (inclusive) of the element-count buckets used for tuning.
BUCKET_BOUNDS = (1 << 16, 1 << 20, 1 << 22, 1 << 24)


def size_bucket(numel: int) -> int:
    """Tuning bucket of a per-step element count: 0 (small) .. 4 (huge)."""
    for i, bound in enumerate(BUCKET_BOUNDS):
        if numel <= bound:
            return i
    return len(BUCKET_BOUNDS)


def variant_name(aligned: bool) -> str:
    """The tuning table's name of an alignment variant."""
    return "aligned" if aligned else "unaligned"


def usable_configs(configs: Sequence[KernelConfig], aligned: bool) -> list[KernelConfig]:
    """Configs that may run a call: aligned binaries only when the call is aligned."""
    return [c for c in configs if aligned or not c.aligned]


def default_config_id(configs: Sequence[KernelConfig], aligned: bool) -> str:
    """Without a tuned choice: the matching variant, block size closest to 1024."""
    pool = [c for c in configs if c.aligned == aligned] or list(configs)
    best = min(pool, key=lambda c: (abs(c.block - 1024), c.num_warps, c.num_stages))
    return best.id


def tuned_config_id(manifest: Mapping[str, Any], target: str, kind: str, bucket: int, aligned: bool) -> str | None:
    """The manifest's tuned config id for (target, kind, bucket, variant), if any."""
    choice = manifest.get("tuning", {}).get(target, {}).get(kind, {}).get(str(bucket))
    if isinstance(choice, dict):
        found = choice.get(variant_name(aligned))
        return found if isinstance(found, str) else None
    return None


def record_choice(
    manifest: dict[str, Any], target: str, kind: str, bucket: int, aligned: bool, config_id: str
) -> None:
    """Write a tuned choice into the manifest's ``tuning`` table (in place)."""
    table = manifest.setdefault("tuning", {}).setdefault(target, {}).setdefault(kind, {})
    table.setdefault(str(bucket), {})[variant_name(aligned)] = config_id


#: ``(kind, device index, size bucket, aligned)``
ChoiceKey = tuple[str, int, int, bool]
#: the chosen launch per key: ``(launchable.launch, block, program cap)`` (cap 0:
#: one program per block; else a persistent launch's most programs). A plain
#: dict: the hot path costs one lookup, ``choices.get((kind, index, size_bucket(n), aligned))``.
ChoiceCache = dict[ChoiceKey, tuple[Any, int, int]]
