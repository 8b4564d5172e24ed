"""Progress where a person waits on the service's builds, on stderr, and only when a person can see it.

``FLEXSN_CACHE_PROGRESS`` (:class:`~flexsn_client.settings.ClientSettings`):

* ``auto`` (default): draw progress when stderr is a terminal; a batch job's
  log (stderr a file or a pipe) gets no control codes and no progress lines;
* ``always``: draw it anyway (e.g. a job log someone follows with ``tail -f``);
* ``never``: never.

Two shapes: :func:`build_line`, one transient line while ``FlexSN(...,
backend="remote-cache")`` waits on one build; :class:`WarmProgress`, one line per
kernel while ``flexsn-cache warm`` waits on several (a summary line instead when
progress is off).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any, Literal

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.text import Text

from .settings import ClientSettings

__all__ = ["ProgressMode", "progress_console", "stage_text", "build_line", "WarmProgress"]

ProgressMode = Literal["auto", "always", "never"]


def progress_console(mode: ProgressMode | None = None) -> Console | None:
    """The stderr console to draw progress on, or None when progress is off (``mode``: the setting's)."""
    mode = mode or ClientSettings().progress
    if mode == "never":
        return None
    console = Console(stderr=True, force_terminal=True if mode == "always" else None)
    return console if console.is_terminal else None


def stage_text(status: dict[str, Any]) -> str:
    """A build status in a few words: ``queued``, ``compiling 3/8``, ``autotuning``, ..."""
    p = status.get("progress") or {}
    stage = str(p.get("stage") or status.get("state") or "queued")
    done, total = p.get("done") or 0, p.get("total") or 0
    return f"{stage} {done}/{total}" if total else stage


@contextlib.contextmanager
def build_line(console: Console | None, what: str) -> Iterator[Callable[[dict[str, Any]], None]]:
    """One line, redrawn while a build runs (``what`` names the kernel); yields the status callback.

    With no console (progress off) the callback does nothing. When the build
    ends the line is replaced by one saying how long it took.
    """
    if console is None:
        yield lambda status: None
        return
    started = time.monotonic()
    with Progress(SpinnerColumn(), TextColumn("{task.description}", markup=False), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task(f"FlexSN: the kernel cache is building {what} (queued)")

        def show(status: dict[str, Any]) -> None:
            bar.update(task, description=f"FlexSN: the kernel cache is building {what} ({stage_text(status)})")

        yield show
    console.print(Text(f"FlexSN: the kernel cache built {what} in {time.monotonic() - started:.0f} s"))


class WarmProgress:
    """``flexsn-cache warm``'s display: a line per kernel (cached / building: stage / ready), or a summary.

    Use as a context manager; :meth:`note` is the ``progress`` callback of
    :meth:`KernelCacheClient.prefetch` (called from several threads: rich's
    Progress is thread-safe).
    """

    def __init__(self, console: Console | None, summary: Console, total: int) -> None:
        self.console = console
        self.summary = summary
        self.total = total
        self.built: set[str] = set()
        self.ready: set[str] = set()
        self._bar: Progress | None = None
        self._tasks: dict[str, TaskID] = {}
        self._started = time.monotonic()

    def __enter__(self) -> WarmProgress:
        if self.console is not None:
            self._bar = Progress(
                TextColumn("{task.fields[name]}", markup=False), BarColumn(bar_width=20),
                TextColumn("{task.description}", markup=False), TimeElapsedColumn(), console=self.console,
            )
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def note(self, spec: Any, event: str, status: dict[str, Any] | None) -> None:
        """``event``: ``cached`` (no build needed), ``building`` (with the build's status) or ``ready``."""
        if event == "building":
            self.built.add(spec.key)
        elif event == "ready":
            self.ready.add(spec.key)
        if self._bar is None:
            return
        task = self._tasks.get(spec.key)
        if task is None:
            task = self._tasks[spec.key] = self._bar.add_task("", total=1, name=f"{spec.entry} {spec.key[:8]}")
        if event == "building" and status is not None:
            self._bar.update(task, description=f"building: {stage_text(status)}")
        elif event == "cached":
            self._bar.update(task, description="cached")
        elif event == "ready":
            how = "built" if spec.key in self.built else "cached"
            self._bar.update(task, description=f"ready ({how})", completed=1)

    def summary_line(self, mirror: object) -> str:
        built = len(self.built)
        return (f"warmed {len(self.ready)}/{self.total} kernel(s) ({built} built by the service, "
                f"{len(self.ready) - built} cached) in {time.monotonic() - self._started:.0f} s into {mirror}")
