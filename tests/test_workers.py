"""Several HTTP workers (issue #12): build status, stats, the status page and /metrics answer the same
on every worker; one build per spec; build slots and cgroups shared by the workers of one host.

The shared records' backends run one set of checks each (files, a real Redis); the routes are checked
in process with "another worker" publishing into the same store folder; and one real
``serve --http-workers 2`` shows it across processes (which worker answered: the pid in its log)."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import neurons
import pytest
from fastapi.testclient import TestClient
from live_server import ROOT, Server, live_server
from redis_server import fresh_redis_url, redis_url  # noqa: F401 - fixtures

from flexsn_core import KernelSpec
from flexsn_service import Settings, create_app
from flexsn_service.builds import cgroup as cgroup_module
from flexsn_service.builds.shared_records import (
    MAX_RECORD_BYTES,
    FileSharedRecords,
    RedisSharedRecords,
    SharedBuild,
    SharedRecords,
)
from flexsn_service.builds.slots import BuildSlots
from flexsn_service.config import default_http_workers
from flexsn_service.metrics import ServiceMetrics
from flexsn_service.store.redis_store import RedisStore

KEY = "ab" * 32


def _status(build_id: str, state: str = "running", **extra: Any) -> dict[str, Any]:
    now = time.time()
    return {"build_id": build_id, "key": KEY, "state": state, "targets": ["cuda:90"],
            "progress": {"stage": "compiling", "done": 1, "total": 4}, "error": None, "error_type": None,
            "user_error": False, "error_op": None, "error_line": None, "log_tail": ["line one"],
            "created": now - 5, "started": now - 4, "finished": None if state in ("queued", "running") else now,
            **extra}


def _publish(shared: SharedRecords, state: str = "running", *, joined: bool = False, entry: str = "lif",
             **extra: Any) -> str:
    build_id = uuid.uuid4().hex
    shared.publish(shared.record(_status(build_id, state, **extra), entry=entry, joined=joined))
    return build_id


@pytest.fixture(params=["files", "redis"])
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SharedRecords]:
    if request.param == "files":
        yield FileSharedRecords(tmp_path / "status", keep_s=3600)
    else:
        url = request.getfixturevalue("fresh_redis_url")
        store = RedisStore(url)
        try:
            yield RedisSharedRecords(store, keep_s=3600)
        finally:
            store.close()


def _damage(shared: SharedRecords, build_id: str, data: bytes) -> None:
    """Replace a stored record's bytes (a torn write, a bad disk, a hostile writer)."""
    if isinstance(shared, FileSharedRecords):
        (shared.records / f"{build_id}.json").write_bytes(data)
    else:
        assert isinstance(shared, RedisSharedRecords)
        shared.store.client.set(shared.store.name("status", build_id), data)


# ------------------------------------------------------------------ the shared records, both backends
def test_a_published_record_reads_back_validated_and_listed(shared: SharedRecords) -> None:
    running = _publish(shared, "running")
    got = shared.get(running)
    assert got is not None and got.status.state == "running" and got.entry == "lif"
    assert got.status.progress == {"stage": "compiling", "done": 1, "total": 4}
    assert [r.build_id for r in shared.in_flight(stale_s=30)] == [running]
    joined = _publish(shared, "queued", joined=True)  # follows another build: readable, never listed
    assert shared.get(joined) is not None and [r.build_id for r in shared.in_flight(30)] == [running]
    # the same id published again as failed: out of the builds in flight, into the failures
    shared.publish(shared.record(_status(running, "failed", error="boom", error_type="X"), entry="lif",
                                 joined=False))
    assert shared.in_flight(30) == []
    count, failures = shared.failures(window_s=3600, limit=10)
    assert count == 1 and [(f.build_id, f.status.error) for f in failures] == [(running, "boom")]
    _publish(shared, "failed", joined=True, error="echo")  # another replica's failure, echoed: not counted
    assert shared.failures(3600, 10)[0] == 1


