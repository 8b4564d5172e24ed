"""The store contract (tests/store_contract.py) against every artifact store implementation.

Adding an implementation: one line in IMPLEMENTATIONS.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from redis_server import fresh_redis_url, redis_url  # noqa: F401 - fixtures
from store_contract import StoreContract

from flexsn_core.local import LocalStore
from flexsn_core.store import ArtifactStore, FileStore
from flexsn_service.store import DiskStore
from flexsn_service.store.redis_store import RedisStore

#: name -> a fresh, empty store (in a temporary folder, or under a fresh prefix of the test Redis)
IMPLEMENTATIONS: dict[str, Callable[[Path, str], ArtifactStore]] = {
    "mirror": lambda tmp, _redis: LocalStore(tmp / "mirror"),  # the client's mirror and local builds (a FileStore)
    "diskcache": lambda tmp, _redis: DiskStore(tmp / "disk"),  # the service's embedded store
    "redis": lambda _tmp, redis: RedisStore(redis),  # the shared store of several replicas (a real redis-server)
}


@pytest.fixture(params=list(IMPLEMENTATIONS))
def store(request: pytest.FixtureRequest, tmp_path: Path, fresh_redis_url: str) -> Iterator[ArtifactStore]:
    s = IMPLEMENTATIONS[request.param](tmp_path, fresh_redis_url)
    yield s
    s.close()


class TestStoreContract(StoreContract):
    """Every test of the contract, once per implementation."""


def _concrete_subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        if not getattr(sub, "__abstractmethods__", None):
            found.add(sub)
        found |= _concrete_subclasses(sub)
    return found


def test_every_store_implementation_runs_the_contract(tmp_path: Path, fresh_redis_url: str) -> None:
    tested = {type(make(tmp_path / name, fresh_redis_url)) for name, make in IMPLEMENTATIONS.items()}
    assert {LocalStore, DiskStore, RedisStore} <= tested
    for impl in _concrete_subclasses(ArtifactStore):
        if impl.__module__.startswith(("flexsn_core", "flexsn_service", "flexsn_client")):
            assert any(issubclass(t, impl) for t in tested), f"{impl.__qualname__} is not in IMPLEMENTATIONS"
    assert issubclass(LocalStore, FileStore)
