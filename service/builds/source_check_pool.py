"""Run the source check off the event loop, in a small pool of worker processes.

Parsing and checking a 200 kB source takes about a second of CPU, and
``ast.parse`` holds the GIL for all of it: in a thread it would stall every
other request of the server. So the check runs in separate processes (spawned,
never forked from the server; lowered CPU priority, so serving blobs wins when
cores are scarce), one check per process at a time, with:

* a bounded wait for a free process (-> :class:`CheckUnavailable`, a 503 with
  ``Retry-After``: the service is busy, not the source wrong);
* a time limit per check; a check past it is killed with its pool and the
  source gets a 422 (no source can hold a process forever);
* a worker that dies or hangs is replaced by restarting the pool.

The workers import neither torch nor the service (``source_check`` is plain
``ast``/``symtable`` code); the allowlists are computed once here and passed in.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import multiprocessing.pool
import os
from typing import TYPE_CHECKING, Any

from .source_check import Allowlists, CheckLimits, SourceRejected, check_source_text, default_allowlists

if TYPE_CHECKING:
    from flexsn_core.spec import KernelSpec

__all__ = ["SourceCheckPool", "CheckUnavailable"]

logger = logging.getLogger("flexsn_service.source_check")

_WORKER_ALLOW: Allowlists | None = None


class CheckUnavailable(RuntimeError):
    """No check process became free in time (the service is busy; retry later)."""


def _init_worker(allow: Allowlists) -> None:
    global _WORKER_ALLOW
    _WORKER_ALLOW = allow
    try:
        os.nice(10)  # checks are background work next to serving reads
    except OSError:  # pragma: no cover - not permitted on some hosts
        pass


def _check_in_worker(
    source: str, entry: str, counts: dict[str, int], limits: CheckLimits, declared: dict[str, Any] | None = None
) -> None:
    assert _WORKER_ALLOW is not None
    check_source_text(source, entry, counts, _WORKER_ALLOW, limits, declared)


class SourceCheckPool:
    def __init__(
        self,
        *,
        processes: int = 1,
        timeout_s: float = 30.0,
        queue_timeout_s: float = 60.0,
        allowlists: Allowlists | None = None,
    ) -> None:
        self.processes = processes
        self.timeout_s = timeout_s
        self.queue_timeout_s = queue_timeout_s
        self._allow = allowlists
        self._pool: multiprocessing.pool.Pool | None = None
        self._slots: asyncio.Semaphore | None = None
        #: checks in flight, and the pool each runs in (a restart answers the others with 503)
        self._pending: dict[asyncio.Future[None], multiprocessing.pool.Pool] = {}

    def _ensure_pool(self) -> multiprocessing.pool.Pool:
        if self._pool is None:
            if self._allow is None:
                self._allow = default_allowlists()
            context = multiprocessing.get_context("spawn")
            self._pool = context.Pool(self.processes, initializer=_init_worker, initargs=(self._allow,))
        return self._pool

    async def check(self, spec: KernelSpec, *, max_bytes: int) -> None:
        """Raise SourceRejected (a 422) or CheckUnavailable (a 503); return if the source passes."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.processes)
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout=self.queue_timeout_s)
        except TimeoutError:
            raise CheckUnavailable(
                f"every source check process stayed busy for {self.queue_timeout_s:g} s; retry later"
            ) from None
        try:
            await self._run(spec, max_bytes)
        finally:
            self._slots.release()

    async def _run(self, spec: KernelSpec, max_bytes: int) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def settle(result: Any = None, error: BaseException | None = None) -> None:
            if not done.done():
                if error is None:
                    done.set_result(None)
                else:
                    done.set_exception(error)

        counts = {"num_inputs": spec.num_inputs, "num_states": spec.num_states, "num_static": spec.num_static}
        pool = self._ensure_pool()
        self._pending[done] = pool
        done.add_done_callback(lambda fut: self._pending.pop(fut, None))
        pool.apply_async(
            _check_in_worker,
            (spec.source, spec.entry, counts, CheckLimits(max_bytes=max_bytes), spec.external_names()),
            callback=lambda result: loop.call_soon_threadsafe(settle, result),
            error_callback=lambda exc: loop.call_soon_threadsafe(settle, None, exc),
        )
        try:
            await asyncio.wait_for(asyncio.shield(done), timeout=self.timeout_s)
        except TimeoutError:
            logger.warning("a source check ran past %g s; restarting the check processes", self.timeout_s)
            done.cancel()  # its answer no longer matters
            if self._pool is pool:  # not a pool someone already replaced
                await self._restart()
            raise SourceRejected(
                f"checking the source took longer than {self.timeout_s:g} s; make it smaller or simpler"
            ) from None
        except (SourceRejected, CheckUnavailable):
            raise
        except Exception as exc:  # noqa: BLE001 - a checker bug must not become a 500
            logger.error("the source check failed: %s: %s", type(exc).__name__, exc)
            raise SourceRejected(
                f"the source check could not process this source ({type(exc).__name__}); "
                "please report this together with the source"
            ) from None

    async def _restart(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        for fut, owner in list(self._pending.items()):
            if owner is pool and not fut.done():
                fut.set_exception(CheckUnavailable("the source check processes were restarted; retry the request"))
        await asyncio.to_thread(_terminate, pool)

    async def close(self) -> None:
        await self._restart()


def _terminate(pool: multiprocessing.pool.Pool) -> None:
    pool.terminate()
    pool.join()
