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
from pathlib import Path
from collections.abc import Callable
from typing import Any, NamedTuple

from flexsn_core.artifacts import sha256_hex
from flexsn_core.compile import KernelConfig
from flexsn_core.errors import ArtifactError
from flexsn_core.manifest import iter_choices, record_tuning, referenced_blobs, targets_of, validate_manifest
from flexsn_core.spec import KernelSpec

from ..metrics import ServiceMetrics
from ..store import Store
from .jail import Jail
from .leases import Leases, lease_name
from .pool import SparePool
from .process import Worker, WorkerResult
from .records import BuildFailure, BuildRecord, RecordBook
from .workdir import create_work_dir, remove_work_dir

__all__ = ["BuildRecord", "BuildFailure", "BuildManager", "BuildActivity"]

logger = logging.getLogger("flexsn_service.builds")

#: Output cap of our own (unjailed) compile and tuner processes: progress events only.
_TRUSTED_OUTPUT_BYTES = 1 << 20


class BuildActivity(NamedTuple):
    """What the builds are doing, for /v1/stats and the status page."""

    #: queued or running, oldest first
    in_flight: list[BuildRecord]
    #: failed within the window, newest first
    recent_failures: list[BuildRecord]


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
        self.book = RecordBook(failure_ttl_s=failure_ttl_s, keep_s=max(3600.0, failure_ttl_s))
        self.work_dir = create_work_dir(work_root)
        self.leases = leases
        #: called (in a thread) after each build's store write: the size limit
        self.after_store = after_store
        self.poll_s = poll_s
        self._slots = asyncio.Semaphore(workers)
        self._tasks: set[asyncio.Task[None]] = set()
        # Two builds of one key (different targets) may finish together: merge their binaries one at a time.
        self._active: set[Worker] = set()
        self._closing = False
        self._tracers = SparePool("jail", self._start_tracer, workers)
        self._compilers = SparePool("compile", self._start_compiler, workers)

    # ----------------------------------------------------------- requests
    def request(self, spec: KernelSpec, targets: list[str]) -> tuple[BuildRecord, bool]:
        """The build of ``spec`` (joining one in flight, or a recent failure); True if this call started it."""
        record = self.book.current(spec.key, targets)
        if record is not None:
            return record, False
        record = BuildRecord(id=uuid.uuid4().hex, key=spec.key, spec=spec, targets=list(targets))
        self.book.add(record)
        task = asyncio.get_running_loop().create_task(self._run(record))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return record, True

    def get(self, build_id: str) -> BuildRecord | None:
        return self.book.get(build_id)

    def activity(self, window_s: float = 3600.0) -> BuildActivity:
        """Builds in flight and the ones that failed in the last ``window_s`` (read-only)."""
        now = time.time()
        records = list(self.book.records.values())
        failed = [r for r in records if r.state == "failed" and r.finished is not None and now - r.finished < window_s]
        return BuildActivity(
            in_flight=sorted((r for r in records if r.finished is None), key=lambda r: r.created),
            recent_failures=sorted(failed, key=lambda r: r.finished or 0.0, reverse=True),
        )

    def start(self) -> None:
        """Start the warmed-up spare workers (call from the running event loop)."""
        self._tracers.refill()
        self._compilers.refill()

    async def shutdown(self) -> None:
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
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
                if await self._wait_for_lease(record, lease, name):
                    record.state = "succeeded"  # another replica built it (or finished just before us)
                    record.progress = {"stage": "done", "done": 1, "total": 1}
                    return
                renewer = asyncio.get_running_loop().create_task(self._renew(record, lease))
            self.metrics.builds_started.inc()
            async with self._slots:
                record.state, record.started = "running", time.time()
                record.progress = {"stage": "starting", "done": 0, "total": 0}
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
            if lease is not None and self.leases is not None:
                await asyncio.shield(asyncio.to_thread(self._settle_lease, record, lease, name, remember))
            self.book.finish(record, remember_failure=remember)
            if not self._closing:  # replace the used workers now that the build no longer needs the CPUs
                self._tracers.refill()
                self._compilers.refill()

    # ----------------------------------------------------------- the lease (single flight across replicas)
    def _stored(self, record: BuildRecord) -> bool:
        manifest = self.store.get_manifest(record.key)
        return manifest is not None and set(record.targets) <= targets_of(manifest)

    async def _wait_for_lease(self, record: BuildRecord, lease: Any, name: str) -> bool:
        """Hold the build's lease (False: build it here) or see it stored by another replica (True).

        Raises BuildFailure for a failure another replica remembered. Bounded: a holder
        renews only while its build runs, and a build has a time limit.
        """
        deadline = time.monotonic() + 3 * self.timeout_s + 120
        waiting = False
        while True:
            if await asyncio.to_thread(lease.try_acquire):
                # the holder may have finished between our miss and now
                return await asyncio.to_thread(self._stored, record)
            if not waiting:
                waiting = True
                holder = await asyncio.to_thread(lease.holder)
                record.progress = {"stage": "waiting for another replica", "done": 0, "total": 0}
                logger.info("build %s of %s: replica %s is building it; waiting", record.id, record.key[:12], holder)
            if await asyncio.to_thread(self._stored, record):
                return True
            failed = await asyncio.to_thread(self.leases.failure, name) if self.leases is not None else None
            if failed is not None:
                record.error_op, record.error_line = failed.get("error_op"), failed.get("error_line")
                record.log.extend(str(line) for line in failed.get("log_tail") or [])
                raise BuildFailure(str(failed["error"]), str(failed.get("error_type") or "Error"),
                                   bool(failed.get("user_error")), op=record.error_op, line=record.error_line)
            if time.monotonic() > deadline:
                raise BuildFailure("another replica's build of this spec did not finish in time",
                                   "Timeout", False, remember=False)
            await asyncio.sleep(self.poll_s)

    async def _renew(self, record: BuildRecord, lease: Any) -> None:
        assert self.leases is not None
        while True:
            await asyncio.sleep(self.leases.lease_s / 3)
            try:
                held = await asyncio.to_thread(lease.renew)
            except Exception as exc:  # noqa: BLE001 - the store may come back; the next renewal retries
                logger.warning("build %s: renewing its lease failed: %s", record.id, exc)
                continue
            if not held:
                logger.warning("build %s lost its lease (expired): another replica may build it too", record.id)
                return

    def _settle_lease(self, record: BuildRecord, lease: Any, name: str, remember: bool) -> None:
        """Publish a remembered failure to every replica, then give the lease up."""
        try:
            # only a failure of a build run here (one read from another replica is published already)
            if record.state == "failed" and remember and record.started is not None and self.leases is not None:
                self.leases.remember_failure(name, record.to_dict(), self.book.failure_ttl_s)
            lease.release()
        except Exception as exc:  # noqa: BLE001 - the lease expires on its own
            logger.warning("build %s: releasing its lease failed: %s", record.id, exc)

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
        return _outcome(result, worker, what, jailed=jailed, max_ir_bytes=self.max_ir_bytes,
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



def _outcome(
    result: WorkerResult, worker: Worker, what: str, *, jailed: bool, max_ir_bytes: int, memory_bytes: int
) -> WorkerResult:
    """The result if the worker succeeded; else the BuildFailure that says why.

    Whatever happens in the jail counts as the core's doing (a 422, remembered): the jail's
    word that a failure was "internal" is not taken.
    """
    if worker.too_large:
        raise BuildFailure(
            f"{what} wrote more than {max_ir_bytes >> 20} MiB of output (IR too large) and was stopped",
            "OutputTooLarge", True,
        )
    if worker.setup_error is not None:  # failed before it read the job: not the core's doing
        raise BuildFailure(
            f"{what} could not start (the service's build environment, not the core): "
            f"{worker.setup_error.get('message', 'no message')}",
            "BuildEnvironmentError", False, remember=False,
        )
    event = result.event or {}
    if event.get("event") == "error":
        user = True if jailed else bool(event.get("user_error", True))
        op, line = event.get("op"), event.get("line")
        raise BuildFailure(
            str(event.get("message", "build failed")), str(event.get("type", "Error")), user,
            op=op if isinstance(op, str) else None,
            line=line if isinstance(line, int) and not isinstance(line, bool) else None,
        )
    if result.returncode == 0 and (event.get("event") == "done" or result.ir is not None):
        return result
    code = result.returncode
    if result.oom:
        reason = f"it went over the build's memory limit ({memory_bytes >> 20} MB above the worker's baseline)"
    elif code is not None and code < 0:
        reason = f"killed by signal {-code} (over its memory or CPU limit?)"
    elif code is not None and code > 128:
        reason = f"killed by signal {code - 128} (over its memory or CPU limit?)"
    else:
        reason = f"exit status {code}"
    raise BuildFailure(f"{what} stopped without a result: {reason}", "WorkerDied", True)
