"""The embedded store: content addressing, ordering, no pickles, LRU gc, verify."""

from __future__ import annotations

import copy
import functools
import hashlib
import pickle
import sqlite3
import time

import neurons
import pytest

from flexsn_core import IntegrityError, KernelSpec
from flexsn_core.artifacts import Artifact, build_artifacts, generate
from flexsn_core.errors import ArtifactError
from flexsn_service.store import DiskStore, StoreError, open_store


@functools.lru_cache(maxsize=None)
def _base_artifact(name: str) -> Artifact:
    model = neurons.MODELS[name]
    spec = KernelSpec.from_core(model.core, model.num_inputs, model.num_states, model.num_outputs,
                                num_static=len(model.statics))
    return build_artifacts(spec, targets=(), generated=generate(spec))


def _artifact(name: str, binary_sizes: tuple[int, ...] = (1000,), shared: bytes | None = None) -> Artifact:
    """A real manifest (no compile) plus fake binaries, optionally one shared between artifacts."""
    base = _base_artifact(name)
    manifest, blobs = copy.deepcopy(base.manifest), dict(base.blobs)
    payloads = [name.encode() * (size // len(name) + 1) for size in binary_sizes]
    if shared is not None:
        payloads.append(shared)
    for i, data in enumerate(payloads):
        sha = hashlib.sha256(data).hexdigest()
        blobs[sha] = data
        manifest["binaries"].append({
            "kind": "inference", "target": "cuda:90", "config_id": f"c{i}", "sha256": sha, "size": len(data),
            "config": {"block": 1024, "num_warps": 4, "num_stages": 1, "aligned": bool(i % 2)},
            "launch": {}, "triton_metadata": {},
        })
    return Artifact(manifest, blobs)


def _put(store: DiskStore, artifact: Artifact, now: float) -> None:
    for sha, data in artifact.blobs.items():
        store.put_blob(sha, data)
    store.put_manifest(artifact.manifest, now=now)


@pytest.fixture
def store(tmp_path):  # noqa: ANN001, ANN201
    s = DiskStore(tmp_path / "store")
    yield s
    s.close()


def test_round_trip_and_listing(store: DiskStore) -> None:
    art = _artifact("lif_hard")
    _put(store, art, now=1.0)
    assert store.get_manifest(art.key) == art.manifest
    for sha, data in art.blobs.items():
        assert store.read_blob(sha) == data and store.blob_size(sha) == len(data)
    page, cursor = store.list()
    assert [i.key for i in page] == [art.key] and cursor is None
    assert store.stats() == {"kernels": 1, "bytes": sum(len(b) for b in art.blobs.values())}


def test_blobs_are_checked_and_manifests_need_their_blobs(store: DiskStore) -> None:
    with pytest.raises(IntegrityError):
        store.put_blob("0" * 64, b"not zeros")
    art = _artifact("alif")
    with pytest.raises(ArtifactError, match="not stored"):
        store.put_manifest(art.manifest, now=1.0)
    assert store.get_manifest(art.key) is None


def test_store_refuses_to_pickle_or_unpickle(store: DiskStore, tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(TypeError, match="bytes and JSON text only"):
        store._cache.set("manifest:x", {"a": 1})
    # A tampered row whose value is a pickle is never unpickled.
    db = tmp_path / "store" / "db" / "cache.db"
    con = sqlite3.connect(db)
    con.execute(
        "INSERT INTO Cache (key, raw, store_time, expire_time, access_time, access_count, tag, size, mode, "
        "filename, value) VALUES (?, 1, 0, NULL, 0, 0, NULL, 0, 4, NULL, ?)",
        ("manifest:" + "a" * 64, pickle.dumps({"evil": True})),
    )
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="refusing to unpickle"):
        store.get_manifest("a" * 64)


def test_gc_evicts_least_recently_used_and_keeps_shared_blobs(store: DiskStore) -> None:
    shared = b"shared binary" * 100
    arts = {name: _artifact(name, (5000,), shared=shared) for name in ("lif_hard", "alif", "izhikevich")}
    for i, art in enumerate(arts.values()):
        _put(store, art, now=100.0 + i)
    store.touch(arts["lif_hard"].key, now=200.0)  # used recently: survives
    total = store.stats()["bytes"]
    one = sum(len(b) for sha, b in arts["alif"].blobs.items() if b != shared)
    report = store.gc(total - one)  # room for everything but one kernel
    assert report.evicted_manifests == [arts["alif"].key]
    assert store.get_manifest(arts["alif"].key) is None
    assert store.get_manifest(arts["lif_hard"].key) is not None
    assert store.has_blob(hashlib.sha256(shared).hexdigest())  # still used by the others
    assert report.bytes_after <= total - one
    assert store.verify().ok
    report = store.gc(0)
    assert store.stats() == {"kernels": 0, "bytes": 0}
    assert len(report.evicted_manifests) == 2


def test_verify_finds_corruption_and_missing_blobs_and_repairs(store: DiskStore) -> None:
    art = _artifact("lif_soft", (70000,))  # large enough to live in a file
    _put(store, art, now=1.0)
    assert store.verify().ok
    big = max(art.blobs, key=lambda sha: len(art.blobs[sha]))
    with store.open_blob(big) as fh:
        path = fh.name
    with open(path, "r+b") as fh:
        fh.write(b"XXXX")
    report = store.verify()
    assert report.corrupt_blobs == [big] and not report.ok
    report = store.verify(repair=True)
    assert store.get_manifest(art.key) is None  # it lost a blob, so it was dropped
    assert store.verify().ok


def test_open_store_urls(tmp_path) -> None:  # noqa: ANN001
    assert isinstance(open_store(f"disk:{tmp_path}/s"), DiskStore)
    with pytest.raises(NotImplementedError, match="Redis"):
        open_store("redis://localhost:6379/0")
    with pytest.raises(ValueError, match="disk:PATH"):
        open_store("s3://bucket")


def test_delete_kernel_removes_unshared_blobs(store: DiskStore) -> None:
    a, b = _artifact("lif_hard", (300,)), _artifact("alif", (300,))
    _put(store, a, now=time.time())
    _put(store, b, now=time.time())
    assert store.delete_kernel(a.key)
    assert not store.delete_kernel(a.key)
    assert all(not store.has_blob(sha) for sha in a.blobs)
    assert all(store.has_blob(sha) for sha in b.blobs)