def test_damaged_foreign_or_oversized_records_read_as_absent(shared: SharedRecords) -> None:
    build_id = _publish(shared)
    good = shared.get(build_id)
    assert good is not None
    for data in (b"", b"{not json", b"\x00" * 100, json.dumps({"v": 1}).encode(),
                 good.model_dump_json().replace(build_id, "0" * 32).encode(),  # another build's record
                 json.dumps({**good.model_dump(), "code": "import os"}).encode(),  # an unknown field
                 json.dumps({**good.model_dump(), "pad": "x" * MAX_RECORD_BYTES}).encode()):
        _damage(shared, build_id, data)
        assert shared.get(build_id) is None, data[:80]
        assert shared.in_flight(30) == []
    for bad in ("../../etc/passwd", "AB" * 16, "x", "", "a" * 64, build_id + "\n"):
        assert shared.get(bad) is None
    with pytest.raises(ValueError):
        shared.publish(SharedBuild(status=_status("../x"), entry="e", joined=False, beat=0, until=time.time() + 9))


def test_records_expire_and_stale_builds_drop_out_of_the_list(shared: SharedRecords) -> None:
    shared.keep_s = 0.5
    build_id = _publish(shared)
    assert shared.get(build_id) is not None
    time.sleep(0.7)
    assert shared.get(build_id) is None and shared.in_flight(stale_s=30) == []
    shared.keep_s = 3600
    fresh = _publish(shared)
    time.sleep(0.3)
    assert shared.in_flight(stale_s=0.2) == []  # not published for a while: its process is gone
    assert [r.build_id for r in shared.in_flight(stale_s=30)] == [fresh]


def test_huge_progress_and_errors_are_cut_before_they_are_published(shared: SharedRecords) -> None:
    build_id = uuid.uuid4().hex
    status = _status(build_id, "failed", error="e" * 100_000, log_tail=["l" * 10_000] * 40,
                     progress={"stage": "s" * 10_000, "done": [1] * 10_000, "total": 2**80})
    shared.publish(shared.record(status, entry="lif", joined=False))
    got = shared.get(build_id)
    assert got is not None and len(got.model_dump_json()) < MAX_RECORD_BYTES
    assert got.status.progress == {"stage": "s" * 200, "done": 0, "total": 0}


def test_file_records_are_written_atomically_and_pruned(tmp_path: Path) -> None:
    shared = FileSharedRecords(tmp_path / "status", keep_s=0.3)
    shared.PRUNE_EVERY_S = 0.0
    first = _publish(shared, "failed")
    assert sorted(p.name for p in shared.records.iterdir()) == [f"{first}.json"]  # no temporary file left
    time.sleep(0.5)
    second = _publish(shared)  # a write prunes what expired
    assert sorted(p.name for p in shared.records.iterdir()) == [f"{second}.json"]
    assert list(shared.failed_dir.iterdir()) == []


