"""TEMPORARY SHIM -- to be replaced by the real JSON IR (issue #9, the IR part).

This file only stands in for ``flexsn_core/ir.py`` so that the build jail
(``service/builds/``) can be written and tested against its interface:

    IR_VERSION: int
    trace_to_ir(spec) -> dict          executes the core: call ONLY inside the jail
    generate_from_ir(spec, ir) -> GeneratedKernels
                                       validates; raises IRError (a FlexSNError)

It is NOT the real thing: ``trace_to_ir`` traces the core (so core errors
surface inside the jail, as they will with the real IR) but returns only the
spec key, and ``generate_from_ir`` checks that key and then TRACES THE CORE
AGAIN, outside the jail, with ``flexsn_core.artifacts.generate``. Until the
real IR replaces this file, a core whose trace succeeds in the jail is also
executed by the (unjailed) compile process. The integrator replaces this whole
file with the IR helper's version; nothing else needs to change.
"""

from __future__ import annotations

import json
from typing import Any

from .codegen.kernels import GeneratedKernels
from .errors import FlexSNError
from .spec import KernelSpec

__all__ = ["IR_VERSION", "IRError", "trace_to_ir", "generate_from_ir"]

IR_VERSION = 0  # the shim's; the real IR starts at 1


class IRError(FlexSNError):
    """The IR is malformed or does not belong to the spec (shim's stand-in for flexsn_core.errors.IRError)."""


def trace_to_ir(spec: KernelSpec) -> dict[str, Any]:
    from .trace import trace_core

    trace_core(spec)  # executes the core: core errors are raised here, in the jail
    return {"ir_version": IR_VERSION, "spec_key": spec.key}


def generate_from_ir(spec: KernelSpec, ir: dict[str, Any] | str | bytes) -> GeneratedKernels:
    from .artifacts import generate

    if isinstance(ir, (str, bytes)):
        try:
            ir = json.loads(ir)
        except (ValueError, RecursionError) as exc:
            raise IRError(f"the IR is not JSON: {exc}") from None
    if not isinstance(ir, dict) or ir.get("ir_version") != IR_VERSION or ir.get("spec_key") != spec.key:
        raise IRError("the IR does not belong to this spec or has an unknown version")
    return generate(spec)  # SHIM ONLY: re-traces outside the jail; the real IR generates from data
