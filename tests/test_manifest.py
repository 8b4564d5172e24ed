"""flexsn_core.manifest: one validation, one way to record a tuned choice, one way to merge."""

from __future__ import annotations

import copy
import json
import logging

import pytest
from store_contract import config, make_artifact

from flexsn_core.codegen.kernels import KINDS
from flexsn_core.errors import ArtifactError
from flexsn_core.manifest import (
    KINDS as MANIFEST_KINDS,
)
from flexsn_core.manifest import (
    Manifest,
    TuningChoice,
    TuningError,
    merge_manifests,
    record_tuning,
    restrict_targets,
    tuned_config_id,
    validate_manifest,
)
from flexsn_core.runtime.selection import record_choice


def _manifest(n: int = 1, binaries: int = 2, target: str = "cuda:90") -> dict:
    return make_artifact(n, binaries, target=target).manifest


def _choice(**kw: object) -> TuningChoice:
    base = {"target": "cuda:90", "kind": "inference", "bucket": 1, "variant": "aligned", "config_id": config(0).id}
    return TuningChoice.model_validate({**base, **kw})


def test_a_valid_manifest_round_trips_as_json() -> None:
    manifest = _manifest()
    typed = validate_manifest(json.loads(json.dumps(manifest)))
    assert isinstance(typed, Manifest) and typed.key == manifest["key"]
    assert typed.binaries[0].config.to_config() == config(0)
    assert MANIFEST_KINDS == KINDS


def _broken(change) -> dict:  # noqa: ANN001
    manifest = copy.deepcopy(_manifest())
    change(manifest)
    return manifest


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.update(format=2), "format 2 is not supported"),
        (lambda m: m.update(key=m["key"] + "\n"), "64 lowercase hex"),
        (lambda m: m.update(key=m["key"].upper()), "64 lowercase hex"),
        (lambda m: m["source"].update(sha256="abc"), "64 lowercase hex"),
        (lambda m: m["binaries"][0].update(sha256=m["binaries"][0]["sha256"][:-1] + "G"), "64 lowercase hex"),
        (lambda m: m["binaries"][0].update(config_id=config(1).id), "does not match its config"),
        (lambda m: m["binaries"][0]["config"].update(block=4096), "does not match its config"),
        (lambda m: m["binaries"][0].update(target="cuda:090"), "must be written 'cuda:90'"),
        (lambda m: m["binaries"][0].update(target="sm90"), "cuda:<compute capability>"),
        (lambda m: m["binaries"][0].update(kind="sideways"), "binaries.0.kind"),
        (lambda m: m["binaries"].append(m["binaries"][0]), "two binaries for inference cuda:90"),
        (lambda m: m["kernels"].pop("inference_final"), "no 'inference_final' kernel"),
        (lambda m: m["kernels"].pop("backward"), "both training kernels or neither"),
        (lambda m: m["spec"].update(dtype="int8"), "invalid spec"),
        (lambda m: m.update(tuning={"cuda:90": {"inference": {"9": {"aligned": config(0).id}}}}), "tuning bucket"),
        (lambda m: m.update(tuning={"cuda:90": {"inference": {"1": {"unaligned": config(1).id}}}}),
         "aligned-only binary"),
        (lambda m: m.update(tuning={"cuda:90": {"inference": {"1": {"aligned": "b1-w1-s1-u"}}}}), "unknown config"),
        (lambda m: m.update(tuning={"cuda:80": {"inference": {"1": {"aligned": config(0).id}}}}),
         "no binaries for cuda:80"),
    ],
)
def test_what_validation_refuses(change, message: str) -> None:  # noqa: ANN001
    with pytest.raises(ArtifactError, match=f"malformed manifest: .*{message}"):
        validate_manifest(_broken(change))


