"""flexsn_client: fetch FlexSN kernels from the cache service.

    from flexsn_client import ServiceAPI
"""

from __future__ import annotations

from .api import ServiceAPI, SpecRejectedError

__all__ = ["ServiceAPI", "SpecRejectedError"]
