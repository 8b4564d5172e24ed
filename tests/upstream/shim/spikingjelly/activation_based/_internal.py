"""Names of SpikingJelly internals that flexsn_core has no counterpart for.

The upstream test file imports some of them at module level, so they must
exist; calling one says it is not provided. The cases that use them are listed
as not applicable in tests/upstream/README.md (and skipped by the runner).
"""

from __future__ import annotations

from typing import Any


def missing(qualname: str) -> Any:
    def not_provided(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{qualname} is a SpikingJelly internal with no flexsn_core counterpart")

    not_provided.__name__ = qualname.rsplit(".", 1)[-1]
    return not_provided


class InternalModule:
    """A module of internals: every attribute is a function that says it is not provided."""

    def __init__(self, name: str) -> None:
        self.__name__ = name

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return missing(f"{self.__name__}.{attr}")