def test_record_tuning_first_writer_wins_and_checks_alignment() -> None:
    manifest = _manifest()  # config 0 unaligned, config 1 aligned-only
    assert record_tuning(manifest, _choice())
    assert not record_tuning(manifest, _choice(config_id=config(1).id))  # the bucket is taken
    assert record_tuning(manifest, _choice(variant="unaligned"))
    with pytest.raises(TuningError, match="cannot be the 'unaligned' choice"):
        record_tuning(manifest, _choice(bucket=2, variant="unaligned", config_id=config(1).id))
    assert manifest["tuning"] == {"cuda:90": {"inference": {"1": {"aligned": config(0).id,
                                                                  "unaligned": config(0).id}}}}
    validate_manifest(manifest)
    # the runtime records through the same function
    assert record_choice(manifest, "cuda:90", "inference", 3, True, config(1).id)
    with pytest.raises(TuningError):
        record_choice(manifest, "cuda:90", "inference", 3, False, config(1).id)


def test_tuning_choices_are_canonical_and_bounded() -> None:
    assert _choice(target="cuda:090").target == "cuda:90"
    for bad in ({"bucket": 5}, {"bucket": -1}, {"variant": "both"}, {"kind": "sideways"}, {"target": "sm90"}):
        with pytest.raises(ValueError):
            _choice(**bad)


def test_the_runtime_ignores_a_tuned_choice_that_does_not_fit_with_a_warning(caplog) -> None:  # noqa: ANN001
    manifest = _manifest()
    manifest["tuning"] = {"cuda:90": {"inference": {"0": {"unaligned": config(1).id, "aligned": config(1).id}}}}
    with caplog.at_level(logging.WARNING, logger="flexsn_core"):
        assert tuned_config_id(manifest, "cuda:90", "inference", 0, "unaligned") is None
    assert "ignoring the tuned inference choice" in caplog.text and "aligned-only binary" in caplog.text
    assert tuned_config_id(manifest, "cuda:90", "inference", 0, "aligned") == config(1).id
    assert tuned_config_id(manifest, "cuda:90", "inference", 1, "aligned") is None


def test_merge_adds_binaries_and_merges_tuning_choice_by_choice() -> None:
    base, extra = _manifest(1, 2, "cuda:80"), _manifest(1, 2, "cuda:90")
    extra["binaries"] += copy.deepcopy(base["binaries"])  # binaries both have: base's are kept
    record_tuning(base, _choice(target="cuda:80"))
    record_tuning(extra, _choice(target="cuda:80", config_id=config(1).id))  # loses: base was first
    record_tuning(extra, _choice(target="cuda:80", bucket=2))  # same target, new bucket: kept
    record_tuning(extra, _choice())
    merged = merge_manifests(base, extra)
    assert [(b["target"], b["config_id"]) for b in merged["binaries"]] == [
        ("cuda:80", config(0).id), ("cuda:80", config(1).id), ("cuda:90", config(0).id), ("cuda:90", config(1).id)]
    assert merged["tuning"] == {
        "cuda:80": {"inference": {"1": {"aligned": config(0).id}, "2": {"aligned": config(0).id}}},
        "cuda:90": {"inference": {"1": {"aligned": config(0).id}}},
    }
    validate_manifest(merged)
    assert base["tuning"]["cuda:80"]["inference"] == {"1": {"aligned": config(0).id}}  # inputs unchanged


def test_merge_never_mixes_keys_or_sources() -> None:
    with pytest.raises(ArtifactError, match="two keys"):
        merge_manifests(_manifest(1), _manifest(2))
    base, newer = _manifest(1, 2, "cuda:80"), _manifest(1, 1, "cuda:90")
    newer["source"] = {**newer["source"], "sha256": "e" * 64}  # generated from other code
    assert merge_manifests(base, newer) == newer


def test_restricting_to_targets_keeps_their_binaries_and_tuning_only() -> None:
    both = merge_manifests(_manifest(1, 2, "cuda:80"), _manifest(1, 2, "cuda:90"))
    record_tuning(both, _choice())  # cuda:90
    record_tuning(both, _choice(target="cuda:80"))
    mine = restrict_targets(both, ["cuda:80"])
    assert {b["target"] for b in mine["binaries"]} == {"cuda:80"} and set(mine["tuning"]) == {"cuda:80"}
    validate_manifest(mine)  # a tuned choice of a target without binaries would not validate
    assert len(both["binaries"]) == 4 and set(both["tuning"]) == {"cuda:80", "cuda:90"}  # input unchanged
