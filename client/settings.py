"""Client configuration from the environment (pydantic-settings)."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

from flexsn_core.settings import cache_dir

__all__ = ["ClientSettings"]


class ClientSettings(BaseSettings):
    """``FLEXSN_CACHE_URL`` (the service), ``FLEXSN_CACHE_TOKEN``, ``FLEXSN_CACHE_DIR`` (local mirror)."""

    model_config = SettingsConfigDict(env_prefix="FLEXSN_CACHE_", extra="ignore")

    url: str | None = None
    token: str | None = None
    dir: Path | None = None

    def cache_dir(self) -> Path:
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            return self.dir
        return cache_dir()
