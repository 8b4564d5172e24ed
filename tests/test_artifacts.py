"""Artifacts: cross-compiled binaries for explicit targets, on a machine without a GPU."""

from __future__ import annotations

import copy
import json

import neurons
import pytest

from flexsn_core import KINDS, IntegrityError, KernelSpec, build_artifacts, counters
from flexsn_core.artifacts import generate, sha256_hex, validate_manifest
from flexsn_core.compile import KernelConfig
from flexsn_core.errors import ArtifactError
from flexsn_core.runtime import KernelSet


@pytest.fixture(scope="module")
def lif_artifact():
    spec = KernelSpec.from_core(neurons.lif_hard, 1, 1, 1)
    events = []
    artifact = build_artifacts(
        spec,
        targets=("cuda:80", "cuda:90"),
        configs=(KernelConfig(1024, 4, 1, True), KernelConfig(1024, 4, 1, False)),
        progress=lambda stage, done, total: events.append((stage, done, total)),
    )
    return spec, artifact, events


def test_every_kind_has_binaries_for_both_targets(lif_artifact) -> None:
    spec, artifact, _ = lif_artifact
    manifest = artifact.manifest
    assert manifest["key"] == spec.key
    have = {(b["kind"], b["target"], b["config_id"]) for b in manifest["binaries"]}
    for kind in KINDS:
        for target in ("cuda:80", "cuda:90"):
            for cid in ("b1024-w4-s1-a16", "b1024-w4-s1-u"):
                assert (kind, target, cid) in have
    assert len(manifest["binaries"]) == 4 * 2 * 2


def test_blobs_are_content_addressed_cubins(lif_artifact) -> None:
    _, artifact, _ = lif_artifact
    artifact.verify()
    for entry in artifact.manifest["binaries"]:
        data = artifact.blobs[entry["sha256"]]
        assert sha256_hex(data) == entry["sha256"] and len(data) == entry["size"]
        assert data[:4] == b"\x7fELF"  # a cubin is an ELF image
        assert entry["launch"]["name"] == f"flexsn_{entry['kind']}"
        assert entry["launch"]["global_scratch_size"] == 0
        assert entry["triton_metadata"]["arch"] == f"sm{entry['target'].split(':')[1]}"
    source = artifact.blobs[artifact.manifest["source"]["sha256"]].decode()
    assert "def flexsn_backward(" in source


def test_manifest_is_plain_json_and_validates(lif_artifact) -> None:
    _, artifact, events = lif_artifact
    again = json.loads(json.dumps(artifact.manifest))
    validate_manifest(again)
    assert events[0] == ("traced", 0, 16) and events[-1] == ("compiled", 16, 16)
    assert set(again["infos"]) == {"inference", "inference_final", "training"}
    assert again["infos"]["training"]["fwd_kernel_returns"] == ["out0", "sseq0", "fin0", "sav0"]


def test_tampered_blob_is_detected(lif_artifact) -> None:
    _, artifact, _ = lif_artifact
    bad = copy.copy(artifact)
    bad.blobs = dict(artifact.blobs)
    sha = artifact.manifest["binaries"][0]["sha256"]
    data = bad.blobs[sha]
    bad.blobs[sha] = data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]
    with pytest.raises(IntegrityError):
        bad.verify()


def test_build_counts_compiles_once_per_binary() -> None:
    spec = KernelSpec.from_core(neurons.alif, 1, 2, 1)
    before = counters()
    artifact = build_artifacts(spec, targets=("cuda:90",), configs=(KernelConfig(512, 4, 1, False),))
    after = counters()
    assert after["compiles"] - before["compiles"] == len(artifact.manifest["binaries"]) == 4
    assert after["traces"] - before["traces"] == 1


def test_interpreter_refuses_source_that_does_not_match(lif_artifact) -> None:
    _, artifact, _ = lif_artifact
    other = generate(KernelSpec.from_core(neurons.lif_soft, 1, 1, 1))
    with pytest.raises(IntegrityError, match="does not match the manifest"):
        KernelSet(artifact.manifest, generated=other)


def test_bad_targets_and_manifests_are_rejected() -> None:
    spec = KernelSpec.from_core(neurons.lif_hard, 1, 1, 1)
    with pytest.raises(ValueError, match="cuda:90"):
        build_artifacts(spec, targets=("sm90",))
    with pytest.raises(ArtifactError, match="malformed manifest"):
        validate_manifest({"format": 1})
