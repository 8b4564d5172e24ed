"""The client's own errors, kept apart from the HTTP code that raises them.

``flexsn_client.api`` imports httpx; these classes do not, so the provider and
the cache client can catch them on a local hit (the mirror has the kernels)
without loading the HTTP stack: a warm node's ``FlexSN(...)`` pays for httpx
only when it really talks to the service.
"""

from __future__ import annotations

from flexsn_core.errors import BuildFailedError, CacheUnavailableError, FlexSNError

__all__ = ["SpecRejectedError", "UnexpectedAnswerError", "BuildUnknownError"]


class SpecRejectedError(FlexSNError, ValueError):
    """The service refused the spec or its source (HTTP 422)."""


class UnexpectedAnswerError(CacheUnavailableError):
    """The URL answered, but not as a flexsn-cache service does (wrong path, another server, a proxy's page)."""


class BuildUnknownError(BuildFailedError):
    """The service asked does not know this build id: another replica or HTTP worker started
    it (a load balancer in front, ``--http-workers`` > 1) and build records are per process."""
