"""Request and response bodies of the HTTP API (v1)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from flexsn_core.manifest import Manifest, ReportedChoice

__all__ = ["SpecIn", "BuildRequest", "BuildAccepted", "BuildStatus", "KernelSummary", "KernelPage", "Manifest",
           "TuningChoice", "TuningReport", "TuningResult", "Stats", "Health", "ErrorMessage", "BuildFailure",
           "BuildFailed"]


class SpecIn(BaseModel):
    """A KernelSpec as JSON (see flexsn_core.KernelSpec)."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(min_length=1, description="self-contained module text defining `entry`")
    entry: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    num_inputs: int = Field(ge=1, le=64)
    num_states: int = Field(ge=0, le=64)
    num_outputs: int = Field(ge=0, le=64)
    num_static: int = Field(default=0, ge=0, le=64)
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    requires_grad: list[bool] | None = None
    surrogates: dict[str, dict[str, Any]] | None = Field(
        default=None, max_length=64,
        description="surrogate spike functions the source uses without defining them, as data: "
                    '{name: {"form": "instance", "kind": "Sigmoid", "params": {"alpha": 4.0}}} '
                    "(see flexsn_core.surrogate); checked by KernelSpec",
    )


class BuildRequest(SpecIn):
    targets: list[str] | None = Field(default=None, description="e.g. ['cuda:90']; default: the service's targets")


class BuildAccepted(BaseModel):
    build_id: str
    key: str
    state: str
    status_url: str


class BuildStatus(BaseModel):
    build_id: str
    key: str
    state: Literal["queued", "running", "succeeded", "failed"]
    targets: list[str]
    progress: dict[str, Any]
    error: str | None
    error_type: str | None
    user_error: bool = Field(description="a failure caused by the core (the client raises error_type), not the service")
    error_op: str | None = Field(description="UnsupportedOpError: the aten op")
    error_line: int | None = Field(description="UnsupportedOpError: the line of the core source")
    log_tail: list[str]
    created: float
    started: float | None
    finished: float | None


class KernelSummary(BaseModel):
    key: str
    entry: str
    dtype: str
    targets: list[str]
    bytes: int
    created: float
    last_access: float


class KernelPage(BaseModel):
    items: list[KernelSummary]
    next_cursor: str | None


class TuningChoice(ReportedChoice):
    """One reported choice (the schema is flexsn_core.manifest's: kinds, buckets, variants)."""


class TuningReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str
    choices: list[TuningChoice] = Field(min_length=1, max_length=256)


class Versions(BaseModel):
    """What keys and binaries depend on (codegen, Triton), and the service's own versions."""

    package: str = Field(description="the flexsn-cache distribution")
    api: str = Field(description="the HTTP API version (the /v1 prefix)")
    codegen: str = Field(description="flexsn_core's codegen version: part of every kernel key")
    ir: str = Field(description="the version of the traced-graph IR the jail emits")
    triton: str = Field(description="part of every kernel key; binaries load only with this Triton")
    torch: str
    python: str


class TargetStats(BaseModel):
    kernels: int = Field(description="stored kernels with binaries for this target")
    last_use: float | None = Field(description="latest access of any of them (epoch seconds)")


class Stats(BaseModel):
    """Counters of this service instance since ``started``, and the store's size."""

    hits: int
    misses: int
    hit_rate: float | None = Field(description="hits / (hits + misses); null before the first request")
    builds_started: int
    builds_succeeded: int
    builds_failed: int
    builds_in_flight: int = Field(description="queued or running now")
    builds_failed_last_hour: int
    kernels: int
    bytes: int = Field(description="blob bytes in the store")
    max_bytes: int | None = Field(description="the store's size limit; null: none")
    store: str = Field(description="the store's kind (disk, redis); never its address")
    by_target: dict[str, TargetStats] = Field(description="stored kernels per target")
    by_target_complete: bool = Field(
        description="false if the store held more kernels than one census reads (then by_target counts the first)"
    )
    started: float = Field(description="when this instance started counting (epoch seconds)")
    versions: Versions


class Health(BaseModel):
    status: Literal["ok"]
    store: str
    auth: Literal["tokens", "localhost-only"]
    versions: Versions


class TuningResult(BaseModel):
    accepted: int = Field(description="how many of the reported choices were new (the first per bucket wins)")
    tuning: dict[str, Any] = Field(description="the target's tuning table after the report")


# ------------------------------------------------------------------ errors
class ErrorMessage(BaseModel):
    """Every error the service answers has this body (``detail`` says what to do)."""

    detail: str


class BuildFailure(BaseModel):
    message: str
    build_id: str
    error_type: str | None
    error_op: str | None = None
    error_line: int | None = None
    log_tail: list[str]


class BuildFailed(BaseModel):
    """A build that ended in failure (``POST /v1/kernels?wait=true``)."""

    detail: BuildFailure
