"""The artifact store contract: what every :class:`flexsn_core.store.ArtifactStore` must do.

``tests/test_store_contract.py`` runs :class:`StoreContract` against every
implementation (the client's mirror, the service's diskcache store, ...) through
its parametrized ``store`` fixture. Damage is made through the store's own
storage primitives (``_write_blob``, ``_write_manifest_text``), so the contract
needs nothing implementation-specific; how each backend's bytes rot on disk is
tested beside it (tests/test_store.py).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import threading
from collections.abc import Callable
from typing import Any

import neurons
import pytest

from flexsn_core import KernelSpec
from flexsn_core.artifacts import Artifact, build_artifacts, generate
from flexsn_core.compile import KernelConfig
from flexsn_core.errors import ArtifactError, IntegrityError
from flexsn_core.manifest import TuningChoice, TuningError
from flexsn_core.store import ArtifactStore

__all__ = ["StoreContract", "make_artifact"]


@functools.lru_cache(maxsize=1)
def _head() -> dict[str, Any]:
    """A real manifest of LIF with no binaries (traced once, nothing compiled)."""
    spec = KernelSpec.from_core(neurons.lif_hard, 1, 1, 1)
    return build_artifacts(spec, targets=(), generated=generate(spec)).manifest


def config(i: int) -> KernelConfig:
    """The i-th fake binary's config: distinct per i, odd ones aligned-only."""
    return KernelConfig(block=64 * (i + 1), num_warps=4, num_stages=1, aligned=bool(i % 2))


