"""One started worker process (jailed or not): pipes drained from the start, one job, bounded waits.

The protocol of every worker (``worker.py`` in the jail, ``compiler.py``
outside it): the job goes to its stdin, which is then closed. On stdout it
writes events, one per line: JSON objects starting with ``{`` (``progress``,
``done``, ``error``), and -- from the jail only -- one line ``IR <json>``
carrying the traced graphs. stderr is the build's log.

Everything read from a jail is untrusted: stdout is capped at ``max_result_bytes``
(the jail is killed past it: "IR too large"), progress/error events are parsed
only when short and their fields checked, the IR line is never parsed here
(it goes as bytes to the compile process, which validates it), and log lines
are cut to ``LOG_LINE_CHARS`` with at most ``MAX_LOG_BYTES`` read into the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
from collections import deque
from collections.abc import Callable
from typing import Any

from .cgroup import BuildCgroup
from .records import LOG_TAIL_LINES, BuildFailure
from .streams import pump

__all__ = ["Worker", "WorkerResult", "LOG_LINE_CHARS", "MAX_EVENT_BYTES"]

logger = logging.getLogger("flexsn_service.builds")

LOG_LINE_CHARS = 500
MAX_LOG_BYTES = 1 << 20
MAX_EVENT_BYTES = 1 << 16
MAX_MESSAGE_CHARS = 4000
_STDIN_TIMEOUT_S = 30.0
START_TIMEOUT_S = 180.0
_EXIT_TIMEOUT_S = 10.0
_DRAIN_TIMEOUT_S = 5.0
_IR_PREFIX = b"IR "


class WorkerResult:
    """How a job ended: the last event (``done``/``error``), the IR bytes if any, the exit status."""

    def __init__(self, event: dict[str, Any] | None, ir: bytes | None, returncode: int | None, oom: bool) -> None:
        self.event = event
        self.ir = ir
        self.returncode = returncode
        self.oom = oom


def _clean_event(raw: bytes) -> dict[str, Any] | None:
    """A short JSON event with only the fields we use, of the types we expect; else None."""
    try:
        event = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(event, dict) or event.get("event") not in ("progress", "done", "error"):
        return None
    clean: dict[str, Any] = {"event": event["event"]}
    for name in ("stage", "type", "message", "op"):
        value = event.get(name)
        if isinstance(value, str):
            clean[name] = value[:MAX_MESSAGE_CHARS] if name == "message" else value[:200]
    if isinstance(clean.get("type"), str) and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]{0,79}", clean["type"]):
        clean["type"] = "Error"
    for name in ("done", "total", "line"):
        value = event.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 31:
            clean[name] = value
    if isinstance(event.get("user_error"), bool):
        clean["user_error"] = event["user_error"]
    return clean


class Worker:
    """A started worker; ``run(job)`` once, then ``dispose()``."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        *,
        name: str,
        cgroup: BuildCgroup | None = None,
        max_result_bytes: int = MAX_EVENT_BYTES,
        accept_ir: bool = False,
    ) -> None:
        self.proc = proc
        self.name = name
        self.cgroup = cgroup
        self.accept_ir = accept_ir
        self.log: deque[str] = deque(maxlen=LOG_TAIL_LINES)
        self.on_progress: Callable[[dict[str, Any]], None] | None = None
        self.on_log: Callable[[str], None] | None = None
        self.too_large = False
        self.setup_error: dict[str, Any] | None = None  # an error the worker reported before it was ready
        self._last: dict[str, Any] | None = None
        self._ir: bytes | None = None
        self._log_cut = False
        self._ready = asyncio.Event()  # set when the worker's warm-up is done and it reads its job
        assert proc.stdout is not None and proc.stderr is not None
        self._readers = asyncio.gather(
            pump(proc.stdout, self._on_stdout, max_line=max_result_bytes, max_bytes=max_result_bytes + MAX_EVENT_BYTES,
                 on_limit=self._on_too_large),
            pump(proc.stderr, self._on_stderr, max_line=LOG_LINE_CHARS * 4, max_bytes=MAX_LOG_BYTES,
                 on_limit=self._on_log_limit),
        )

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    # ------------------------------------------------------------------ pipes
    def _on_stdout(self, line: bytes, cut: bool) -> None:
        if cut:
            self._on_too_large()
        elif line.startswith(_IR_PREFIX) and self.accept_ir:
            self._ir = line[len(_IR_PREFIX):]
        elif line.startswith(b"{") and len(line) <= MAX_EVENT_BYTES:
            event = _clean_event(line)
            if event is None:
                return
            if event["event"] == "progress":
                if event.get("stage") == "ready":
                    self._ready.set()
                elif self.on_progress is not None:
                    self.on_progress(event)
            else:
                self._last = event
                if not self._ready.is_set():
                    # Before "ready" no user code has run (the worker has not read its job): this
                    # error is the build environment's, and the only jail output trusted to say so.
                    self.setup_error = event

    def _on_too_large(self) -> None:
        if not self.too_large:
            self.too_large = True
            self.kill()

    def _on_stderr(self, line: bytes, cut: bool) -> None:
        text = line.decode(errors="replace").rstrip()
        text = text[:LOG_LINE_CHARS] + (" …[cut]" if cut or len(text) > LOG_LINE_CHARS else "")
        self.log.append(text)
        if self.on_log is not None:
            self.on_log(text)

    def _on_log_limit(self) -> None:
        if not self._log_cut:
            self._log_cut = True
            self._on_stderr(f"…[log over {MAX_LOG_BYTES >> 20} MiB: the rest is not kept]".encode(), False)

    # ------------------------------------------------------------------ one job
    async def run(self, job: bytes, *, timeout: float, timeout_message: str, wait_ready: bool = True) -> WorkerResult:
        """Send ``job``, wait for the exit (killed after ``timeout`` s), return how it ended.

        The clock starts when the worker says it is ready (a spare still warming up on a busy
        host is the service's time, not the build's); waiting for that is bounded too.
        """
        exited = asyncio.ensure_future(self.proc.wait())
        if not wait_ready:
            self._ready.set()
        ready = asyncio.ensure_future(self._ready.wait())
        if self.proc.stdin is not None:  # the tuner takes no job: its stdin is /dev/null
            try:
                self.proc.stdin.write(job)
                await asyncio.wait_for(self.proc.stdin.drain(), timeout=_STDIN_TIMEOUT_S)
                self.proc.stdin.close()
            except (BrokenPipeError, ConnectionResetError, asyncio.TimeoutError):
                pass  # it died (or stopped reading): its exit status tells
        try:
            done, _ = await asyncio.wait({exited, ready}, timeout=START_TIMEOUT_S,
                                         return_when=asyncio.FIRST_COMPLETED)
            if not done:
                await self.stop()
                raise BuildFailure(f"{self.name} did not start within {START_TIMEOUT_S:g} s (the host is "
                                   "overloaded?)", "StartTimeout", False, remember=False)
            await asyncio.wait_for(asyncio.shield(exited), timeout=timeout)
        except asyncio.TimeoutError:
            await self.stop()
            raise BuildFailure(timeout_message, "Timeout", True) from None
        finally:
            ready.cancel()
            exited.cancel()
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
            await asyncio.wait_for(asyncio.shield(self._readers), timeout=_DRAIN_TIMEOUT_S)
        oom = self.cgroup.oom_killed() if self.cgroup is not None else False
        return WorkerResult(self._last, self._ir, self.proc.returncode, oom)

    # ------------------------------------------------------------------ ending
    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        if self.cgroup is not None:
            self.cgroup.kill()

    async def stop(self) -> None:
        """Kill it and wait (bounded) for the exit."""
        if self.alive:
            self.kill()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.proc.wait(), timeout=_EXIT_TIMEOUT_S)

    async def dispose(self) -> None:
        """Kill whatever is left, stop reading, remove the cgroup. Always safe to call."""
        await self.stop()
        if not self._readers.done():
            self._readers.cancel()
        await asyncio.wait([self._readers], timeout=_DRAIN_TIMEOUT_S)  # never raises what the readers raised
        if self._readers.done() and not self._readers.cancelled():
            self._readers.exception()  # retrieved: no "never retrieved" warning
        if self.cgroup is not None and not self.cgroup.removed:
            if not await asyncio.to_thread(self.cgroup.remove):
                logger.warning("could not remove the cgroup of %s: %s", self.name, self.cgroup.dirs)
