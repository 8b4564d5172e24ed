"""Build slots shared by the processes of one host: at most ``FLEXSN_SERVICE_WORKERS`` builds at once.

With several HTTP workers each worker runs its own builds (``manager.py``); a
semaphore per worker would let ``workers x http_workers`` builds run at once
and multiply the memory and CPU the setting promises to bound. So a build
holds one of ``count`` slots: an ``fcntl.flock`` on ``slot-<i>.lock`` in a
folder every process of the host shares (``<store>/work/slots`` for the
embedded store; ``./flexsn-work/work/slots`` beside a Redis store, shared by
the workers of one ``serve``). The kernel drops a dead holder's lock, so a
crash never leaks a slot. Replicas on other hosts have slots of their own.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

__all__ = ["BuildSlots"]


class BuildSlots:
    def __init__(self, folder: Path, count: int, *, poll_s: float = 0.1) -> None:
        if count < 1:
            raise ValueError("at least one build slot")
        self.folder = folder
        self.count = count
        self.poll_s = poll_s
        folder.mkdir(parents=True, exist_ok=True)
        # Waiters of this process queue here (first come, first served) and only the first polls the files.
        self._local = asyncio.Semaphore(count)

    def try_take(self) -> int | None:
        """A held slot's descriptor, or None when all ``count`` are held (never blocks)."""
        for index in range(self.count):
            fd = os.open(self.folder / f"slot-{index}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return fd
        return None

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold a slot for the body (waits, polling, while other processes hold them all)."""
        async with self._local:
            while (fd := self.try_take()) is None:
                await asyncio.sleep(self.poll_s)
            try:
                yield
            finally:
                os.close(fd)  # closing the descriptor releases the lock
