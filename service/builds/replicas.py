"""Single flight across replicas: wait for, renew and give up a build's lease (``leases.py``).

A build runs only while its replica holds the (key, targets) lease. A replica
that finds it taken waits until the manifest is in the shared store (or another
replica published the build's failure), and takes the build over if the lease
comes free without one: its holder died.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from flexsn_core.manifest import targets_of

from ..store import Store
from .leases import Leases
from .records import WAITING_STAGE, BuildFailure, BuildRecord

__all__ = ["ReplicaCoordinator"]

logger = logging.getLogger("flexsn_service.builds")


class ReplicaCoordinator:
    """The lease side of one replica's builds."""

    def __init__(self, store: Store, leases: Leases, *, timeout_s: float, poll_s: float, failure_ttl_s: float) -> None:
        self.store = store
        self.leases = leases
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self.failure_ttl_s = failure_ttl_s

    def stored(self, record: BuildRecord) -> bool:
        manifest = self.store.get_manifest(record.key)
        return manifest is not None and set(record.targets) <= targets_of(manifest)

    async def wait(self, record: BuildRecord, lease: Any, name: str) -> bool:
        """Hold the build's lease (False: build it here) or see it stored by another replica (True).

        Raises BuildFailure for a failure another replica remembered. Bounded: a holder
        renews only while its build runs, and a build has a time limit.
        """
        deadline = time.monotonic() + 3 * self.timeout_s + 120
        waiting = False
        while True:
            if await asyncio.to_thread(lease.try_acquire):
                # the holder may have finished between our miss and now
                stored = await asyncio.to_thread(self.stored, record)
                record.joined = stored  # else it is built here: a build of its own (a takeover, maybe)
                return stored
            if not waiting:
                waiting = True
                record.joined = True
                holder = await asyncio.to_thread(lease.holder)
                record.progress = {"stage": WAITING_STAGE, "done": 0, "total": 0}
                logger.info("build %s of %s: replica %s is building it; waiting", record.id, record.key[:12], holder)
            if await asyncio.to_thread(self.stored, record):
                return True
            failed = await asyncio.to_thread(self.leases.failure, name) if self.leases is not None else None
            if failed is not None:
                record.error_op, record.error_line = failed.get("error_op"), failed.get("error_line")
                record.log.extend(str(line) for line in failed.get("log_tail") or [])
                raise BuildFailure(str(failed["error"]), str(failed.get("error_type") or "Error"),
                                   bool(failed.get("user_error")), op=record.error_op, line=record.error_line)
            if time.monotonic() > deadline:
                record.joined = False  # a failure of this wait, not an echo of the other build's
                raise BuildFailure("another replica's build of this spec did not finish in time",
                                   "Timeout", False, remember=False)
            await asyncio.sleep(self.poll_s)

    async def renew(self, record: BuildRecord, lease: Any) -> None:
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

    def settle(self, record: BuildRecord, lease: Any, name: str, remember: bool) -> None:
        """Publish a remembered failure to every replica, then give the lease up."""
        try:
            # only a failure of a build run here (one read from another replica is published already)
            if record.state == "failed" and remember and record.started is not None and self.leases is not None:
                self.leases.remember_failure(name, record.to_dict(), self.failure_ttl_s)
            lease.release()
        except Exception as exc:  # noqa: BLE001 - the lease expires on its own
            logger.warning("build %s: releasing its lease failed: %s", record.id, exc)
