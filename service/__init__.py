"""flexsn_service: the kernel cache service (FastAPI, content-addressed store, sandboxed builds).

    from flexsn_service import create_app, Settings
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app", "Settings", "get_settings"]


def __getattr__(name: str) -> Any:
    # Lazy: the source-check processes import flexsn_service.builds.source_check
    # and must not pay for FastAPI, torch and Triton that the app imports.
    if name == "create_app":
        from .main import create_app

        return create_app
    if name in ("Settings", "get_settings"):
        from . import config

        return getattr(config, name)
    raise AttributeError(f"module 'flexsn_service' has no attribute {name!r}")