# ------------------------------------------------------------------ routes, another worker publishing
@pytest.fixture
def app(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(store=f"disk:{tmp_path / 'store'}", use_gpu=False, workers=1, http_workers=1)
    with TestClient(create_app(settings)) as client:
        yield client


def _other_worker(client: TestClient) -> FileSharedRecords:
    """What another worker on the same store folder publishes into."""
    store = Path(client.app.state.ctx.settings.store.partition(":")[2])
    return FileSharedRecords((store / "work" / "leases" / "status").resolve(), keep_s=3600)


def test_a_build_of_another_worker_answers_here_and_is_listed(app: TestClient) -> None:
    other = _other_worker(app)
    running = _publish(other, "running", entry="other_workers_lif")
    got = app.get(f"/v1/builds/{running}")
    assert got.status_code == 200, got.text  # was 404: records lived in the worker that ran the POST
    assert got.json()["state"] == "running" and got.json()["progress"]["stage"] == "compiling"
    stats = app.get("/v1/stats").json()
    assert (stats["builds_in_flight"], stats["builds_failed_last_hour"]) == (1, 0)
    page = app.get("/").text
    assert "other_workers_lif" in page and "1 in flight" in page
    failed = _publish(other, "failed", entry="broken_core", error="aten.sort is not supported",
                      error_type="UnsupportedOpError")
    got = app.get(f"/v1/builds/{failed}").json()
    assert (got["state"], got["error_type"]) == ("failed", "UnsupportedOpError")
    assert app.get("/v1/stats").json()["builds_failed_last_hour"] == 1
    page = app.get("/").text
    assert "broken_core" in page and failed in page and "aten.sort" not in page  # error texts: API only


def test_damaged_unknown_or_stale_shared_builds_are_404_never_500(app: TestClient) -> None:
    other = _other_worker(app)
    damaged = _publish(other)
    (other.records / f"{damaged}.json").write_bytes(b'{"v": 1, "status": ')
    for build_id in (damaged, uuid.uuid4().hex, "a.b", "not-a-build", "x" * 64):
        answer = app.get(f"/v1/builds/{build_id}")
        assert answer.status_code == 404, (build_id, answer.text)
        assert "POST its spec again" in answer.json()["detail"]
    assert app.get("/v1/builds/..%2F..%2Fetc%2Fpasswd").status_code == 404
    stale = _publish(other)
    os.utime(other.inflight_dir / stale, (time.time() - 300,) * 2)
    record = json.loads((other.records / f"{stale}.json").read_text())
    record["beat"] = time.time() - 300  # its worker died 5 minutes ago
    (other.records / f"{stale}.json").write_text(json.dumps(record))
    assert app.get(f"/v1/builds/{stale}").status_code == 404
    assert app.get("/v1/stats").json()["builds_in_flight"] == 0


# ------------------------------------------------------------------ counters summed over processes
_COUNT = """
import json, sys
from flexsn_service.metrics import ServiceMetrics
m = ServiceMetrics()
assert m.multiprocess
m.hits.inc(int(sys.argv[1]))
m.builds_started.inc()
m.count_fast_read("/v1/blobs/{sha256}", 200)
m.fold_fast_reads()
m.save_history()
"""


def test_counters_of_two_worker_processes_are_summed(tmp_path: Path) -> None:
    folder = tmp_path / "metrics"
    folder.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder), "PYTHONPATH": str(ROOT)}
    for hits in (3, 5):
        subprocess.run([sys.executable, "-c", _COUNT, str(hits)], env=env, check=True, timeout=60)
    reader = ServiceMetrics(folder=folder)
    reader.watch_store(lambda: {"kernels": 7, "bytes": 1234})
    assert reader.values("flexsn_cache_hits", "flexsn_builds_started") == {"flexsn_cache_hits": 8,
                                                                           "flexsn_builds_started": 2}
    text = reader.exposition().decode()
    assert "flexsn_cache_hits_total 8.0" in text and "flexsn_store_kernels 7.0" in text
    assert 'flexsn_http_fast_reads_total{route="/v1/blobs/{sha256}",status="200"} 2.0' in text
    assert sum(m.hits for m in reader.series()) == 8 and reader.first_started() < reader.started


# ------------------------------------------------------------------ one host: slots, cgroups, defaults
def test_build_slots_are_shared_by_every_process_on_the_folder(tmp_path: Path) -> None:
    one, other = BuildSlots(tmp_path, 2), BuildSlots(tmp_path, 2)  # two workers' views of one folder
    held = [one.try_take(), other.try_take()]
    assert None not in held and other.try_take() is None and one.try_take() is None
    os.close(held[0])  # a holder ends (or dies): its slot is free
    again = other.try_take()
    assert again is not None
    for fd in (held[1], again):
        os.close(fd)


