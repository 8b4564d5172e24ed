"""The manifest's vocabulary: format, kinds, size buckets, variants, and the checked field types."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, StrictInt, StrictStr, WithJsonSchema

from ..compile import canonical_target
from ..errors import ArtifactError

__all__ = ["MANIFEST_FORMAT", "BUCKET_BOUNDS", "NUM_BUCKETS", "KINDS", "VARIANTS", "Kind", "Variant", "Sha256",
           "Target", "BucketKey", "Bucket", "ConfigId", "TuningTable", "TuningError", "variant_name"]

#: Version of the manifest's JSON shape. 1 since the first release; the checks
#: added with this module reject only manifests a loader could not have used safely.
MANIFEST_FORMAT = 1

#: Upper bounds (inclusive) of the per-step element counts of the tuning buckets:
#: bucket ``i`` holds counts up to ``BUCKET_BOUNDS[i]``, the last one everything larger.
BUCKET_BOUNDS = (1 << 16, 1 << 20, 1 << 22, 1 << 24)
NUM_BUCKETS = len(BUCKET_BOUNDS) + 1

KINDS = ("inference", "inference_final", "forward", "backward")
VARIANTS = ("aligned", "unaligned")
Kind = Literal["inference", "inference_final", "forward", "backward"]
Variant = Literal["aligned", "unaligned"]

_HEX64 = re.compile(r"[0-9a-f]{64}")


def variant_name(aligned: bool) -> str:
    """The tuning table's name of an alignment variant."""
    return "aligned" if aligned else "unaligned"


class TuningError(ArtifactError, ValueError):
    """A tuned choice does not fit the manifest (unknown config, or not usable for its variant)."""


# ------------------------------------------------------------------ field types
def _sha256(value: str) -> str:
    # re.fullmatch, not a pattern constraint: "$" would let a trailing newline through.
    if not _HEX64.fullmatch(value):
        raise ValueError(f"must be exactly 64 lowercase hex digits (a sha256), got {value[:80]!r}")
    return value


def _target(value: str) -> str:
    canonical = canonical_target(value)  # ValueError for what Triton cannot compile for
    if canonical != value:
        raise ValueError(f"target {value!r} must be written {canonical!r}")
    return value


def _bucket_key(value: str) -> str:
    if value not in {str(b) for b in range(NUM_BUCKETS)}:
        raise ValueError(f"tuning bucket must be one of '0'..'{NUM_BUCKETS - 1}', got {value[:20]!r}")
    return value


Sha256 = Annotated[StrictStr, AfterValidator(_sha256), WithJsonSchema({"type": "string", "pattern": "^[0-9a-f]{64}$"})]
Target = Annotated[
    StrictStr, AfterValidator(_target),
    WithJsonSchema({"type": "string", "pattern": "^cuda:[1-9][0-9]*$", "examples": ["cuda:90"]}),
]
BucketKey = Annotated[StrictStr, AfterValidator(_bucket_key)]
Bucket = Annotated[StrictInt, Field(ge=0, lt=NUM_BUCKETS, description="size bucket (see BUCKET_BOUNDS)")]
ConfigId = Annotated[StrictStr, Field(min_length=1, max_length=64)]
#: ``tuning[target][kind][bucket][variant] = config_id``
TuningTable = dict[Target, dict[Kind, dict[BucketKey, dict[Variant, ConfigId]]]]
