"""The embedded (diskcache) store's own behaviour: no pickles, damage on disk (rows and files), LRU gc, verify.

What every store shares (content addressing, blobs before manifests, listing, sizes, access times,
locks, tuning) is the contract in tests/store_contract.py, run on this store by test_store_contract.py.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import pickle
import sqlite3
import tempfile
from pathlib import Path

import neurons
import pytest
import store_damage

from flexsn_core import KernelSpec
from flexsn_core.artifacts import Artifact, build_artifacts, generate
from flexsn_core.compile import KernelConfig
from flexsn_service.store import DiskStore, open_store


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
            "kind": "inference", "target": "cuda:90", "config_id": config_id(i), "sha256": sha, "size": len(data),
            "config": _config(i).to_dict(), "launch": {}, "triton_metadata": {},
        })
    return Artifact(manifest, blobs)


def _config(i: int) -> KernelConfig:
    """The config of the i-th fake binary: distinct per i; odd ones aligned."""
    return KernelConfig(block=16 * (i + 1), num_warps=4, num_stages=1, aligned=bool(i % 2))


def config_id(i: int) -> str:
    """The (derived) config id of the i-th fake binary of :func:`_artifact`."""
    return _config(i).id


def _put(store: DiskStore, artifact: Artifact, now: float) -> None:
    for sha, data in artifact.blobs.items():
        store.put_blob(sha, data)
    store.put_manifest(artifact.manifest, now=now)


@pytest.fixture
def store(tmp_path):  # noqa: ANN001, ANN201
    s = DiskStore(tmp_path / "store")
    yield s
    s.close()


class _Boom:
    def __reduce__(self):  # noqa: ANN204 - unpickling this would create the marker file
        return (open, (str(_BOOM_MARKER), "w"))


_BOOM_MARKER = Path(tempfile.gettempdir()) / "flexsn-test-unpickled"


def test_store_refuses_to_pickle_or_unpickle(store: DiskStore, tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(TypeError, match="bytes and JSON text only"):
        store._cache.set("manifest:x", {"a": 1})
    # A tampered row whose value (or key) is a pickle is never unpickled: it is dropped as damage.
    _BOOM_MARKER.unlink(missing_ok=True)
    art = _artifact("lif_hard")
    _put(store, art, now=1.0)
    con = sqlite3.connect(tmp_path / "store" / "db" / "cache.db")
    con.execute(
        "INSERT INTO Cache (key, raw, store_time, expire_time, access_time, access_count, tag, size, mode, "
        "filename, value) VALUES (?, 1, 0, NULL, 0, 0, NULL, 0, 4, NULL, ?)",
        ("manifest:" + "a" * 64, pickle.dumps(_Boom())),
    )
    con.execute(
        "INSERT INTO Cache (key, raw, store_time, expire_time, access_time, access_count, tag, size, mode, "
        "filename, value) VALUES (?, 0, 0, NULL, 0, 0, NULL, 0, 1, NULL, ?)",
        (pickle.dumps(_Boom()), b"x"),
    )
    con.commit()
    con.close()
    assert store.get_manifest("a" * 64) is None
    assert "a" * 64 not in list(store.iter_manifest_keys())  # dropped
    assert [i.key for i in store.list()[0]] == [art.key]  # the pickled key is skipped, never loaded
    assert not _BOOM_MARKER.exists()


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
    assert store_damage.rewrite(store.directory, f"blob:{big}", store_damage.flip_tail) == "file"
    report = store.verify()
    assert report.corrupt_blobs == [big] and not report.ok
    report = store.verify(repair=True)
    assert store.get_manifest(art.key) is None  # it lost a blob, so it was dropped
    assert store.verify().ok


def test_open_store_urls(tmp_path) -> None:  # noqa: ANN001
    assert isinstance(open_store(f"disk:{tmp_path}/s"), DiskStore)
    assert type(open_store("redis://localhost:6379/0?prefix=x")).__name__ == "RedisStore"  # connects lazily
    with pytest.raises(ValueError, match="disk:PATH"):
        open_store("s3://bucket")


# ------------------------------------------------------------------ healing
def _big_manifest(name: str) -> Artifact:
    """An artifact whose manifest text is over diskcache's 32 KiB, so it lives in a file."""
    art = _artifact(name, tuple(range(100, 100 + 160)))
    assert len(__import__("json").dumps(art.manifest)) > 40_000
    return art


