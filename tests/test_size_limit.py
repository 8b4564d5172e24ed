"""The store's size limit (FLEXSN_SERVICE_MAX_BYTES, service/store/limit.py): LRU kernels are evicted
continuously, on both service stores; and the batched access times that steer it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_server import fresh_redis_url, redis_url  # noqa: F401 - fixtures
from store_contract import blob_bytes, make_artifact, put

from flexsn_service.builds.leases import leases_for
from flexsn_service.store import DiskStore, Store
from flexsn_service.store.limit import LOW_WATER, SizeLimit
from flexsn_service.store.reads import ReadCache
from flexsn_service.store.redis_store import RedisStore


@pytest.fixture(params=["diskcache", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path, fresh_redis_url: str) -> Iterator[Store]:  # noqa: F811
    s = DiskStore(tmp_path / "disk") if request.param == "diskcache" else RedisStore(fresh_redis_url)
    yield s
    s.close()


def test_the_store_stays_under_the_limit_while_kernels_keep_being_added(store: Store, tmp_path: Path) -> None:
    size = blob_bytes(make_artifact(0, size=2000))
    limit = SizeLimit(store, 5 * size, leases_for(store, replica="test", lease_s=5, folder=tmp_path / "leases"))
    arts = [make_artifact(i, size=2000) for i in range(20)]
    for i, art in enumerate(arts):
        put(store, art, now=1000.0 + i)
        if i == 3:
            store.touch(arts[0].key, now=5000.0)  # read recently: it outlives newer kernels
        limit.enforce()
        assert store.stats()["bytes"] <= 5 * size
        assert store.get_intact_manifest(art.key) == art.manifest  # the newest stays
    kept = set(store.iter_manifest_keys())
    assert arts[0].key in kept and len(kept) <= 5 and store.verify().ok
    assert store.stats()["bytes"] == sum(store.blob_size(sha) or 0 for sha in store.iter_blobs())
    assert LOW_WATER < 1


def test_reads_write_nothing_until_the_batch_is_flushed(store: Store) -> None:
    arts = [make_artifact(100 + i) for i in range(3)]
    for art in arts:
        put(store, art, now=10.0)
    reads = ReadCache(store, max_bytes=1 << 20, ttl_s=60)
    for _ in range(5):
        assert reads.manifest(arts[1].key).manifest == arts[1].manifest
        assert reads.blob(arts[1].manifest["source"]["sha256"]) is not None
    assert store.info(arts[1].key).last_access == 10.0  # not written per read
    assert reads.flush() == 1 and reads.flush() == 0
    assert store.info(arts[1].key).last_access > 1000 and store.info(arts[0].key).last_access == 10.0


def test_a_damaged_blob_is_never_served_from_memory(store: Store) -> None:
    art = make_artifact(200)
    put(store, art)
    sha = art.manifest["binaries"][0]["sha256"]
    store._write_blob(sha, b"rotten")
    reads = ReadCache(store, max_bytes=1 << 20, ttl_s=60)
    assert reads.blob(sha) is None and reads.cached_blob(sha) is None
    assert reads.manifest(art.key) is None  # it lost a blob: dropped, a miss (rebuilt on the next POST)