def make_artifact(n: int, binaries: int = 2, *, target: str = "cuda:90", size: int = 300,
                  shared: bytes | None = None) -> Artifact:
    """Kernel ``n`` (its own key and source) with fake binaries for ``target``; ``shared`` adds one more
    binary whose bytes other artifacts may share."""
    head = copy.deepcopy(_head())
    spec = {**head["spec"], "source": head["spec"]["source"] + f"\n# kernel {n}\n"}
    source = f"# generated source of kernel {n}\n".encode()
    manifest = {**head, "spec": spec, "key": KernelSpec.from_dict(spec).key, "binaries": [], "tuning": {},
                "source": {"sha256": hashlib.sha256(source).hexdigest(), "size": len(source)}}
    blobs = {manifest["source"]["sha256"]: source}
    payloads = [f"{n}/{target}/{i}|".encode() * (size // 8 + 1) for i in range(binaries)]
    payloads += [shared] if shared is not None else []
    for i, data in enumerate(payloads):
        sha = hashlib.sha256(data).hexdigest()
        blobs[sha] = data
        manifest["binaries"].append({
            "kind": "inference", "target": target, "config": config(i).to_dict(), "config_id": config(i).id,
            "sha256": sha, "size": len(data), "launch": {"name": "flexsn_inference"}, "triton_metadata": {},
        })
    return Artifact(manifest, blobs)


def put(store: ArtifactStore, artifact: Artifact, now: float = 1.0) -> None:
    for sha, data in artifact.blobs.items():
        store.put_blob(sha, data)
    store.put_manifest(artifact.manifest, now=now)


def blob_bytes(artifact: Artifact) -> int:
    return sum(len(data) for data in artifact.blobs.values())


def run_threads(count: int, work: Callable[[int], Any]) -> list[Any]:
    """Run ``work(i)`` in ``count`` threads started together; their results (an exception fails the test)."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work(i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    return results


class StoreContract:
    """Tests every store must pass; a subclass provides the ``store`` fixture."""

    # ------------------------------------------------------------- blobs
    def test_blobs_round_trip_by_sha256(self, store: ArtifactStore) -> None:
        data = b"cubin bytes" * 10
        sha = hashlib.sha256(data).hexdigest()
        assert not store.has_blob(sha) and store.read_blob(sha) is None and store.blob_size(sha) is None
        with pytest.raises(ArtifactError, match="not in the store"):
            store.get_blob(sha)
        store.put_blob(sha, data)
        store.put_blob(sha, data)  # idempotent
        assert store.has_blob(sha) and store.read_blob(sha) == data and store.get_blob(sha) == data
        assert store.blob_size(sha) == len(data) and list(store.iter_blobs()) == [sha]
        store.delete_blob(sha)
        store.delete_blob(sha)  # no error if absent
        assert not store.has_blob(sha) and list(store.iter_blobs()) == []

    def test_a_blob_whose_bytes_do_not_match_its_name_is_refused(self, store: ArtifactStore) -> None:
        with pytest.raises(IntegrityError, match="hash to something else"):
            store.put_blob("0" * 64, b"not zeros")
        assert not store.has_blob("0" * 64)

    def test_a_corrupt_blob_is_never_returned_and_is_dropped(self, store: ArtifactStore) -> None:
        data = b"good bytes" * 50
        sha = hashlib.sha256(data).hexdigest()
        store.put_blob(sha, data)
        store._write_blob(sha, data[:-1] + b"!")  # what a bad sector or a cut-short copy leaves
        assert store.read_blob(sha) is None
        assert not store.has_blob(sha)  # dropped
        assert not store.blob_intact(sha)
        store.put_blob(sha, data)  # storing it again replaces the damaged copy
        assert store.read_blob(sha) == data

    # --------------------------------------------------------- manifests
    def test_a_manifest_is_refused_while_a_blob_is_missing(self, store: ArtifactStore) -> None:
        art = make_artifact(1)
        last = art.manifest["binaries"][-1]["sha256"]
        for sha, data in art.blobs.items():
            if sha != last:
                store.put_blob(sha, data)
        with pytest.raises(ArtifactError, match="not stored"):
            store.put_manifest(art.manifest, now=1.0)
        assert store.get_manifest(art.key) is None and list(store.iter_manifest_keys()) == []
        store.put_blob(last, art.blobs[last])
        store.put_manifest(art.manifest, now=1.0)
        assert store.get_manifest(art.key) == art.manifest == store.get_intact_manifest(art.key)

    def test_an_invalid_manifest_is_refused(self, store: ArtifactStore) -> None:
        art = make_artifact(2)
        for sha, data in art.blobs.items():
            store.put_blob(sha, data)
        bad = copy.deepcopy(art.manifest)
        bad["binaries"][0]["config_id"] = config(1).id  # not the id its config derives
        with pytest.raises(ArtifactError, match="does not match its config"):
            store.put_manifest(bad, now=1.0)
        assert store.get_manifest(art.key) is None

    def test_a_manifest_whose_digest_does_not_match_is_a_miss_and_is_dropped(self, store: ArtifactStore) -> None:
        art, other = make_artifact(3), make_artifact(4)
        put(store, art)
        put(store, other)
        stored = store._read_manifest_text(art.key)
        assert stored is not None and stored.startswith("sha256:")
        digest, text = stored.split("\n", 1)
        edited = json.loads(text)
        edited["build_seconds"] = 123.0  # still a valid manifest: only the digest tells
        store._write_manifest_text(art.key, digest + "\n" + json.dumps(edited, sort_keys=True), {})
        assert not store.verify().ok
        assert store.get_manifest(art.key) is None
        assert art.key not in set(store.iter_manifest_keys())  # dropped
        assert store.get_intact_manifest(other.key) == other.manifest
        store._delete_orphans()
        assert store.verify().ok

    def test_a_manifest_that_lost_a_blob_is_a_miss(self, store: ArtifactStore) -> None:
        art = make_artifact(5)
        put(store, art)
        store.delete_blob(art.manifest["binaries"][0]["sha256"])
        assert store.get_manifest(art.key) is not None  # a plain read does not look at blobs
        assert store.get_intact_manifest(art.key) is None  # an intact read does, and drops it
        assert store.get_manifest(art.key) is None

    # ---------------------------------------------- listing, access times, sizes
    def test_listing_pages_in_key_order(self, store: ArtifactStore) -> None:
        arts = [make_artifact(10 + i) for i in range(5)]
        for art in arts:
            put(store, art)
        keys, cursor, pages = [], None, 0
        while True:
            page, cursor = store.list(after=cursor, limit=2)
            keys += [info.key for info in page]
            pages += 1
            if cursor is None:
                break
        assert keys == sorted(a.key for a in arts) and pages == 3
        info = store.info(arts[0].key)
        assert info is not None and (info.entry, info.dtype, info.targets) == ("lif_hard", "float32", ("cuda:90",))

    def test_access_times_order_eviction(self, store: ArtifactStore) -> None:
        arts = [make_artifact(20 + i, size=1000) for i in range(3)]
        for i, art in enumerate(arts):
            put(store, art, now=100.0 + i)
        assert store.info(arts[0].key).created == store.info(arts[0].key).last_access == 100.0
        store.get_manifest(arts[0].key, touch=True)  # read now: the most recently used
        store.touch(arts[2].key, now=500.0)
        assert store.info(arts[0].key).last_access > 1000.0 and store.info(arts[2].key).last_access == 500.0
        total = store.stats()["bytes"]
        report = store.gc(total - 1)  # one kernel must go: the least recently used
        assert report.evicted_manifests == [arts[1].key] and report.bytes_after == total - blob_bytes(arts[1])
        assert store.get_manifest(arts[1].key) is None and store.get_manifest(arts[0].key) is not None

    def test_size_accounting_is_the_sum_of_blob_sizes(self, store: ArtifactStore) -> None:
        shared = b"a binary two kernels share" * 40
        a = make_artifact(30, 3, size=700, shared=shared)
        b = make_artifact(31, 1, size=900, shared=shared)
        put(store, a)
        put(store, b)
        every = {**a.blobs, **b.blobs}
        assert store.stats() == {"kernels": 2, "bytes": sum(len(d) for d in every.values())}
        assert store.info(a.key).bytes == blob_bytes(a) and store.info(b.key).bytes == blob_bytes(b)
        assert sorted(store.iter_blobs()) == sorted(every)

    def test_delete_kernel_removes_orphan_blobs_only(self, store: ArtifactStore) -> None:
        shared = b"shared binary" * 30
        a, b = make_artifact(40, shared=shared), make_artifact(41, shared=shared)
        put(store, a)
        put(store, b)
        assert store.delete_kernel(a.key)
        assert not store.delete_kernel(a.key)
        assert all(not store.has_blob(sha) for sha in set(a.blobs) - set(b.blobs))
        assert all(store.read_blob(sha) == data for sha, data in b.blobs.items())
        assert store.get_intact_manifest(b.key) == b.manifest and store.verify().ok

    # ------------------------------------------------------------ concurrency
    def test_concurrent_writers_of_one_blob_and_manifest(self, store: ArtifactStore) -> None:
        art = make_artifact(50, 4, size=5000)
        run_threads(8, lambda i: put(store, art, now=float(i)))
        assert store.get_intact_manifest(art.key) == art.manifest
        assert store.stats() == {"kernels": 1, "bytes": blob_bytes(art)} and store.verify().ok

    def test_concurrent_merges_keep_every_target(self, store: ArtifactStore) -> None:
        targets = ["cuda:80", "cuda:86", "cuda:89", "cuda:90", "cuda:100", "cuda:120"]
        arts = [make_artifact(60, 2, target=t) for t in targets]  # one key, a build per target
        merged = run_threads(len(arts), lambda i: store.put(arts[i]))
        assert all(m["key"] == arts[0].key for m in merged)
        stored = store.get_intact_manifest(arts[0].key)
        assert sorted({b["target"] for b in stored["binaries"]}) == sorted(targets)
        assert len(stored["binaries"]) == 2 * len(targets)

    def test_tuning_first_writer_wins_and_no_report_is_lost(self, store: ArtifactStore) -> None:
        art = make_artifact(70, 4)  # configs 0, 2 unaligned; 1, 3 aligned-only
        put(store, art)

        def choice(kind_bucket: int, variant: str, i: int) -> TuningChoice:
            return TuningChoice(target="cuda:90", kind="inference", bucket=kind_bucket, variant=variant,
                                config_id=config(i).id)

        # eight reports of distinct (bucket, variant) pairs at once: every one lands
        distinct = [choice(b, v, 0) for b in range(4) for v in ("aligned", "unaligned")]
        results = run_threads(len(distinct), lambda i: store.record_tuning(art.key, [distinct[i]]))
        assert [accepted for accepted, _ in results] == [1] * len(distinct)
        # eight racing reports of one bucket: exactly one wins, and it stays
        racing = [choice(4, "aligned", i % 4) for i in range(8)]
        results = run_threads(len(racing), lambda i: store.record_tuning(art.key, [racing[i]]))
        assert sorted(accepted for accepted, _ in results) == [0] * 7 + [1]
        winner = racing[next(i for i, (accepted, _) in enumerate(results) if accepted)].config_id
        table = store.get_manifest(art.key)["tuning"]["cuda:90"]["inference"]
        assert table == {**{str(b): {"aligned": config(0).id, "unaligned": config(0).id} for b in range(4)},
                         "4": {"aligned": winner}}

    def test_tuning_that_does_not_fit_is_refused_and_nothing_is_recorded(self, store: ArtifactStore) -> None:
        art = make_artifact(80, 2)  # config 0 unaligned, config 1 aligned-only
        put(store, art)
        fine = TuningChoice(target="cuda:90", kind="inference", bucket=0, variant="unaligned", config_id=config(0).id)
        misfit = fine.model_copy(update={"bucket": 1, "config_id": config(1).id})
        with pytest.raises(TuningError, match="aligned-only binary"):
            store.record_tuning(art.key, [fine, misfit])
        with pytest.raises(TuningError, match="unknown config"):
            store.record_tuning(art.key, [fine.model_copy(update={"config_id": "b7-w1-s1-u"})])
        with pytest.raises(TuningError, match="no binaries for cuda:80"):
            store.record_tuning(art.key, [fine.model_copy(update={"target": "cuda:80"})])
        assert store.get_manifest(art.key)["tuning"] == {}
        assert store.record_tuning("f" * 64, [fine]) is None  # not stored
        assert store.record_tuning(art.key, [fine])[0] == 1