@pytest.mark.parametrize("size", [500, 70_000], ids=["row", "file"])
def test_a_damaged_blob_is_never_read_and_is_dropped(store: DiskStore, size: int) -> None:
    art = _artifact("lif_hard", (size,))
    _put(store, art, now=1.0)
    sha = next(s for s, d in art.blobs.items() if len(d) >= size)
    where = store_damage.rewrite(store.directory, f"blob:{sha}", store_damage.flip_tail)
    assert where == ("file" if size > 40_000 else "row")
    assert store.read_blob(sha) is None
    assert not store.has_blob(sha)  # dropped
    # the kernel lost a blob: it is a miss now (and dropped), other reads stay fine
    assert store.get_intact_manifest(art.key) is None
    assert store.get_manifest(art.key) is None
    assert store.verify().ok
    # a rebuild stores the blob again
    _put(store, art, now=2.0)
    assert store.read_blob(sha) == art.blobs[sha]
    assert store.get_intact_manifest(art.key) == art.manifest


def test_put_blob_replaces_a_damaged_copy(store: DiskStore) -> None:
    art = _artifact("alif", (500,))
    _put(store, art, now=1.0)
    sha = next(s for s, d in art.blobs.items() if len(d) >= 500)
    store_damage.rewrite(store.directory, f"blob:{sha}", store_damage.flip_tail)
    store.put_blob(sha, art.blobs[sha])  # must not keep the damaged bytes because the key exists
    assert store.read_blob(sha) == art.blobs[sha]


@pytest.mark.parametrize("where", ["row", "file"])
@pytest.mark.parametrize("damage", ["digest", "json", "truncated"])
def test_a_damaged_manifest_is_a_miss_and_is_dropped(store: DiskStore, where: str, damage: str) -> None:
    art = _big_manifest("alif") if where == "file" else _artifact("alif")
    other = _artifact("lif_hard")
    _put(store, art, now=1.0)
    _put(store, other, now=1.0)
    change = {
        "digest": store_damage.edit_json,  # valid JSON, wrong text: only the stored digest tells
        "json": lambda b: b[:-40] + b"{{{{" + b[-36:],
        "truncated": lambda b: b[: len(b) // 2],
    }[damage]
    assert store_damage.rewrite(store.directory, f"manifest:{art.key}", change) == where
    assert not store.verify().ok
    page, _ = store.list()  # listing keeps working, without the damaged one
    assert [i.key for i in page] == [other.key]
    assert store.get_manifest(art.key) is None
    assert art.key not in set(store.iter_manifest_keys())  # dropped
    assert store.get_intact_manifest(other.key) == other.manifest
    store._delete_orphans()
    assert store.verify().ok


def test_a_manifest_in_a_file_that_is_not_utf8_is_dropped(store: DiskStore) -> None:
    art = _big_manifest("plif")
    _put(store, art, now=1.0)
    store_damage.rewrite(store.directory, f"manifest:{art.key}", lambda b: b"\xff\xfe" + b[2:])
    assert store.list()[0] == []
    assert store.get_manifest(art.key) is None


def test_a_manifest_under_another_key_or_without_its_blobs_is_a_miss(store: DiskStore) -> None:
    art, other = _artifact("lif_hard"), _artifact("alif")
    _put(store, art, now=1.0)
    _put(store, other, now=1.0)
    # a manifest copied under another key (e.g. repointed by hand) is refused
    text = store._read_manifest_text(other.key)
    store._cache.set(f"manifest:{art.key}", text)
    assert store.get_manifest(art.key) is None
    # a blob deleted behind the store's back: the manifest is dropped on an intact read
    sha = other.manifest["binaries"][0]["sha256"]
    store.delete_blob(sha)
    assert store.get_manifest(other.key) is not None  # the plain read does not look at blobs
    assert store.get_intact_manifest(other.key) is None
    assert store.get_manifest(other.key) is None


def test_dropping_a_damaged_manifest_keeps_a_newer_one(store: DiskStore) -> None:
    """A reader that saw damage must not delete what a writer stored meanwhile."""
    art = _artifact("lif_hard")
    _put(store, art, now=1.0)
    stale = "sha256:" + "0" * 64 + "\n{}"
    store._drop_manifest(art.key, stale, "test")  # what it read is not what is stored now
    assert store.get_manifest(art.key) == art.manifest


def test_manifests_written_before_digests_still_load(store: DiskStore) -> None:
    art = _artifact("lif_hard")
    _put(store, art, now=1.0)
    store._cache.set(f"manifest:{art.key}", __import__("json").dumps(art.manifest, sort_keys=True))
    assert store.get_manifest(art.key) == art.manifest
    assert store.verify().ok


def test_unreadable_metadata_does_not_break_listing_or_reads(store: DiskStore) -> None:
    art = _artifact("lif_hard")
    _put(store, art, now=1.0)
    store._cache.set(f"meta:{art.key}", "{not json")
    assert [i.key for i in store.list()[0]] == [art.key]
    assert store.get_manifest(art.key, touch=True) == art.manifest
    assert store.info(art.key).last_access > 1.0  # touch rewrote the metadata
