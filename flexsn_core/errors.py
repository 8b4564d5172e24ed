"""Errors raised by flexsn_core, the service and the client.

Every error derives from :class:`FlexSNError`, so ``except FlexSNError`` catches
anything this project raises on purpose. Errors about a user's core also derive
from the builtin a caller would expect (``TypeError`` for a wrong kind of value,
``ValueError`` for a wrong count or shape), so code written against the
SpikingJelly reference keeps working.

    FlexSNError
    ├── CoreError                      the core cannot become a kernel spec
    │   ├── CoreSourceError            (ValueError) no source, syntax error, not a def
    │   ├── CoreCaptureError           (TypeError) captures a tensor/module/other object
    │   ├── CoreSignatureError         (ValueError) wrong arity, return count, shape or dtype
    │   │   └── CoreReturnTypeError    (TypeError) the core returned something not a tensor
    │   ├── CoreTraceError             (RuntimeError) data-dependent control flow, core raised
    │   └── UnsupportedOpError         (NotImplementedError) an aten op without a Triton lowering
    ├── CompileError                   Triton failed to compile generated source
    ├── ArtifactError                  an artifact is incomplete or does not fit this machine
    │   ├── IntegrityError             a blob's bytes do not match its sha256
    │   └── IRError                    a traced-graph IR is malformed, unsupported or too large
    ├── CacheUnavailableError          the cache service cannot be reached
    ├── AuthError                      the cache service refused the token
    └── BuildFailedError               the cache service could not build a spec
"""

from __future__ import annotations

__all__ = [
    "FlexSNError",
    "CoreError",
    "CoreSourceError",
    "CoreCaptureError",
    "CoreSignatureError",
    "CoreReturnTypeError",
    "CoreTraceError",
    "UnsupportedOpError",
    "CompileError",
    "ArtifactError",
    "IntegrityError",
    "IRError",
    "CacheUnavailableError",
    "AuthError",
    "BuildFailedError",
]


class FlexSNError(Exception):
    """Root of every error raised on purpose by flexsn-cache."""


class CoreError(FlexSNError):
    """The core function cannot be turned into kernels."""


class CoreSourceError(CoreError, ValueError):
    """The core's source text is missing, unparsable or not a plain ``def``."""


class CoreCaptureError(CoreError, TypeError):
    """The core refers to an object that cannot be serialized into a spec."""


class CoreSignatureError(CoreError, ValueError):
    """The core takes or returns the wrong number, kind or shape of values."""


class CoreReturnTypeError(CoreSignatureError, TypeError):
    """The core returned a value that is not a tensor."""


class CoreTraceError(CoreError, RuntimeError):
    """Tracing the core failed (data-dependent control flow, or the core raised)."""


class UnsupportedOpError(CoreError, NotImplementedError):
    """An aten op in the traced core has no Triton lowering.

    ``op`` is the aten overload name (e.g. ``aten.sort.default``); ``line`` is
    the 1-based line of the spec source that produced it (``None`` when the op
    only appears in the backward graph).
    """

    def __init__(self, message: str, *, op: str, line: int | None = None) -> None:
        super().__init__(message)
        self.op = op
        self.line = line


class CompileError(FlexSNError):
    """Triton could not compile a generated kernel."""


class ArtifactError(FlexSNError):
    """An artifact is incomplete, malformed, or has nothing for this machine."""


class IntegrityError(ArtifactError):
    """A blob's bytes do not hash to the sha256 that names it."""


class IRError(ArtifactError):
    """An IR of traced graphs (the build jail's output) is malformed, unsupported or oversized.

    The message names the problem and where it is (graph, node, field).
    """


class CacheUnavailableError(FlexSNError):
    """The kernel cache service cannot be reached or answered with a server error."""


class AuthError(FlexSNError):
    """The kernel cache service rejected the token (401) or its scope (403)."""


class BuildFailedError(FlexSNError):
    """The kernel cache service tried to build a spec and failed.

    ``user_error``: the service blamed the core (its build hit the core's time
    or memory limit, printed too much, ...), not itself. Failures the service
    reports as a :class:`CoreError` are raised as that error instead.
    ``build_id``, ``error_type`` and ``log_tail`` say what the service saw.
    """

    def __init__(
        self,
        message: str,
        *,
        build_id: str | None = None,
        user_error: bool = False,
        error_type: str | None = None,
        log_tail: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message)
        self.build_id = build_id
        self.user_error = user_error
        self.error_type = error_type
        self.log_tail = tuple(log_tail)
