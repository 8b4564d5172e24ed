"""Parts of the build service without a jail: bounded pipe reading, event checks, records, work folders."""

from __future__ import annotations

import asyncio
import time

import pytest

from flexsn_core.spec import KernelSpec
from flexsn_service.builds.process import _clean_event
from flexsn_service.builds.records import BuildRecord, RecordBook
from flexsn_service.builds.streams import pump


def _feed(*chunks: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    for chunk in chunks:
        reader.feed_data(chunk)
    reader.feed_eof()
    return reader


def _lines(*chunks: bytes, **limits: int) -> tuple[list[tuple[bytes, bool]], int]:
    got: list[tuple[bytes, bool]] = []
    hits = []

    async def main() -> None:
        await pump(_feed(*chunks), lambda line, cut: got.append((line, cut)), on_limit=lambda: hits.append(1),
                   **limits)

    asyncio.run(main())
    return got, len(hits)


def test_a_megabyte_line_without_newline_is_cut_not_fatal() -> None:
    got, _ = _lines(b"x" * (1 << 20), max_line=500)
    assert got == [(b"x" * 500, True)]


def test_lines_split_across_chunks_and_long_lines_cut() -> None:
    got, _ = _lines(b"ab", b"c\nde", b"f" * 10 + b"\n\nlast", max_line=5)
    assert got == [(b"abc", False), (b"defff", True), (b"", False), (b"last", False)]


def test_the_total_is_capped_and_the_rest_drained() -> None:
    got, hits = _lines(b"one\n", b"two\n" * 1000, b"three\n", max_line=100, max_bytes=64)
    assert got[0] == (b"one", False) and hits == 1
    assert (b"three", False) not in got  # read and dropped


def test_events_from_a_worker_keep_only_checked_fields() -> None:
    assert _clean_event(b'{"event": "done", "extra": [1, 2]}') == {"event": "done"}
    assert _clean_event(b'{"event": "error", "type": "../../x y", "message": "' + b"m" * 9000 + b'", "line": true}') \
        == {"event": "error", "type": "Error", "message": "m" * 4000}
    assert _clean_event(b'{"event": "pickle"}') is None
    assert _clean_event(b"[" * 100000) is None  # too deep: no RecursionError escapes


def _record(key: str = "k" * 64) -> BuildRecord:
    spec = KernelSpec(source="def f(x):\n    return x\n", entry="f", num_inputs=1, num_states=0, num_outputs=1)
    return BuildRecord(id=str(time.monotonic_ns()), key=key, spec=spec, targets=["cuda:90"])


def test_failures_are_remembered_for_their_ttl_only() -> None:
    async def main() -> None:
        book = RecordBook(failure_ttl_s=0.2)
        record = _record()
        book.add(record)
        assert book.current(record.key, ["cuda:90"]) is record  # in flight
        record.state = "failed"
        book.finish(record, remember_failure=True)
        assert book.current(record.key, ["cuda:90"]) is record
        assert book.current(record.key, ["cuda:80"]) is None  # other targets: build again
        await asyncio.sleep(0.25)
        assert book.current(record.key, ["cuda:90"]) is None

        other = _record("o" * 64)
        book.add(other)
        other.state = "failed"
        book.finish(other, remember_failure=False)  # e.g. the store was down: try again next time
        assert book.current(other.key, ["cuda:90"]) is None

    asyncio.run(main())


def test_a_request_joins_only_a_build_that_covers_its_targets() -> None:
    """Issue #11: a cuda:90 request joined an in-flight cuda:80 build and got a manifest without cuda:90."""

    async def main() -> None:
        book = RecordBook(failure_ttl_s=60)
        both = _record()
        both.targets = ["cuda:80", "cuda:90"]
        book.add(both)
        assert book.current(both.key, ["cuda:90"]) is both  # covered: join
        only_80 = _record("o" * 64)
        only_80.targets = ["cuda:80"]
        book.add(only_80)
        assert book.current(only_80.key, ["cuda:90"]) is None  # not covered: a build of its own
        assert book.current(only_80.key, ["cuda:80"]) is only_80
        only_90 = _record("o" * 64)
        book.add(only_90)  # two builds of one key in flight
        assert book.current(only_80.key, ["cuda:90"]) is only_90
        only_80.state = "succeeded"
        book.finish(only_80, remember_failure=True)
        assert book.current(only_80.key, ["cuda:80"]) is None and book.current(only_80.key, ["cuda:90"]) is only_90

    asyncio.run(main())


@pytest.mark.parametrize("keep", [0.0])
def test_finished_records_are_pruned(keep: float) -> None:
    async def main() -> None:
        book = RecordBook(failure_ttl_s=0, keep_s=keep)
        old = _record()
        book.add(old)
        old.state = "succeeded"
        book.finish(old, remember_failure=False)
        book.add(_record("n" * 64))
        assert book.get(old.id) is None

    asyncio.run(main())


def test_work_dirs_are_per_process_and_only_dead_ones_are_removed(tmp_path) -> None:  # noqa: ANN001
    """Liveness is the owner's lock, not a pid: a replica in another container may reuse our
    host name and pid (issue #12: starting a replica wiped another's in-flight scratch)."""
    import os
    import socket
    import subprocess
    import time

    from flexsn_service.builds.workdir import create_work_dir, remove_work_dir

    host = socket.gethostname()
    folders = {
        "dead": tmp_path / f"{host}-4194001-0123abcd",  # its owner's lock is free
        "alive, same host and pid": tmp_path / f"{host}-4194000-4567abcd",  # a pid not ours: another container
        "older version": tmp_path / f"{host}-1-89abcdef",  # no owner file: not ours to judge
    }
    for folder in folders.values():
        (folder / "builds" / "x").mkdir(parents=True)
    (folders["dead"] / ".owner").touch()
    owner = folders["alive, same host and pid"] / ".owner"
    owner.touch()
    holder = subprocess.Popen(["flock", str(owner), "sleep", "60"])
    try:
        deadline = time.monotonic() + 10
        while subprocess.run(["flock", "-n", str(owner), "true"]).returncode == 0:  # wait until it holds it
            assert time.monotonic() < deadline
            time.sleep(0.05)
        mine = create_work_dir(tmp_path)
        assert mine.name.startswith(f"{host}-{os.getpid()}-") and (mine / "builds").is_dir()
        assert not folders["dead"].exists()
        assert folders["alive, same host and pid"].exists() and folders["older version"].exists()
        assert create_work_dir(tmp_path) != mine and mine.exists()  # a second replica leaves ours alone
    finally:
        holder.kill()
        holder.wait()
    remove_work_dir(mine)
    assert not mine.exists()


def test_a_worker_whose_warm_up_fails_is_the_services_fault_not_the_cores() -> None:
    """A worker that cannot trace its own warm-up core (a broken build environment: on the H200 image a
    half-imported torch then failed every job with "Artifact ... already registered", blamed on the core)
    stops before it reads a job, and the build fails as the service's, not remembered against the spec."""
    import sys

    from flexsn_service.builds.manager import _outcome
    from flexsn_service.builds.process import Worker
    from flexsn_service.builds.records import BuildFailure

    script = ("import sys; import flexsn_service.builds.worker as w\n"
              "def boom(): raise KeyError('getpwuid(): uid not found: 65534')\n"
              "w._warm_up = boom; sys.argv[1:] = ['--warm']; sys.exit(w.main())\n")

    async def main() -> tuple:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        worker = Worker(proc, name="the build worker")
        result = await worker.run(b'{"spec": {}}', timeout=120, timeout_message="timeout")
        return worker, result

    worker, result = asyncio.run(main())
    assert result.returncode == 1 and worker.setup_error is not None
    with pytest.raises(BuildFailure) as failure:
        _outcome(result, worker, "the build worker", jailed=True, max_ir_bytes=1 << 20, memory_bytes=1 << 30)
    assert failure.value.error_type == "BuildEnvironmentError"
    assert not failure.value.user_error and not failure.value.remember
    assert "uid not found" in str(failure.value)


def test_a_worker_without_stdin_runs() -> None:
    """The GPU tuner is started with stdin=/dev/null; run() asserted a pipe, so every build on a GPU host
    failed at "autotuning" with a bare "internal error: AssertionError" (seen on the H200)."""
    import sys

    from flexsn_service.builds.process import Worker

    async def main():  # noqa: ANN202
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "print('{\"event\": \"progress\", \"stage\": \"ready\"}')",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        worker = Worker(proc, name="tuner")
        return await worker.run(b"", timeout=60, timeout_message="timeout", wait_ready=False)

    assert asyncio.run(main()).returncode == 0
