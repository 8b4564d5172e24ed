"""Warm spare workers: started ahead (imports paid, tracing or Triton warmed up), one job each."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from .process import Worker

__all__ = ["SparePool"]

logger = logging.getLogger("flexsn_service.builds")


class SparePool:
    """Keeps up to ``size`` warmed-up workers waiting; a used worker is never reused."""

    def __init__(self, name: str, start: Callable[[bool], Awaitable[Worker]], size: int) -> None:
        self.name = name
        self._start = start  # start(warm) -> a new worker
        self.size = size
        self._spares: list[Worker] = []
        self._pending = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    async def take(self) -> Worker:
        """A live spare, or a fresh (cold) worker when none is ready."""
        while self._spares:
            worker = self._spares.pop(0)
            if worker.alive:
                return worker
            logger.warning("a spare %s worker had exited (status %s); log tail: %s",
                           self.name, worker.proc.returncode, list(worker.log)[-5:])
            await worker.dispose()
        return await self._start(False)

    def refill(self) -> None:
        """Start spares until ``size`` are ready or starting (call from the event loop)."""
        while not self._closing and len(self._spares) + self._pending < self.size:
            self._pending += 1
            task = asyncio.get_running_loop().create_task(self._add())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _add(self) -> None:
        try:
            worker = await self._start(True)
        except Exception:  # noqa: BLE001 - builds start cold workers meanwhile, and say why if that fails too
            logger.exception("could not start a spare %s worker", self.name)
            return
        finally:
            self._pending -= 1
        if self._closing:
            await worker.dispose()
        else:
            self._spares.append(worker)

    async def close(self) -> None:
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        spares, self._spares = self._spares, []
        await asyncio.gather(*(w.dispose() for w in spares), return_exceptions=True)
