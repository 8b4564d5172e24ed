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

The functions take and return the JSON form (``dict``), which is what every
caller holds; :class:`Manifest` is its typed view (``validate_manifest``
returns one). The JSON shape is that of format 1, unchanged: the checks are
new, the fields are not.

Tuning table shape: ``tuning[target][kind][str(bucket)][variant] = config_id``
with ``variant`` in ``("aligned", "unaligned")`` and ``bucket`` a size bucket
(:data:`BUCKET_BOUNDS`).
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from .compile import KernelConfig, canonical_target
from .errors import ArtifactError
from .spec import KernelSpec

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
    "variant_name",
]

logger = logging.getLogger("flexsn_core")

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


# ------------------------------------------------------------------ models
class Config(BaseModel):
    """A binary's launch configuration (:class:`flexsn_core.compile.KernelConfig`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    block: StrictInt = Field(gt=0)
    num_warps: StrictInt = Field(gt=0)
    num_stages: StrictInt = Field(gt=0)
    aligned: StrictBool = Field(description="vector loads: runs only calls with 16-byte aligned pointers and N % 16 == 0")

    def to_config(self) -> KernelConfig:
        return KernelConfig(self.block, self.num_warps, self.num_stages, self.aligned)


class Binary(BaseModel):
    """One compiled kernel: (kind, target, config) and the sha256 of its cubin."""

    model_config = ConfigDict(extra="allow")

    kind: Kind
    target: Target
    config: Config
    config_id: ConfigId = Field(description="derived from config (KernelConfig.id); checked, never trusted")
    sha256: Sha256
    size: StrictInt = Field(ge=0)
    launch: dict[str, Any] = Field(description="what a launcher needs: name, num_warps, shared, ...")
    triton_metadata: dict[str, Any] = Field(default_factory=dict, description="Triton's own metadata")

    @model_validator(mode="after")
    def _config_id_is_derived(self) -> Binary:
        derived = self.config.to_config().id
        if self.config_id != derived:
            raise ValueError(f"config_id {self.config_id!r} does not match its config (which is {derived!r})")
        return self


class KernelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: StrictStr = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    params: list[Annotated[list[StrictStr], Field(min_length=2, max_length=2)]] = Field(
        description="(name, Triton signature type) in signature order; BLOCK is 'constexpr'"
    )


class SourceRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sha256: Sha256
    size: StrictInt = Field(ge=0)


class SavedValue(BaseModel):
    model_config = ConfigDict(extra="allow")

    node: StrictStr
    kind: StrictStr
    index: StrictInt = Field(ge=0)
    dtype: StrictStr


class SavePlan(BaseModel):
    model_config = ConfigDict(extra="allow")

    loads: list[SavedValue]
    recompute: list[StrictStr]
    needs_state_seqs: StrictBool
    bytes_per_step: float


class PathInfo(BaseModel):
    """SpikingJelly's FlexSNInfo of one kernel path."""

    model_config = ConfigDict(extra="allow")

    num_inputs: StrictInt
    num_outputs: StrictInt
    num_states: StrictInt
    fwd_core_args: list[StrictStr]
    fwd_core_returns: list[StrictStr]
    fwd_core_recipients: list[StrictStr]
    fwd_kernel_returns: list[StrictStr]
    num_fwd_kernel_returns: StrictInt
    c2k_return_mapping: list[StrictInt]


