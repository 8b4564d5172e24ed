"""Builds: single flight per key, a bounded pool of sandboxed worker processes.

Each build runs ``python -m flexsn_service.builds.worker`` in a fresh process
(spawned, never forked from the server) in its own session, with a wall-clock
timeout (the process group is killed) and memory/CPU limits the worker applies
to itself before running user code. Concurrent requests for one key join the
build already running. The worker writes its output to a scratch folder; the
server verifies every blob's sha256 and the manifest's key, optionally runs the
GPU tuner, then stores blobs first and the manifest last.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flexsn_core.artifacts import merge_binaries, referenced_blobs, sha256_hex, validate_manifest
from flexsn_core.compile import KernelConfig
from flexsn_core.errors import ArtifactError
from flexsn_core.spec import KernelSpec

from ..metrics import ServiceMetrics
from ..store import Store

__all__ = ["BuildRecord", "BuildManager"]

logger = logging.getLogger("flexsn_service.builds")

LOG_TAIL_LINES = 40


@dataclass
class BuildRecord:
    id: str
    key: str
    spec: KernelSpec
    targets: list[str]
    state: str = "queued"  # queued | running | succeeded | failed
    progress: dict[str, Any] = field(default_factory=lambda: {"stage": "queued", "done": 0, "total": 0})
    error: str | None = None
    error_type: str | None = None
    user_error: bool = False
    log: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_TAIL_LINES))
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def to_dict(self) -> dict[str, Any]:
        return {
            "build_id": self.id,
            "key": self.key,
            "state": self.state,
            "targets": self.targets,
            "progress": self.progress,
            "error": self.error,
            "error_type": self.error_type,
            "log_tail": list(self.log),
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
        }


class BuildFailure(Exception):
    def __init__(self, message: str, error_type: str, user_error: bool) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.user_error = user_error


class BuildManager:
    def __init__(
        self,
        store: Store,
        work_dir: Path,
        *,
        workers: int,
        timeout_s: float,
        memory_bytes: int,
        max_source_bytes: int,
        tune_on_gpu: bool,
        metrics: ServiceMetrics,
        configs: list[KernelConfig] | None = None,
    ) -> None:
        self.store = store
        self.work_dir = work_dir
        self.timeout_s = timeout_s
        self.memory_bytes = memory_bytes
        self.max_source_bytes = max_source_bytes
        self.tune_on_gpu = tune_on_gpu
        self.metrics = metrics
        self.configs = configs
        self.records: dict[str, BuildRecord] = {}
        self.inflight: dict[str, BuildRecord] = {}
        self._slots = asyncio.Semaphore(workers)
        self._slots_total = workers
        self._procs: set[asyncio.subprocess.Process] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        #: warmed-up workers waiting for a job (started lazily, refilled as they are used)
        self._spares: list[asyncio.subprocess.Process] = []
        self._pending_spares = 0
        self._closing = False
        for sub in ("scratch", "home", "tmp", "cache", "triton"):
            (work_dir / sub).mkdir(parents=True, exist_ok=True)
        # Scratch folders of builds that a crash interrupted.
        for leftover in (work_dir / "scratch").iterdir():
            shutil.rmtree(leftover, ignore_errors=True)

    # ----------------------------------------------------------- requests
    def request(self, spec: KernelSpec, targets: list[str]) -> tuple[BuildRecord, bool]:
        """The build of ``spec`` (joining one in flight); True if this call started it."""
        record = self.inflight.get(spec.key)
        if record is not None:
            return record, False
        record = BuildRecord(id=uuid.uuid4().hex, key=spec.key, spec=spec, targets=list(targets))
        self.records[record.id] = record
        self.inflight[spec.key] = record
        self.metrics.builds_started.inc()
        task = asyncio.get_running_loop().create_task(self._run(record))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return record, True

    def get(self, build_id: str) -> BuildRecord | None:
        return self.records.get(build_id)

    def start(self) -> None:
        """Start the warmed-up spare workers (call from the running event loop)."""
        self._refill_spares()

    async def shutdown(self) -> None:
        self._closing = True
        for proc in [*self._procs, *self._spares]:
            _kill_group(proc)
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # ----------------------------------------------------------- running
    async def _run(self, record: BuildRecord) -> None:
        scratch = self.work_dir / "scratch" / record.id
        try:
            async with self._slots:
                record.state, record.started = "running", time.time()
                scratch.mkdir(parents=True)
                await self._run_worker(record, scratch)
                manifest, blobs = self._collect(record, scratch)
                if self.tune_on_gpu:
                    record.progress = {"stage": "autotuning", "done": 0, "total": 0}
                    manifest["tuning"] = await self._run_tuner(record, scratch)
                record.progress = {"stage": "storing", "done": 0, "total": 0}
                await asyncio.to_thread(self._store, manifest, blobs)
            record.state = "succeeded"
            record.progress = {"stage": "done", "done": 1, "total": 1}
            self.metrics.builds_succeeded.inc()
        except BuildFailure as exc:
            self._fail(record, str(exc), exc.error_type, exc.user_error)
        except asyncio.CancelledError:
            self._fail(record, "the service shut down during the build", "Cancelled", False)
            raise
        except Exception as exc:  # noqa: BLE001 - any infrastructure problem fails this build only
            logger.exception("build %s failed", record.id)
            self._fail(record, f"internal error: {type(exc).__name__}: {exc}", type(exc).__name__, False)
        finally:
            record.finished = time.time()
            if record.started is not None:
                self.metrics.build_seconds.observe(record.finished - record.started)
            self.inflight.pop(record.key, None)
            shutil.rmtree(scratch, ignore_errors=True)
            record.done.set()
            # Replace the used worker now that the build no longer needs the CPUs.
            self._refill_spares()

    def _fail(self, record: BuildRecord, message: str, error_type: str, user_error: bool) -> None:
        record.state, record.error, record.error_type, record.user_error = "failed", message, error_type, user_error
        self.metrics.builds_failed.inc()
        logger.info("build %s of %s failed: %s", record.id, record.key[:12], message)

    def _env(self, *, gpu: bool) -> dict[str, str]:
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

    async def _take_worker(self) -> asyncio.subprocess.Process:
        """A warmed-up spare worker, or a fresh one if none is ready (replaced after the build)."""
        proc = None
        while self._spares and proc is None:
            candidate = self._spares.pop()
            if candidate.returncode is None:
                proc = candidate
        if proc is None:
            proc = await self._start_worker(warm=False)
        self._procs.add(proc)
        return proc

    def _refill_spares(self) -> None:
        """Keep one warmed-up worker per build slot waiting for a job."""
        if self._closing:
            return

        async def add() -> None:
            spare = await self._start_worker(warm=True)
            if self._closing:
                _kill_group(spare)
            else:
                self._spares.append(spare)

        while len(self._spares) + self._pending_spares < self._slots_total:
            self._pending_spares += 1
            task = asyncio.get_running_loop().create_task(add())
            task.add_done_callback(self._spare_done)
            self._tasks.add(task)  # type: ignore[arg-type]

    def _spare_done(self, task: asyncio.Task[None]) -> None:
        self._pending_spares -= 1
        self._tasks.discard(task)  # type: ignore[arg-type]

    async def _start_worker(self, *, warm: bool) -> asyncio.subprocess.Process:
        args = ["--warm"] if warm else []
        return await self._start("flexsn_service.builds.worker", args, gpu=False)

    async def _start(self, module: str, args: list[str], *, gpu: bool) -> asyncio.subprocess.Process:
        """``python -m module`` in its own session, with the build environment; stdin kept open."""
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", module, *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self._env(gpu=gpu),
            cwd=str(self.work_dir / "tmp"),
            start_new_session=True,
        )

    async def _run_worker(self, record: BuildRecord, scratch: Path) -> None:
        job = {
            "spec": record.spec.to_dict(),
            "targets": record.targets,
            "configs": [c.to_dict() for c in self.configs] if self.configs else None,
            "out_dir": str(scratch),
            "memory_bytes": self.memory_bytes,
            "cpu_seconds": self.timeout_s + 30,
            "max_source_bytes": self.max_source_bytes,
        }
        proc = await self._take_worker()
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(job).encode())
        await proc.stdin.drain()
        proc.stdin.close()
        outcome: dict[str, Any] = {}

        async def read_events() -> None:
            assert proc.stdout is not None
            async for raw in proc.stdout:
                try:
                    event = json.loads(raw)
                except json.JSONDecodeError:
                    continue
                if event.get("event") == "progress":
                    record.progress = {k: event.get(k) for k in ("stage", "done", "total")}
                elif event.get("event") in ("done", "error"):
                    outcome.update(event)

        async def read_log() -> None:
            assert proc.stderr is not None
            async for raw in proc.stderr:
                record.log.append(raw.decode(errors="replace").rstrip()[:500])

        readers = asyncio.gather(read_events(), read_log())
        try:
            await asyncio.wait_for(proc.wait(), timeout=self.timeout_s)
        except asyncio.TimeoutError:
            _kill_group(proc)
            await proc.wait()
            raise BuildFailure(
                f"the build did not finish within {self.timeout_s:g} s and was stopped "
                "(an endless loop in the core?)", "Timeout", True,
            ) from None
        finally:
            self._procs.discard(proc)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(readers, timeout=5)
        if outcome.get("event") == "error":
            raise BuildFailure(outcome.get("message", "build failed"), outcome.get("type", "Error"), bool(outcome.get("user_error")))
        if proc.returncode != 0 or outcome.get("event") != "done":
            code = proc.returncode
            reason = f"killed by signal {-code}" if code and code < 0 else f"exit status {code}"
            hint = " (over its memory or CPU limit?)" if code and code < 0 else ""
            raise BuildFailure(f"the build worker stopped without a result: {reason}{hint}", "WorkerDied", True)

    async def _run_tuner(self, record: BuildRecord, scratch: Path) -> dict[str, Any]:
        proc = await self._start("flexsn_service.builds.tuner", [str(scratch)], gpu=True)
        self._procs.add(proc)
        try:
            _, err = await asyncio.wait_for(proc.communicate(), timeout=self.timeout_s)
        except asyncio.TimeoutError:
            _kill_group(proc)
            raise BuildFailure("autotuning did not finish in time", "Timeout", False) from None
        finally:
            self._procs.discard(proc)
        if proc.returncode != 0:
            record.log.extend(err.decode(errors="replace").splitlines()[-10:])
            raise BuildFailure(f"autotuning failed (exit status {proc.returncode})", "TunerFailed", False)
        return json.loads((scratch / "tuning.json").read_text())

    def _collect(self, record: BuildRecord, scratch: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
        """Read and verify what the worker wrote: it ran user code, so trust nothing."""
        try:
            manifest = json.loads((scratch / "manifest.json").read_text())
            validate_manifest(manifest)
        except (OSError, ValueError, ArtifactError) as exc:
            raise BuildFailure(f"the worker wrote an unusable manifest: {exc}", "BadManifest", False) from exc
        if manifest.get("key") != record.key or KernelSpec.from_dict(manifest["spec"]) != record.spec:
            raise BuildFailure("the worker's manifest is for a different spec", "BadManifest", False)
        blobs: dict[str, bytes] = {}
        for sha in set(referenced_blobs(manifest)):
            data = (scratch / sha).read_bytes()
            if sha256_hex(data) != sha:
                raise BuildFailure(f"blob {sha[:16]}… does not match its sha256", "IntegrityError", False)
            blobs[sha] = data
        return manifest, blobs

    def _store(self, manifest: dict[str, Any], blobs: dict[str, bytes]) -> None:
        existing = self.store.get_manifest(manifest["key"])
        if existing is not None:
            manifest = merge_binaries(existing, manifest)
        for sha, data in blobs.items():  # blobs first ...
            self.store.put_blob(sha, data)
        try:
            self.store.put_manifest(manifest, now=time.time())  # ... the manifest last
        except ArtifactError as exc:
            raise BuildFailure(f"could not store the artifact: {exc}", "StoreError", False) from exc


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
