"""Several replicas on one store (issue #12): two real service processes on a real Redis (and on one
disk store), one build per spec across them, takeover after kill -9, atomic tuning, the size limit."""

from __future__ import annotations

import concurrent.futures
import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import neurons
import pytest
import redis
from live_server import Server, live_server
from redis_server import redis_url  # noqa: F401 - fixture

from flexsn_core import KernelSpec
from flexsn_service.store.redis_store import RedisStore

#: a lease short enough that a takeover after kill -9 happens within seconds
LEASE_S = "3"


def _spec(tau: float, *, sleep_s: float = 0.0) -> dict:
    """LIF with its own TAU (so its own key); ``sleep_s`` makes tracing slow (source check off)."""
    model = neurons.MODELS["lif_hard"]
    spec = KernelSpec.from_core(model.core, model.num_inputs, model.num_states, model.num_outputs).to_dict()
    source = spec["source"].replace("TAU = 2.0", f"TAU = {tau!r}")
    if sleep_s:
        source = f"import time\ntime.sleep({sleep_s})\n" + source
    return {**spec, "source": source}


@contextlib.contextmanager
def _replicas(root: Path, store: str, count: int = 2, **settings: str) -> Iterator[list[Server]]:
    with contextlib.ExitStack() as stack:
        # one HTTP worker each: a replica here is one process (the kill -9 test kills the lease holder's);
        # several workers of one serve are tests/test_workers.py's
        yield [stack.enter_context(live_server(root / f"replica{i}", store=store, build_lease_s=LEASE_S,
                                               source_check="0", http_workers="1", **settings))
               for i in range(count)]


def _builds_started(servers: list[Server]) -> int:
    return sum(httpx.get(f"{s.url}/v1/stats", timeout=30).json()["builds_started"] for s in servers)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[tuple[list[Server], str]]:  # noqa: F811
    store = f"{redis_url}?prefix=r{uuid.uuid4().hex[:8]}"
    with _replicas(tmp_path_factory.mktemp("replicas"), store) as servers:
        yield servers, store


def test_40_concurrent_posts_over_two_replicas_build_once_and_32_tuning_reports_all_land(
    shared: tuple[list[Server], str],
) -> None:
    servers, _ = shared
    body = _spec(2.125)
    before = _builds_started(servers)

    def post(i: int) -> httpx.Response:
        with servers[i % 2].client(timeout=300) as http:
            return http.post("/v1/kernels", params={"wait": "true"}, json=body)

    with concurrent.futures.ThreadPoolExecutor(max_workers=40) as pool:
        answers = list(pool.map(post, range(40)))
    assert [r.status_code for r in answers] == [200] * 40, [r.text[:300] for r in answers if r.status_code != 200]
    assert len({r.json()["key"] for r in answers}) == 1
    assert _builds_started(servers) == before + 1

    # 32 tuning reports of distinct (kind, bucket, variant) over both replicas, at once: all land
    manifest = answers[0].json()
    key = manifest["key"]
    unaligned = next(b["config_id"] for b in manifest["binaries"] if not b["config"]["aligned"])
    reports = [(kind, bucket, variant) for kind in ("inference", "inference_final", "forward", "backward")
               for bucket in range(4) for variant in ("aligned", "unaligned")]

    def report(i: int) -> httpx.Response:
        kind, bucket, variant = reports[i]
        choice = {"kind": kind, "bucket": bucket, "variant": variant, "config_id": unaligned}
        with servers[i % 2].client() as http:
            return http.post(f"/v1/kernels/{key}/tuning", json={"target": "cuda:90", "choices": [choice]})

    with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(report, range(32)))
    assert [r.status_code for r in results] == [200] * 32, [r.text[:300] for r in results]
    assert [r.json()["accepted"] for r in results] == [1] * 32
    for server in servers:  # each replica serves the tuned manifest (within its cache's TTL)
        deadline = time.monotonic() + 10
        while True:
            table = httpx.get(f"{server.url}/v1/kernels/{key}", timeout=30).json()["tuning"]["cuda:90"]
            got = {(kind, int(b), v) for kind, buckets in table.items() for b, vs in buckets.items() for v in vs}
            if got == set(reports) or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert got == set(reports)


def test_manifest_etag_answers_if_none_match(shared: tuple[list[Server], str]) -> None:
    servers, _ = shared
    with servers[0].client(timeout=300) as http:
        manifest = http.post("/v1/kernels", params={"wait": "true"}, json=_spec(2.25)).json()
        first = http.get(f"/v1/kernels/{manifest['key']}")
        etag = first.headers["etag"]
        assert first.status_code == 200 and first.json() == manifest
        assert http.get(f"/v1/kernels/{manifest['key']}", headers={"If-None-Match": etag}).status_code == 304
        blob = manifest["source"]["sha256"]
        assert http.get(f"/v1/blobs/{blob}", headers={"If-None-Match": f'"{blob}"'}).status_code == 304


