"""Read a child's pipe with hard bounds: chunked, lines cut, a total cap, always drained.

``StreamReader.readline()`` (and ``async for line in stream``) raises once a
line exceeds the reader's 64 KiB limit and leaves the rest in the pipe: one
``print('x' * 300000)`` in a core stalled its build slot for good. Here the
pipe is read in chunks; a line longer than ``max_line`` is cut (the rest of it
is discarded up to the next newline) and reported as cut; past ``max_bytes``
in total, ``on_limit`` is called once and everything else is read and thrown
away, so the child never blocks on a full pipe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["pump", "CHUNK"]

CHUNK = 1 << 16


async def pump(
    stream: asyncio.StreamReader,
    on_line: Callable[[bytes, bool], None],
    *,
    max_line: int,
    max_bytes: int | None = None,
    on_limit: Callable[[], None] | None = None,
) -> None:
    """Call ``on_line(line, cut)`` for each line (without its newline) until EOF."""
    line = bytearray()
    cut = False
    total = 0
    over = False
    while True:
        data = await stream.read(CHUNK if not over else 1 << 20)
        if not data:
            break
        if over:
            continue  # drained and dropped
        if max_bytes is not None and total + len(data) > max_bytes:
            data = data[:max(max_bytes - total, 0)]  # what fits; the rest and all that follows is dropped
            over = True
            if on_limit is not None:
                on_limit()
        total += len(data)
        start = 0
        while True:
            newline = data.find(b"\n", start)
            end = newline if newline >= 0 else len(data)
            if not cut:
                room = max(max_line - len(line), 0)
                line += data[start:min(end, start + room)]
                cut = end - start > room
            if newline < 0:
                break
            on_line(bytes(line), cut)
            line.clear()
            cut = False
            start = newline + 1
    if line or cut:
        on_line(bytes(line), cut or over)
