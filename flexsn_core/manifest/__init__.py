"""The manifest: the one contract between the service, the client and the runtime.

A manifest is plain JSON (that is what the store keeps and the service sends;
clients in the field read it), and this module is the only place that says
what a valid one is and the only place that changes one:

* :class:`Manifest` (pydantic) is its schema: the OpenAPI document shows it,
  and :func:`validate_manifest` checks a JSON object against it. One
  validation, everywhere: every sha256 is exactly 64 lowercase hex digits;
  ``config_id`` is derived from ``config`` (a mismatch is an error, never
  trusted); targets are written the canonical way (``cuda:90``, not
  ``cuda:090``); kinds are the four known ones; every binary's kind has a
  kernel; no (kind, target, config) appears twice; and every tuned choice
  names a binary of that kind and target that may run calls of its
  alignment variant (an aligned-only binary cannot be the ``"unaligned"``
  choice: it would read out of bounds on unaligned pointers).
* :func:`record_tuning` records one tuned choice (the first measurement per
  (target, kind, bucket, variant) wins; returns whether it was accepted),
  :func:`merge_manifests` merges the binaries and tuning of two manifests of
  one key. The runtime, the local mirror, the service's store and its tuning
  route all go through these two.
* :func:`tuned_config_id` is the runtime's read of the tuning table: a choice
  that does not fit (a manifest written before this check, or by hand) is
  ignored with a warning, and the runtime tunes or uses its default instead.

The package: ``_types.py`` (format, kinds, buckets, checked field types),
``models.py`` (the schema and :func:`validate_manifest`), ``tuning.py`` (choices:
check, record, read), ``merge.py`` (:func:`merge_manifests`, :func:`restrict_targets`).

The functions take and return the JSON form (``dict``), which is what every
caller holds; :class:`Manifest` is its typed view (``validate_manifest``
returns one). The JSON shape is that of format 1, unchanged: the checks are
new, the fields are not.

Tuning table shape: ``tuning[target][kind][str(bucket)][variant] = config_id``
with ``variant`` in ``("aligned", "unaligned")`` and ``bucket`` a size bucket
(:data:`BUCKET_BOUNDS`).
"""

from __future__ import annotations

from ._types import (
    BUCKET_BOUNDS,
    KINDS,
    MANIFEST_FORMAT,
    NUM_BUCKETS,
    VARIANTS,
    Kind,
    TuningError,
    Variant,
    variant_name,
)
from .merge import merge_manifests, restrict_targets
from .models import Binary, Config, Manifest, referenced_blobs, targets_of, validate_manifest
from .tuning import ReportedChoice, TuningChoice, check_choice, iter_choices, record_tuning, tuned_config_id

__all__ = [
    "MANIFEST_FORMAT",
    "BUCKET_BOUNDS",
    "NUM_BUCKETS",
    "KINDS",
    "VARIANTS",
    "Kind",
    "Variant",
    "Manifest",
    "Binary",
    "Config",
    "ReportedChoice",
    "TuningChoice",
    "TuningError",
    "validate_manifest",
    "referenced_blobs",
    "targets_of",
    "check_choice",
    "record_tuning",
    "iter_choices",
    "tuned_config_id",
    "merge_manifests",
    "restrict_targets",
    "variant_name",
]
