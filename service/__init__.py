"""flexsn_service: the kernel cache service (FastAPI, content-addressed store, sandboxed builds).

    from flexsn_service import create_app, Settings
"""

from __future__ import annotations

from .config import Settings, get_settings
from .main import create_app

__all__ = ["create_app", "Settings", "get_settings"]
