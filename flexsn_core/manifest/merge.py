"""Merging two manifests of one key, and keeping only some targets of one."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from ..compile import KernelConfig
from ..errors import ArtifactError
from ._types import TuningError
from .tuning import _configs, iter_choices, record_tuning

__all__ = ["merge_manifests", "restrict_targets"]

logger = logging.getLogger("flexsn_core")


def merge_manifests(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """One manifest with the binaries and tuned choices of both (``base``'s first).

    Used when a spec's artifact gains another target (a build for a new arch, a
    mirror fetching another GPU's binaries). A binary ``base`` already has for
    a (kind, target, config) is kept; tuned choices merge one by one, ``base``'s
    winning per (target, kind, bucket, variant). Manifests of two different
    generated sources are never mixed: ``extra`` (the newer) replaces ``base``.
    """
    if base["key"] != extra["key"]:
        raise ArtifactError(f"cannot merge the manifests of two keys ({base['key'][:16]}…, {extra['key'][:16]}…)")
    if base["source"]["sha256"] != extra["source"]["sha256"]:
        logger.warning("manifest %s…: the new one was generated from other source; it replaces the old one",
                       base["key"][:16])
        return copy.deepcopy(dict(extra))
    merged = copy.deepcopy(dict(base))
    have = set(_configs(base))
    for b in extra.get("binaries", []):
        if (b["kind"], b["target"], KernelConfig.from_dict(b["config"]).id) not in have:
            merged["binaries"].append(copy.deepcopy(b))
    merged.setdefault("tuning", {})
    for choice in iter_choices(extra.get("tuning", {})):
        try:
            record_tuning(merged, choice)
        except TuningError as exc:  # only an unvalidated manifest can hold one; never carried over
            logger.warning("manifest %s…: not merging a tuned choice: %s", base["key"][:16], exc)
    return merged


def restrict_targets(manifest: Mapping[str, Any], targets: Iterable[str]) -> dict[str, Any]:
    """The manifest with the binaries and tuned choices of ``targets`` only (a node keeps its GPU's)."""
    keep = set(targets)
    kept = copy.deepcopy(dict(manifest))
    kept["binaries"] = [b for b in kept.get("binaries", []) if b["target"] in keep]
    kept["tuning"] = {t: table for t, table in kept.get("tuning", {}).items() if t in keep}
    return kept
