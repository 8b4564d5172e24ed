"""The one interface every way of running a kernel implements.

    launcher.load(entry, cubin, params, device) -> Launchable
    launchable.launch(grid, stream, args)

``entry`` is the manifest's binary entry (``launch`` metadata, ``config``,
``triton_metadata``); ``cubin`` its bytes; ``params`` the kind's ``(name,
type)`` signature; ``device`` the CUDA device index. ``args`` are the
non-constexpr arguments in signature order (data pointers as ints on GPUs,
tensors in the interpreter); ``grid`` is the number of programs; ``stream`` the
raw CUDA stream handle (ignored by the interpreter).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

__all__ = ["Launchable", "Launcher"]


class Launchable(Protocol):
    """A kernel loaded for one device, ready to launch."""

    def launch(self, grid: int, stream: int, args: Sequence[Any]) -> None: ...


class Launcher(ABC):
    """Loads binaries of a manifest into something launchable."""

    #: the name ``FLEXSN_LAUNCHER`` selects it by (``interpreter`` is chosen by device type)
    name: str = ""

    @abstractmethod
    def load(
        self,
        entry: Mapping[str, Any],
        cubin: bytes,
        params: Sequence[tuple[str, str]],
        device: int,
    ) -> Launchable:
        """Load one binary for ``device``; raise if it cannot run there."""
