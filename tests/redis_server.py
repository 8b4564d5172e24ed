"""A real ``redis-server`` for the tests: a free loopback port, no persistence, a temporary folder.

``make test`` installs Debian's ``redis-server`` (the Makefile's TEST_PACKAGES); the
tests that need it FAIL (never skip) without it, saying so. One server per test
process (``redis_url`` is session-scoped; pytest-xdist starts one per worker);
tests keep apart by a fresh key prefix each (``fresh_redis_url``).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from live_server import free_port

__all__ = ["start_redis", "redis_url", "fresh_redis_url"]


@contextlib.contextmanager
def start_redis() -> Iterator[str]:
    """A redis-server on a free loopback port until the block ends; its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: `make test` installs it (Debian package redis-server)")
    with tempfile.TemporaryDirectory(prefix="flexsn-redis-") as folder:
        port = free_port()
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", folder, "--protected-mode", "yes", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        url = f"redis://127.0.0.1:{port}/0"
        try:
            client = redis.Redis.from_url(url)
            deadline = time.monotonic() + 20
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"redis-server did not start (exit {proc.poll()})") from None
                    time.sleep(0.05)
            client.close()
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with start_redis() as url:
        yield url


@pytest.fixture
def fresh_redis_url(redis_url: str) -> str:
    """The session's server with a key prefix of this test's own."""
    return f"{redis_url}?prefix=t{uuid.uuid4().hex[:12]}"