def test_kill_9_of_the_replica_holding_the_build_lease_another_takes_over(
    tmp_path: Path, redis_url: str,  # noqa: F811
) -> None:
    store = f"{redis_url}?prefix=k{uuid.uuid4().hex[:8]}"
    body = _spec(2.375, sleep_s=6)
    with _replicas(tmp_path, store) as servers:
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            def post(i: int) -> httpx.Response | Exception:
                try:
                    with servers[i % 2].client(timeout=300) as http:
                        return http.post("/v1/kernels", params={"wait": "true"}, json=body)
                except httpx.TransportError as exc:
                    return exc

            waiting = [pool.submit(post, i) for i in range(8)]
            # find the holder of the build's lease in Redis, and kill it mid-build
            client = redis.Redis.from_url(redis_url)
            prefix = RedisStore(store).name("build", "")
            deadline = time.monotonic() + 60
            while not (holder := [k for k in client.keys(prefix + "*")]):
                assert time.monotonic() < deadline, "no replica took the build lease"
                time.sleep(0.05)
            replica = client.get(holder[0]).decode().split("/")[0]
            victim = next(s for s in servers if replica.endswith(f"-{s.proc.pid}"))
            survivor = next(s for s in servers if s is not victim)
            victim.kill9()
            answers = [f.result(timeout=300) for f in waiting]
        on_survivor = [a for i, a in enumerate(answers) if servers[i % 2] is survivor]
        assert all(isinstance(a, httpx.Response) and a.status_code == 200 for a in on_survivor), on_survivor
        assert httpx.get(f"{survivor.url}/v1/stats", timeout=30).json()["builds_started"] == 1  # the takeover
        assert "waiting" in survivor.logs() and on_survivor[0].json()["key"] == KernelSpec.from_dict(body).key


def test_a_replica_started_mid_build_leaves_the_others_builds_alone(tmp_path: Path) -> None:
    """Two processes on one disk store (one host): the second's start-up must not touch the first's work."""
    store = f"disk:{tmp_path / 'store'}"
    with live_server(tmp_path / "a", store=store, source_check="0") as first:
        with first.client(timeout=300) as http:
            accepted = http.post("/v1/kernels", json=_spec(2.5, sleep_s=4)).json()
            deadline = time.monotonic() + 60
            while http.get(f"/v1/builds/{accepted['build_id']}").json()["state"] != "running":
                assert time.monotonic() < deadline
                time.sleep(0.1)
            with live_server(tmp_path / "b", store=store, source_check="0") as second:
                assert first.wait_build(http, accepted["build_id"])["state"] == "succeeded"
                # the same spec on the second replica: served, not built again (file lease + store)
                with second.client() as other:
                    assert other.post("/v1/kernels", json=_spec(2.5, sleep_s=4)).status_code == 200
                    assert other.get("/v1/stats").json()["builds_started"] == 0


def test_a_client_polling_the_replica_that_did_not_start_the_build_still_gets_the_kernels(
    shared: tuple[list[Server], str], tmp_path: Path,
) -> None:
    """A load balancer (or several HTTP workers) sends the build's POST to one replica and its
    polls to another. That one answers from the shared records (Redis); where it has no record of
    the build id at all (the record expired, or its replica died) the client asks for the spec
    again, waiting, and joins the one build wherever it runs."""
    from flexsn_client.api import BuildUnknownError, ServiceAPI
    from flexsn_client.cache import KernelCacheClient

    servers, _ = shared
    spec = KernelSpec.from_dict(_spec(2.375, sleep_s=2.0))
    first, second = (ServiceAPI(s.url, None) for s in servers)

    class Balanced(ServiceAPI):
        """POSTs go to the first replica once, everything else to the second."""

        posts = 0

        def request_kernels(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            Balanced.posts += 1
            return (first if Balanced.posts == 1 else super()).request_kernels(*args, **kwargs)

    code, body = first.request_kernels(spec)
    assert code == 202
    assert second.get_build(body["build_id"])["build_id"] == body["build_id"]  # shared: known everywhere
    # forget it everywhere but on the first replica (its record in memory), as if it had expired
    servers_store = RedisStore(shared[1])
    servers_store.client.delete(servers_store.name("status", body["build_id"]))
    with pytest.raises(BuildUnknownError):
        second.get_build(body["build_id"])
    before = _builds_started(servers)
    client = KernelCacheClient(local_dir=tmp_path, api=Balanced(servers[1].url, None))
    manifest = client.get_or_build(spec, progress=False)
    assert manifest is not None and manifest["key"] == spec.key
    assert Balanced.posts >= 2  # the fallback asked the second replica for the spec
    assert _builds_started(servers) == before  # joined the build already running, no second one