def test_default_http_workers_is_two_but_one_on_a_one_cpu_host(monkeypatch: pytest.MonkeyPatch) -> None:
    import flexsn_service.config as config

    for cpus, expected in ((1, 1), (2, 2), (64, 2)):
        monkeypatch.setattr(config, "usable_cpus", lambda cpus=cpus: cpus)
        assert default_http_workers() == expected
        assert Settings().http_workers == expected
    monkeypatch.setenv("FLEXSN_SERVICE_HTTP_WORKERS", "3")
    assert Settings().http_workers == 3


def _fake_v2(tmp_path: Path, own: str, *, procs: str, enabled: str = "") -> tuple[Path, Path]:
    proc = tmp_path / "proc"
    proc.mkdir(exist_ok=True)
    (proc / "cgroup").write_text(f"0::{own}\n")
    (proc / "mountinfo").write_text(f"30 25 0:26 / {tmp_path / 'cg'} rw - cgroup2 cgroup2 rw\n")
    group = tmp_path / "cg" / "service"
    group.mkdir(parents=True, exist_ok=True)
    (group / "cgroup.controllers").write_text("cpu io memory pids\n")
    (group / "cgroup.subtree_control").write_text(enabled)
    (group / "cgroup.procs").write_text(procs)
    return proc, group


def test_serve_puts_its_workers_in_one_cgroup_v2_leaf_and_each_builds_beside_it(tmp_path: Path) -> None:
    """cgroup v2 allows no processes in a cgroup whose children get controllers: one process moves
    itself into a leaf, but with two workers (and serve) in the cgroup each found the others there."""
    proc, group = _fake_v2(tmp_path, "/service", procs=f"{os.getpid()}\n")
    assert cgroup_module.prepare_for_workers(proc) is None  # serve, alone in its cgroup, before the workers
    assert (group / "flexsn-service" / "cgroup.procs").read_text() == str(os.getpid())
    assert (group / "cgroup.subtree_control").read_text() == "+memory +pids"
    (group / "cgroup.subtree_control").write_text("memory pids")  # what the kernel shows after that
    # a worker, started in the leaf with its sibling: its build cgroups go beside the leaf
    (proc / "cgroup").write_text("0::/service/flexsn-service\n")
    (group / "flexsn-service" / "cgroup.procs").write_text(f"{os.getpid()}\n{os.getppid()}\n")
    cgroups = cgroup_module._detect_v2(cgroup_module._own_cgroups(proc), cgroup_module._mounts(proc))
    assert cgroups.version == 2 and cgroups.bases[0].parent == group
    assert cgroups.bases[0].name.startswith(f"flexsn-{os.uname().nodename}-{os.getpid()}-")
    cgroups.close()


# ------------------------------------------------------------------ a real serve --http-workers 2
def _slow_spec(tau: float, sleep_s: float) -> dict[str, Any]:
    model = neurons.MODELS["lif_hard"]
    spec = KernelSpec.from_core(model.core, model.num_inputs, model.num_states, model.num_outputs).to_dict()
    source = spec["source"].replace("TAU = 2.0", f"TAU = {tau!r}")
    return {**spec, "source": f"import time\ntime.sleep({sleep_s})\n{source}"}


def _pids_by_request(server: Server) -> dict[str, int]:
    """request id -> pid of the worker that logged the request's line."""
    found = {}
    for line in server.logs().splitlines():
        if line.startswith("{") and '"msg": "request"' in line:
            entry = json.loads(line)
            found[entry["request_id"]] = entry["pid"]
    return found


def _fresh(server: Server, method: str, path: str, **kwargs: Any) -> tuple[str, httpx.Response]:
    """One request on a new connection (so the kernel may hand it to either worker), with its own id."""
    rid = uuid.uuid4().hex[:16]
    with server.client(timeout=120) as http:
        return rid, http.request(method, path, headers={"X-Request-ID": rid}, **kwargs)


