"""Tuned choices: what one is, whether it fits a manifest, recording one, reading one."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictStr

from ..compile import KernelConfig, canonical_target
from ._types import Bucket, ConfigId, Kind, TuningError, Variant

__all__ = ["ReportedChoice", "TuningChoice", "iter_choices", "check_choice", "record_tuning", "tuned_config_id"]

logger = logging.getLogger("flexsn_core")


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
