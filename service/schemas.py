"""Request and response bodies of the HTTP API (v1)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


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


class TuningChoice(BaseModel):
    kind: Literal["inference", "inference_final", "forward", "backward"]
    bucket: int = Field(ge=0, le=16)
    variant: Literal["aligned", "unaligned"]
    config_id: str = Field(max_length=64)


class TuningReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str
    choices: list[TuningChoice] = Field(min_length=1, max_length=256)


class Stats(BaseModel):
    hits: int
    misses: int
    builds_started: int
    builds_succeeded: int
    builds_failed: int
    kernels: int
    bytes: int


class Health(BaseModel):
    status: Literal["ok"]
    store: str
    auth: Literal["tokens", "localhost-only"]


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
    log_tail: list[str]


class BuildFailed(BaseModel):
    """A build that ended in failure (``POST /v1/kernels?wait=true``)."""

    detail: BuildFailure
