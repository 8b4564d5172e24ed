"""Run a function right after a module is first imported, without importing it ourselves.

flexsn_core must not import ``torch._dynamo`` (about a second) in a job that
never compiles, yet two things must be in place before Dynamo/Inductor first
run: the HOP's Dynamo rule (:mod:`flexsn_core.hop_dynamo`) and the Inductor
pass of :mod:`flexsn_core.remat`. :func:`after_import` runs a callback now if
the module is already loaded, else from a one-shot ``sys.meta_path`` finder
that wraps that module's loader.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["after_import"]

#: callbacks waiting for a module, by module name
_PENDING: dict[str, list[Callable[[], None]]] = {}


def after_import(name: str, callback: Callable[[], None]) -> None:
    """Call ``callback()`` once ``name`` is imported (now, if it already is)."""
    if name in sys.modules:
        callback()
        return
    waiting = _PENDING.setdefault(name, [])
    waiting.append(callback)
    if len(waiting) == 1:
        sys.meta_path.insert(0, _Hook(name))


class _Hook(importlib.abc.MetaPathFinder):
    """Wraps ``name``'s loader so that the waiting callbacks run after its body (then leaves)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)  # the normal finders, without this hook
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            _PENDING.pop(fullname, None)
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_call(module: Any) -> None:
            exec_module(module)
            for callback in _PENDING.pop(fullname, []):
                callback()

        spec.loader.exec_module = exec_then_call  # type: ignore[method-assign]  # this module's loader only
        return spec
