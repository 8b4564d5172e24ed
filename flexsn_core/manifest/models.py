"""The manifest's schema (pydantic) and its one validation; reading blobs and targets off a manifest."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from ..compile import KernelConfig
from ..errors import ArtifactError
from ..spec import KernelSpec
from ._types import MANIFEST_FORMAT, ConfigId, Kind, Sha256, Target, TuningTable
from .tuning import _check, iter_choices

__all__ = ["Manifest", "Binary", "Config", "KernelEntry", "SourceRef", "SavedValue", "SavePlan", "PathInfo",
           "validate_manifest", "referenced_blobs", "targets_of"]


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