def _on_both_workers(server: Server, method: str, path: str, check: Any, *, rounds: int = 12,
                     **kwargs: Any) -> set[int]:
    """Send the request in parallel batches until both workers have answered it; ``check`` each answer."""
    pids: set[int] = set()
    sent: list[str] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(rounds):
            for rid, answer in pool.map(lambda _: _fresh(server, method, path, **kwargs), range(8)):
                check(answer)
                sent.append(rid)
            time.sleep(0.2)  # the log lines are written after the answers
            logged = _pids_by_request(server)
            pids = {logged[r] for r in sent if r in logged}
            if len(pids) == 2:
                return pids
    raise AssertionError(f"{method} {path} reached one worker only ({pids}) in {len(sent)} tries")


def test_two_http_workers_one_build_shared_status_and_summed_counters(tmp_path: Path) -> None:
    body = _slow_spec(2.625, sleep_s=4)
    with live_server(tmp_path, http_workers="2", source_check="0", workers="1", log_fast_reads="1") as server:
        # 8 concurrent POSTs of one new spec, over both workers: one build
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(lambda _: _fresh(server, "POST", "/v1/kernels", json=body)[1], range(8)))
        assert [a.status_code for a in answers] == [202] * 8, [a.text[:200] for a in answers]
        ids = {a.json()["build_id"] for a in answers}
        assert 1 <= len(ids) <= 2  # one record per worker that was asked, for one build

        # while it runs, each id answers on both workers, and both count one build in flight
        def running(answer: httpx.Response) -> None:
            assert answer.status_code == 200, answer.text
            assert answer.json()["state"] in ("queued", "running", "succeeded")

        for build_id in ids:
            _on_both_workers(server, "GET", f"/v1/builds/{build_id}", running)
        in_flight = {_fresh(server, "GET", "/v1/stats")[1].json()["builds_in_flight"] for _ in range(6)}
        assert in_flight <= {1, 0}  # 0 once it finished; never 2 (a worker following the other's build)
        with server.client(timeout=300) as http:
            for build_id in ids:
                assert server.wait_build(http, build_id)["state"] == "succeeded"

        # cached now: hits counted by whichever worker answers, summed on /metrics and /v1/stats anywhere
        _on_both_workers(server, "POST", "/v1/kernels", lambda a: a.raise_for_status(), json=body)
        hits: set[float] = set()

        def summed(answer: httpx.Response) -> None:
            lines = [line for line in answer.text.splitlines() if line.startswith("flexsn_cache_hits_total ")]
            hits.add(float(lines[0].split()[1]))
            assert len(hits) == 1, hits  # every scrape, from either worker, shows the same sum
            assert "flexsn_builds_started_total 1.0" in answer.text  # one build, in either worker

        # manifest reads, most answered by the fast path (counted in memory, folded in every second)
        key = KernelSpec.from_dict(body).key
        _on_both_workers(server, "GET", f"/v1/kernels/{key}", lambda a: a.raise_for_status())
        time.sleep(1.5)
        _on_both_workers(server, "GET", "/metrics", summed)
        logged = [json.loads(line) for line in server.logs().splitlines() if '"msg": "request"' in line]
        posted = sum(1 for e in logged if (e["method"], e["path"], e["status"]) == ("POST", "/v1/kernels", 200))
        read = sum(1 for e in logged if (e["method"], e["path"], e["status"]) == ("GET", f"/v1/kernels/{key}", 200))
        assert hits == {float(posted)}
        scrape = httpx.get(f"{server.url}/metrics", timeout=30).text
        assert f'flexsn_http_requests_total{{route="/v1/kernels/{{key}}",status="200"}} {float(read)}' in scrape
        stats = httpx.get(f"{server.url}/v1/stats", timeout=30).json()
        assert (stats["hits"], stats["builds_started"], stats["builds_in_flight"]) == (posted, 1, 0)
        assert len(list((server.store / "work" / "metrics").iterdir())) == 1  # serve's counters folder
    assert list((tmp_path / "store" / "work" / "metrics").iterdir()) == []  # removed when serve ends
