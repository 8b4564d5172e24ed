"""Builds: single flight per key, at most ``workers`` at once, each in three steps.

1. **Trace, in the jail** (``jail.py``, ``worker.py``): a warmed-up jailed
   worker loads the core's source and traces it; its only output is the IR
   (JSON on stdout), read with hard bounds (``process.py``). Killed after
   ``timeout_s``.
2. **Compile, outside** (``compiler.py``): a trusted process that runs no user
   code validates the IR, generates the Triton module from it and compiles
   every (kind, config, target) into a folder of the service's.
3. **Store**: the server re-hashes every blob, checks the manifest is for the
   requested spec, optionally autotunes on the local GPU (``tuner.py``), then
   stores blobs first and the manifest last.

Concurrent requests for one key join a build in flight that compiles every
target they ask for (else they start their own; binaries of one key are merged
under a lock when stored); a failed build is remembered for ``failure_ttl_s`` (the same spec and targets fail at once
instead of being rebuilt). Every wait has a timeout, the build slot is always
released, and every process a build started is killed when it ends.

Across replicas and uvicorn workers sharing a store (``leases.py``): a build
runs only while its replica holds the (key, targets) lease, renewed while it
runs; a replica that finds the lease taken waits for the manifest to appear in
the store (or a shared failure), and takes the build over if the lease comes
free without one (its holder died). After each store write the size limit is
enforced (``store/limit.py``).

Across HTTP workers on one host: at most ``workers`` builds run at once among
them all (``slots.py``), and each keeps ``spares`` warmed-up workers. Every
record's public state is published to the store's shared records
(``shared_records.py``) on each state change, its progress at most every
``publish_every_s`` and a heartbeat every ``heartbeat_s``, so ``status`` and
``activity`` answer the same on every worker and replica.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flexsn_core.artifacts import sha256_hex
from flexsn_core.compile import KernelConfig
from flexsn_core.errors import ArtifactError
from flexsn_core.manifest import iter_choices, record_tuning, referenced_blobs, validate_manifest
from flexsn_core.spec import KernelSpec

from ..metrics import ServiceMetrics
from ..store import Store
from .jail import Jail
from .leases import Leases, lease_name
from .outcome import worker_outcome
from .pool import SparePool
from .process import Worker, WorkerResult
from .records import BuildFailure, BuildRecord, BuildView, RecordBook, keep_window
from .replicas import ReplicaCoordinator
from .shared_records import SharedBuild, SharedRecords
from .slots import BuildSlots
from .workdir import create_work_dir, remove_work_dir

__all__ = ["BuildRecord", "BuildFailure", "BuildManager", "BuildActivity", "BuildView"]

logger = logging.getLogger("flexsn_service.builds")

#: Output cap of our own (unjailed) compile and tuner processes: progress events only.
_TRUSTED_OUTPUT_BYTES = 1 << 20


@dataclass(frozen=True)
class BuildActivity:
    """What the builds are doing, for /v1/stats and the status page (records that only follow another
    replica's build of their spec are not builds of their own: not listed)."""

    #: queued or running, oldest first
    in_flight: list[BuildView]
    #: failed within the window, newest first (at most the ``limit`` asked for)
    recent_failures: list[BuildView]
    #: how many failed within the window (None: as many as listed)
    failed_count: int | None = None

    @property
    def failures_in_window(self) -> int:
        return len(self.recent_failures) if self.failed_count is None else self.failed_count


def _shared_view(found: SharedBuild) -> BuildView:
    s = found.status
    return BuildView(s.build_id, s.key, found.entry, list(s.targets), s.state, str(s.progress.get("stage", "")),
                     s.created, s.finished, s.error_type)


class BuildManager:
    def __init__(
        self,
        store: Store,
        work_root: Path,
        *,
        jail: Jail,
        workers: int,
        timeout_s: float,
        memory_bytes: int,
        max_source_bytes: int,
        tune_on_gpu: bool,
        metrics: ServiceMetrics,
        configs: list[KernelConfig] | None = None,
        source_check: bool = True,
        failure_ttl_s: float = 600.0,
        max_ir_bytes: int = 16 << 20,
        leases: Leases | None = None,
        after_store: Callable[[], object] | None = None,
        poll_s: float = 0.25,
        shared: SharedRecords | None = None,
        slots: BuildSlots | None = None,
        spares: int | None = None,
        heartbeat_s: float = 10.0,
        publish_every_s: float = 0.5,
    ) -> None:
        self.store = store
        self.jail = jail
        self.timeout_s = timeout_s
        self.memory_bytes = memory_bytes
        self.max_source_bytes = max_source_bytes
        self.source_check = source_check
        self.max_ir_bytes = max_ir_bytes
        self.tune_on_gpu = tune_on_gpu
        self.metrics = metrics
        self.configs = configs
        self.book = RecordBook(failure_ttl_s=failure_ttl_s, keep_s=keep_window(failure_ttl_s))
        self.work_dir = create_work_dir(work_root)
        self.leases = leases
        #: called (in a thread) after each build's store write: the size limit
        self.after_store = after_store
        self.replicas = (
            ReplicaCoordinator(store, leases, timeout_s=timeout_s, poll_s=poll_s, failure_ttl_s=failure_ttl_s)
            if leases is not None else None
        )
        self._slots = slots
        self._local_slots = asyncio.Semaphore(workers)  # without shared slots: this process's own
        #: published records of every process on the store (None: this process's records only)
        self.shared = shared
        self.heartbeat_s = heartbeat_s
        self.publish_every_s = publish_every_s
        #: a shared record in flight not published for this long is treated as gone (its process died)
        self.stale_s = 3 * heartbeat_s
        self._published: dict[str, tuple[str, float]] = {}  # id -> (what was published, when: monotonic)
        self._publish_lock = asyncio.Lock()
        self._publish_warned = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        # Two builds of one key (different targets) may finish together: merge their binaries one at a time.
        self._active: set[Worker] = set()
        self._closing = False
        spare_count = workers if spares is None else spares
        self._tracers = SparePool("jail", self._start_tracer, spare_count)
        self._compilers = SparePool("compile", self._start_compiler, spare_count)
        self._publisher: asyncio.Task[None] | None = None

    # ----------------------------------------------------------- requests
    async def request(self, spec: KernelSpec, targets: list[str]) -> tuple[BuildRecord, bool]:
        """The build of ``spec`` (joining one in flight, or a recent failure); True if this call started it.

        A new build's record is published before this returns, so its id answers on every worker."""
        record = self.book.current(spec.key, targets)
        if record is not None:
            return record, False
        record = BuildRecord(id=uuid.uuid4().hex, key=spec.key, spec=spec, targets=list(targets))
        self.book.add(record)
        task = asyncio.get_running_loop().create_task(self._run(record))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        await self._publish(record, force=True)
        return record, True

    def get(self, build_id: str) -> BuildRecord | None:
        """This process's record of ``build_id``."""
        return self.book.get(build_id)

    async def status(self, build_id: str) -> dict[str, Any] | None:
        """``build_id``'s public state (``BuildStatus``): this process's record, else the shared one."""
        record = self.book.get(build_id)
        if record is not None:
            return record.to_dict()
        if self.shared is None:
            return None
        found = await asyncio.to_thread(self._shared_get, build_id)
        return found.status.model_dump() if found is not None else None

    def _shared_get(self, build_id: str) -> SharedBuild | None:
        assert self.shared is not None
        try:
            found = self.shared.get(build_id)
        except Exception as exc:  # noqa: BLE001 - a backend that fails reads as "no such record", never a 500
            logger.warning("reading the shared record of build %s failed: %s", build_id[:64], exc)
            return None
        if found is not None and found.in_flight and found.beat < time.time() - self.stale_s:
            return None  # in flight, but its process stopped publishing: it is gone (POST the spec again)
        return found

    def local_activity(self, window_s: float = 3600.0) -> BuildActivity:
        """This process's builds in flight and the ones that failed in the last ``window_s`` (event loop)."""
        now = time.time()
        own = [r for r in self.book.records.values() if not r.joined]
        failed = [r for r in own if r.state == "failed" and r.finished is not None and now - r.finished < window_s]
        return BuildActivity(
            in_flight=[r.view() for r in sorted((r for r in own if r.finished is None), key=lambda r: r.created)],
            recent_failures=[r.view() for r in sorted(failed, key=lambda r: r.finished or 0.0, reverse=True)],
        )

    async def activity(self, window_s: float = 3600.0, limit: int = 50) -> BuildActivity:
        """Builds in flight and failed in the last ``window_s`` on every worker and replica of the store
        (this process's only, where the shared records cannot be read)."""
        local = self.local_activity(window_s)  # on the event loop, where records change
        if self.shared is None:
            return BuildActivity(local.in_flight, local.recent_failures[:limit], len(local.recent_failures))
        return await asyncio.to_thread(self._merge, local, window_s, limit)

    def _merge(self, local: BuildActivity, window_s: float, limit: int) -> BuildActivity:
        assert self.shared is not None
        try:
            running = self.shared.in_flight(self.stale_s)
            count, failed = self.shared.failures(window_s, limit)
        except Exception as exc:  # noqa: BLE001 - the page still shows this process's builds
            logger.warning("reading the shared build records failed: %s", exc)
            return BuildActivity(local.in_flight, local.recent_failures[:limit], len(local.recent_failures))
        in_flight = {v.id: v for v in local.in_flight}
        for found in running:
            in_flight.setdefault(found.build_id, _shared_view(found))
        failures = {v.id: v for v in local.recent_failures}
        for found in failed:
            failures.setdefault(found.build_id, _shared_view(found))
        return BuildActivity(
            in_flight=sorted(in_flight.values(), key=lambda v: v.created),
            recent_failures=sorted(failures.values(), key=lambda v: v.finished or 0.0, reverse=True)[:limit],
            # every failure of this process is published before its record is finished
            failed_count=max(count, len(local.recent_failures)),
        )

    def start(self) -> None:
        """Start the warmed-up spare workers and the publisher (call from the running event loop)."""
        self._tracers.refill()
        self._compilers.refill()
        if self.shared is not None:
            self._publisher = asyncio.get_running_loop().create_task(self._publish_loop())

    async def shutdown(self) -> None:
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._publisher is not None:  # after the builds: their final states are published
            self._publisher.cancel()
            await asyncio.gather(self._publisher, return_exceptions=True)
        await asyncio.gather(self._tracers.close(), self._compilers.close(),
                             *(w.dispose() for w in list(self._active)), return_exceptions=True)
        if self.jail.cgroups is not None:
            await asyncio.to_thread(self.jail.cgroups.close)
        remove_work_dir(self.work_dir)

    # ----------------------------------------------------------- one build
    async def _run(self, record: BuildRecord) -> None:
        out_dir = self.work_dir / "builds" / record.id
        remember = True
        name = lease_name(record.key, record.targets)
        lease = self.leases.lease(name) if self.leases is not None else None
        renewer: asyncio.Task[None] | None = None
        try:
            if lease is not None:
                if await self.replicas.wait(record, lease, name):
                    record.state = "succeeded"  # another replica built it (or finished just before us)
                    record.progress = {"stage": "done", "done": 1, "total": 1}
                    return
                renewer = asyncio.get_running_loop().create_task(self.replicas.renew(record, lease))
            self.metrics.builds_started.inc()
            async with self._slot():
                record.state, record.started = "running", time.time()
                record.progress = {"stage": "starting", "done": 0, "total": 0}
                await self._publish(record, force=True)
                began = time.perf_counter()
                ir = await self._trace(record)
                traced = time.perf_counter()
                out_dir.mkdir(parents=True)
                await self._compile(record, ir, out_dir)
                logger.info("build %s: traced in the jail in %.2f s, compiled in %.2f s (IR %d bytes)",
                            record.id, traced - began, time.perf_counter() - traced, len(ir))
                manifest, blobs = self._collect(record, out_dir)
                if self.tune_on_gpu:
                    record.progress = {"stage": "autotuning", "done": 0, "total": 0}
                    for choice in iter_choices(await self._tune(record, out_dir, manifest)):
                        record_tuning(manifest, choice)
                record.progress = {"stage": "storing", "done": 0, "total": 0}
                await asyncio.to_thread(self._store, manifest, blobs)
                await asyncio.to_thread(self._enforce_limit)
            record.state = "succeeded"
            record.progress = {"stage": "done", "done": 1, "total": 1}
            self.metrics.builds_succeeded.inc()
        except BuildFailure as exc:
            remember = exc.remember
            record.error_op, record.error_line = exc.op, exc.line
            self._fail(record, str(exc), exc.error_type, exc.user_error)
        except asyncio.CancelledError:
            remember = False
            self._fail(record, "the service shut down during the build", "Cancelled", False)
            raise
        except Exception as exc:  # noqa: BLE001 - any infrastructure problem fails this build only
            remember = False
            logger.exception("build %s failed", record.id)
            self._fail(record, f"internal error: {type(exc).__name__}: {exc}", type(exc).__name__, False)
        finally:
            if record.started is not None:
                self.metrics.build_seconds.observe(time.time() - record.started)
            shutil.rmtree(out_dir, ignore_errors=True)
            if renewer is not None:
                renewer.cancel()
            if lease is not None and self.replicas is not None:
                await asyncio.shield(asyncio.to_thread(self.replicas.settle, record, lease, name, remember))
            # the final state is published before anyone waiting on this record wakes up
            record.finished = time.time()
            await asyncio.shield(self._publish(record, force=True))
            self.book.finish(record, remember_failure=remember)
            if not self._closing:  # replace the used workers now that the build no longer needs the CPUs
                self._tracers.refill()
                self._compilers.refill()

    def _slot(self) -> Any:
        return self._slots.slot() if self._slots is not None else self._local_slots

    # ----------------------------------------------------------- shared records
    async def _publish(self, record: BuildRecord, *, force: bool = False) -> None:
        """Publish ``record``'s state if it changed (or ``force``: a state change), or for a heartbeat.

        One publish at a time, and the state read inside the lock, so an older state never lands
        after a newer one. A backend that fails is logged (once a minute) and never fails a build."""
        if self.shared is None:
            return
        async with self._publish_lock:
            status = record.to_dict()
            seen = json.dumps([status, record.joined], sort_keys=True, default=str)
            last = self._published.get(record.id)
            now = time.monotonic()
            if not force and last is not None and last[0] == seen and now - last[1] < self.heartbeat_s:
                return
            try:
                shared = self.shared.record(status, entry=record.spec.entry, joined=record.joined)
                await asyncio.to_thread(self.shared.publish, shared)
            except Exception as exc:  # noqa: BLE001 - shared status is a convenience; the build goes on
                if now - self._publish_warned > 60:
                    self._publish_warned = now
                    logger.warning("publishing build %s's state to the shared records failed: %s", record.id, exc)
                return
            if record.finished is None:
                self._published[record.id] = (seen, now)
            else:
                self._published.pop(record.id, None)

    async def _publish_loop(self) -> None:
        """Progress (at most every ``publish_every_s``) and heartbeats of the builds in flight here."""
        while True:
            await asyncio.sleep(self.publish_every_s)
            for records in list(self.book.inflight.values()):
                for record in list(records):
                    if record.finished is None:
                        await self._publish(record)

    def _fail(self, record: BuildRecord, message: str, error_type: str, user_error: bool) -> None:
        record.state, record.error, record.error_type, record.user_error = "failed", message, error_type, user_error
        self.metrics.builds_failed.inc()
        logger.info("build %s of %s failed: %s", record.id, record.key[:12], message[:500])

    # ----------------------------------------------------------- step 1: trace in the jail
    async def _start_tracer(self, warm: bool) -> Worker:
        command = self.jail.python_command("-m", "flexsn_service.builds.worker", *(["--warm"] if warm else []))
        name = f"jail-{uuid.uuid4().hex[:12]}"
        proc, cgroup = await self.jail.spawn(command, name)
        return Worker(proc, name=name, cgroup=cgroup, max_result_bytes=self.max_ir_bytes, accept_ir=True)

    async def _trace(self, record: BuildRecord) -> bytes:
        limits = self.jail.limits
        job = {
            "spec": record.spec.to_dict(),
            "check_source": self.source_check,
            "max_source_bytes": self.max_source_bytes,
            "memory_bytes": self.memory_bytes,
            "cpu_seconds": self.timeout_s + 30,
            "max_processes": limits.pids,
            "max_file_bytes": limits.scratch_bytes,
        }
        result = await self._run_worker(
            record, self._tracers, json.dumps(job).encode(),
            timeout_message=f"the build did not finish within {self.timeout_s:g} s and was stopped "
                            "(an endless loop in the core?)",
            what="the jailed build worker", jailed=True,
        )
        if result.ir is None:
            raise BuildFailure("the jailed build worker ended without an IR", "NoResult", True)
        return result.ir

    # ----------------------------------------------------------- step 2: compile outside
    async def _start_compiler(self, warm: bool) -> Worker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "flexsn_service.builds.compiler", *(["--warm"] if warm else []),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=self._env(gpu=False), cwd=str(self.work_dir / "tmp"), start_new_session=True,
        )
        return Worker(proc, name=f"compile-{proc.pid}", max_result_bytes=_TRUSTED_OUTPUT_BYTES)

    async def _compile(self, record: BuildRecord, ir: bytes, out_dir: Path) -> None:
        header = {
            "spec": record.spec.to_dict(),
            "targets": record.targets,
            "configs": [c.to_dict() for c in self.configs] if self.configs else None,
            "out_dir": str(out_dir),
        }
        await self._run_worker(
            record, self._compilers, json.dumps(header).encode() + b"\n" + ir,
            timeout_message=f"compiling the kernels did not finish within {self.timeout_s:g} s",
            what="the compile step", jailed=False,
        )

    async def _run_worker(
        self, record: BuildRecord, pool: SparePool, job: bytes, *, timeout_message: str, what: str, jailed: bool
    ) -> WorkerResult:
        worker = await asyncio.wait_for(pool.take(), timeout=self.timeout_s)
        self._active.add(worker)
        worker.on_progress = lambda event: setattr(
            record, "progress", {k: event.get(k, 0) for k in ("stage", "done", "total")}
        )
        worker.on_log = record.log.append
        try:
            result = await worker.run(job, timeout=self.timeout_s, timeout_message=timeout_message)
        finally:
            self._active.discard(worker)
            await worker.dispose()
        return worker_outcome(result, worker, what, jailed=jailed, max_ir_bytes=self.max_ir_bytes,
                        memory_bytes=self.memory_bytes)

    # ----------------------------------------------------------- step 3: verify, tune, store
    def _env(self, *, gpu: bool) -> dict[str, str]:
        """Environment of the trusted compile and tuner processes: no secrets, caches in the work folder."""
        keep = ("PATH", "PYTHONPATH", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "CUDA_HOME", "LANG")
        env = {k: os.environ[k] for k in keep if k in os.environ}
        env.update(
            HOME=str(self.work_dir / "home"),
            TMPDIR=str(self.work_dir / "tmp"),
            FLEXSN_CACHE_DIR=str(self.work_dir / "cache"),
            TRITON_CACHE_DIR=str(self.work_dir / "triton"),
            PYTHONDONTWRITEBYTECODE="1",
            OMP_NUM_THREADS="1",
        )
        if not gpu:
            env["CUDA_VISIBLE_DEVICES"] = ""
        return env

    async def _tune(self, record: BuildRecord, out_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
        """The tuner's table (``tuning[target][kind][bucket][variant]``), checked against ``manifest``."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "flexsn_service.builds.tuner", str(out_dir),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=self._env(gpu=True), cwd=str(self.work_dir / "tmp"), start_new_session=True,
        )
        worker = Worker(proc, name=f"tuner-{proc.pid}", max_result_bytes=_TRUSTED_OUTPUT_BYTES)
        worker.on_log = record.log.append
        self._active.add(worker)
        try:
            result = await worker.run(b"", timeout=self.timeout_s, timeout_message="autotuning did not finish in time",
                                      wait_ready=False)
        finally:
            self._active.discard(worker)
            await worker.dispose()
        if result.returncode != 0:
            raise BuildFailure(f"autotuning failed (exit status {result.returncode})", "TunerFailed", False)
        try:
            table = json.loads((out_dir / "tuning.json").read_text())
            validate_manifest({**manifest, "tuning": table})  # its shape, and every choice fits its binaries
        except (OSError, ValueError, ArtifactError) as exc:
            raise BuildFailure(f"autotuning wrote no usable table: {exc}", "TunerFailed", False) from exc
        return table

    def _collect(self, record: BuildRecord, out_dir: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
        """Read and verify what the compile step wrote (trusted code, but verify before storing)."""
        try:
            manifest = json.loads((out_dir / "manifest.json").read_text())
            validate_manifest(manifest)
        except (OSError, ValueError, ArtifactError) as exc:
            raise BuildFailure(f"the compile step wrote an unusable manifest: {exc}", "BadManifest", False) from exc
        if manifest.get("key") != record.key or KernelSpec.from_dict(manifest["spec"]) != record.spec:
            raise BuildFailure("the compile step's manifest is for a different spec", "BadManifest", False)
        blobs: dict[str, bytes] = {}
        for sha in set(referenced_blobs(manifest)):
            try:
                data = (out_dir / sha).read_bytes()
            except OSError as exc:
                raise BuildFailure(f"blob {sha[:16]}… is missing: {exc}", "IntegrityError", False) from exc
            if sha256_hex(data) != sha:
                raise BuildFailure(f"blob {sha[:16]}… does not match its sha256", "IntegrityError", False)
            blobs[sha] = data
        return manifest, blobs

    def _store(self, manifest: dict[str, Any], blobs: dict[str, bytes]) -> None:
        for attempt in range(3):
            try:
                for sha, data in blobs.items():  # blobs first ...
                    self.store.put_blob(sha, data)
                # ... the manifest last, merged with the stored one (other targets, tuned choices) under its lock
                self.store.merge_manifest(manifest, now=time.time())
                return
            except ArtifactError as exc:
                # Another replica's size-limit eviction may delete our blobs as orphans between
                # their write and the manifest's: write them again (twice at most).
                if "not stored" in str(exc) and attempt < 2:
                    logger.info("storing %s: a blob went missing before its manifest (evicted?); again",
                                manifest["key"][:12])
                    continue
                raise BuildFailure(f"could not store the artifact: {exc}", "StoreError", False,
                                   remember=False) from exc
            except OSError as exc:
                raise BuildFailure(f"could not store the artifact: {exc}", "StoreError", False,
                                   remember=False) from exc

    def _enforce_limit(self) -> None:
        if self.after_store is None:
            return
        try:
            self.after_store()
        except Exception:  # noqa: BLE001 - eviction failing must not fail the build that was stored
            logger.exception("size-limit eviction failed")
