"""A stateful module base with SpikingJelly's memory semantics.

Memories are attributes registered with :meth:`register_memory`; ``reset()``
puts each back to (a copy of) its registered value, ``detach()`` cuts the
autograd history of tensor memories (truncated BPTT). ``step_mode`` is ``"s"``
(one step per call) or ``"m"`` (a ``[T, ...]`` sequence per call).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

__all__ = ["MemoryModule"]


class MemoryModule(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self._memories: dict[str, Any] = {}
        self._memories_rv: dict[str, Any] = {}
        self._step_mode = "s"

    # ------------------------------------------------------------ memories
    def register_memory(self, name: str, value: Any) -> None:
        if hasattr(self, name) and name not in self._memories:
            raise AttributeError(f"{name!r} is already an attribute of {type(self).__name__}")
        self._memories[name] = value
        self._memories_rv[name] = copy.deepcopy(value)

    def reset(self) -> None:
        """Put every memory back to its registered value."""
        for name, value in self._memories_rv.items():
            self._memories[name] = copy.deepcopy(value)

    def detach(self) -> None:
        """Cut the autograd history of tensor memories (for truncated BPTT)."""
        for name, value in self._memories.items():
            if isinstance(value, torch.Tensor):
                self._memories[name] = value.detach()
            elif isinstance(value, list):
                self._memories[name] = [v.detach() if isinstance(v, torch.Tensor) else v for v in value]

    def memories(self) -> Iterator[Any]:
        yield from self._memories.values()

    def named_memories(self) -> Iterator[tuple[str, Any]]:
        yield from self._memories.items()

    def __getattr__(self, name: str) -> Any:
        memories = self.__dict__.get("_memories")
        if memories is not None and name in memories:
            return memories[name]
        return super().__getattr__(name)

    def __setattr__(self, name: str, value: Any) -> None:
        memories = self.__dict__.get("_memories")
        if memories is not None and name in memories:
            memories[name] = value
        else:
            super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        memories = self.__dict__.get("_memories")
        if memories is not None and name in memories:
            del memories[name]
            del self._memories_rv[name]
        else:
            super().__delattr__(name)

    def _apply(self, fn, recurse=True):  # noqa: ANN001, ANN202
        # Move tensor memories with the module (.to(device), .half(), ...).
        for name, value in self._memories.items():
            if isinstance(value, torch.Tensor):
                self._memories[name] = fn(value)
            elif isinstance(value, list):
                self._memories[name] = [fn(v) if isinstance(v, torch.Tensor) else v for v in value]
        return super()._apply(fn, recurse)

    # ------------------------------------------------------------ stepping
    @property
    def step_mode(self) -> str:
        return self._step_mode

    @step_mode.setter
    def step_mode(self, value: str) -> None:
        if value not in ("s", "m"):
            raise ValueError(f"step_mode must be 's' or 'm', got {value!r}")
        self._step_mode = value

    def single_step_forward(self, *args: Any) -> Any:
        raise NotImplementedError

    def multi_step_forward(self, *args: Any) -> Any:
        raise NotImplementedError

    def forward(self, *args: Any) -> Any:
        if self.step_mode == "s":
            return self.single_step_forward(*args)
        return self.multi_step_forward(*args)

    def extra_repr(self) -> str:
        return f"step_mode={self.step_mode!r}"
