"""Client configuration from the environment (pydantic-settings)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from flexsn_core.settings import cache_dir

__all__ = ["ClientSettings"]


class ClientSettings(BaseSettings):
    """``FLEXSN_CACHE_URL`` (the service), ``FLEXSN_CACHE_TOKEN``, ``FLEXSN_CACHE_DIR`` (local mirror).

    ``FLEXSN_CACHE_RETRY_AFTER_S``: after a call fails for want of the service,
    skip it for this long (no stall per kernel while it is down).
    ``FLEXSN_CACHE_BUILD_WAIT_S``: the longest wait for one build.
    ``FLEXSN_CACHE_PROGRESS``: ``auto`` (progress on stderr when it is a
    terminal), ``always`` or ``never`` (see :mod:`flexsn_client.progress`).
    """

    model_config = SettingsConfigDict(env_prefix="FLEXSN_CACHE_", extra="ignore")

    url: str | None = None
    token: str | None = None
    dir: Path | None = None
    retry_after_s: float = Field(default=60.0, ge=0)
    build_wait_s: float = Field(default=900.0, gt=0)
    progress: Literal["auto", "always", "never"] = "auto"

    def cache_dir(self) -> Path:
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            return self.dir
        return cache_dir()