class ReportedChoice(BaseModel):
    """One tuned choice as a GPU client reports it (the target is given once per report)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Kind
    bucket: Bucket
    variant: Variant
    config_id: ConfigId


class TuningChoice(ReportedChoice):
    """One tuned choice: the config that won a (target, kind, size bucket, variant)."""

    target: Annotated[StrictStr, AfterValidator(canonical_target)] = Field(
        description="e.g. cuda:90 (any spelling; kept canonical)"
    )

    @classmethod
    def of(cls, decision: Mapping[str, Any]) -> TuningChoice:
        """The choice in a runtime tuning decision (which also carries ``timings_ms``)."""
        return cls.model_validate({k: decision[k] for k in ("target", "kind", "bucket", "variant", "config_id")})


class Manifest(BaseModel):
    """A spec's kernels: the spec, per-path infos, the save plan, the kernel
    signatures, the binaries by (kind, target, config) with their sha256, and the
    tuned choice per (target, kind, size bucket, alignment variant)."""

    model_config = ConfigDict(extra="allow", title="Manifest")

    format: StrictInt = Field(description=f"JSON shape version ({MANIFEST_FORMAT})")
    key: Sha256 = Field(description="the spec key: sha256 of spec + codegen version + Triton version")
    spec: dict[str, Any] = Field(description="the KernelSpec (as POSTed to /v1/kernels)")
    codegen_version: StrictStr
    triton_version: StrictStr
    source: SourceRef = Field(description="the generated Triton module (a blob)")
    infos: dict[StrictStr, PathInfo]
    plan: SavePlan | None = Field(description="what the training forward saves (null: not trainable)")
    differentiable_returns: list[StrictBool]
    kernels: dict[Kind, KernelEntry]
    binaries: list[Binary]
    tuning: TuningTable = Field(default_factory=dict)
    build_seconds: float | None = None

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: int) -> int:
        if value != MANIFEST_FORMAT:
            raise ValueError(f"manifest format {value} is not supported (expected {MANIFEST_FORMAT})")
        return value

    @field_validator("spec")
    @classmethod
    def _valid_spec(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            KernelSpec.from_dict(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"invalid spec: {exc}") from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        kinds = set(self.kernels)
        for kind in ("inference", "inference_final"):
            if kind not in kinds:
                raise ValueError(f"manifest has no {kind!r} kernel")
        if ("forward" in kinds) != ("backward" in kinds):
            raise ValueError("manifest must have both training kernels or neither")
        seen: set[tuple[str, str, str]] = set()
        for b in self.binaries:
            if b.kind not in kinds:
                raise ValueError(f"binary for kind {b.kind!r}, which has no kernel in this manifest")
            ident = (b.kind, b.target, b.config_id)
            if ident in seen:
                raise ValueError(f"two binaries for {b.kind} {b.target} {b.config_id}")
            seen.add(ident)
        configs = {(b.kind, b.target, b.config_id): b.config.aligned for b in self.binaries}
        for choice in iter_choices(self.tuning):
            _check(configs, choice)
        return self


# ------------------------------------------------------------------ validation
def _summary(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False)[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "manifest"
        parts.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def validate_manifest(manifest: Mapping[str, Any]) -> Manifest:
    """The typed manifest; ArtifactError saying what and where if ``manifest`` is not a valid one."""
    if not isinstance(manifest, Mapping):
        raise ArtifactError(f"malformed manifest: expected a JSON object, got {type(manifest).__name__}")
    try:
        return Manifest.model_validate(manifest)
    except ValidationError as exc:
        raise ArtifactError(f"malformed manifest: {_summary(exc)}") from None


def referenced_blobs(manifest: Mapping[str, Any]) -> list[str]:
    """The sha256 of every blob the manifest names: the source, then the binaries."""
    return [manifest["source"]["sha256"], *(b["sha256"] for b in manifest.get("binaries", []))]


def targets_of(manifest: Mapping[str, Any]) -> set[str]:
    """The targets the manifest has binaries for."""
    return {b["target"] for b in manifest.get("binaries", [])}


# ------------------------------------------------------------------ tuning
def iter_choices(tuning: Mapping[str, Any]) -> Iterator[TuningChoice]:
    """Every choice of a tuning table (``manifest["tuning"]``), as :class:`TuningChoice`."""
    for target, kinds in tuning.items():
        for kind, buckets in kinds.items():
            for bucket, variants in buckets.items():
                for variant, config_id in variants.items():
                    yield TuningChoice.model_construct(
                        target=target, kind=kind, bucket=int(bucket), variant=variant, config_id=config_id
                    )


def _configs(manifest: Mapping[str, Any]) -> dict[tuple[str, str, str], bool]:
    """(kind, target, config_id) -> aligned, for every binary (config ids derived, not read)."""
    found = {}
    for b in manifest.get("binaries", []):
        config = KernelConfig.from_dict(b["config"])
        found[(b["kind"], b["target"], config.id)] = config.aligned
    return found


def _check(configs: Mapping[tuple[str, str, str], bool], choice: TuningChoice) -> None:
    if not any(target == choice.target for _, target, _ in configs):
        raise TuningError(f"the kernel has no binaries for {choice.target}")
    aligned = configs.get((choice.kind, choice.target, choice.config_id))
    if aligned is None:
        raise TuningError(f"unknown config {choice.config_id!r} for the {choice.kind} kernel on {choice.target}")
    if aligned and choice.variant == "unaligned":
        raise TuningError(
            f"config {choice.config_id!r} is an aligned-only binary (16-byte aligned pointers, N % 16 == 0) and "
            f"cannot be the 'unaligned' choice of the {choice.kind} kernel on {choice.target} (bucket "
            f"{choice.bucket}): it would read out of bounds; report an unaligned config (its id ends in '-u')"
        )


def check_choice(manifest: Mapping[str, Any], choice: TuningChoice) -> None:
    """Raise TuningError unless ``choice`` names a binary of the manifest usable for its variant."""
    _check(_configs(manifest), choice)


def record_tuning(manifest: dict[str, Any], choice: TuningChoice) -> bool:
    """Record ``choice`` in ``manifest["tuning"]`` (in place); True if it was new.

    The first measurement of a (target, kind, bucket, variant) wins: a later one
    is not recorded (False). TuningError (nothing recorded) if the choice does
    not fit the manifest's binaries.
    """
    check_choice(manifest, choice)
    variants = (
        manifest.setdefault("tuning", {})
        .setdefault(choice.target, {})
        .setdefault(choice.kind, {})
        .setdefault(str(choice.bucket), {})
    )
    if choice.variant in variants:
        return False
    variants[choice.variant] = choice.config_id
    return True


def tuned_config_id(manifest: Mapping[str, Any], target: str, kind: str, bucket: int, variant: str) -> str | None:
    """The tuned config of (target, kind, bucket, variant), if the manifest has a usable one.

    A choice that does not fit the binaries (unknown, or aligned-only for the
    unaligned variant) is ignored with a warning: None, as if untuned.
    """
    found = manifest.get("tuning", {}).get(target, {}).get(kind, {}).get(str(bucket), {})
    config_id = found.get(variant) if isinstance(found, Mapping) else None
    if not isinstance(config_id, str):
        return None
    choice = TuningChoice.model_construct(target=target, kind=kind, bucket=bucket, variant=variant, config_id=config_id)
    try:
        check_choice(manifest, choice)
    except TuningError as exc:
        logger.warning("ignoring the tuned %s choice %r for %s bucket %d (%s): %s",
                       kind, config_id, target, bucket, variant, exc)
        return None
    return config_id


# ------------------------------------------------------------------ merging
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
        record_tuning(merged, choice)
    return merged
