"""The README and the public surface match the code."""

from __future__ import annotations

import re
from pathlib import Path

import flexsn_core
from flexsn_core.codegen.lower import LOWERINGS, op_name

README = (Path(__file__).parent.parent / "README.md").read_text()


def readme_ops() -> set[str]:
    """The op names of the README's supported list (tests/test_op_coverage.py checks each has a numeric test)."""
    block = README.split("<!-- ops:begin -->")[1].split("<!-- ops:end -->")[0]
    return set(re.findall(r"`([a-z0-9_]+)`", block))


def test_readme_op_list_matches_lowering_table() -> None:
    documented = readme_ops()
    implemented = {op_name(target).split(".")[1] for target in LOWERINGS}
    assert documented == implemented, (
        f"missing from README: {sorted(implemented - documented)}; "
        f"not implemented: {sorted(documented - implemented)}"
    )


def test_public_api_is_exactly_all() -> None:
    exported = {
        "FlexSN", "FlexSNKernel", "flex_sn_scan", "functional", "surrogate", "MemoryModule", "KernelSpec", "KernelSet", "KernelConfig", "FlexSNInfo", "Artifact", "build_artifacts",
        "counters", "reset_counters", "KINDS", "DEFAULT_TARGETS", "DEFAULT_CONFIGS", "FlexSNError",
        "CoreError", "CoreSourceError", "CoreCaptureError", "CoreSignatureError", "CoreReturnTypeError",
        "CoreTraceError", "UnsupportedOpError", "CompileError", "ArtifactError", "IntegrityError",
        "CacheUnavailableError", "AuthError", "BuildFailedError",
    }
    assert set(flexsn_core.__all__) == exported
    for name in exported:
        assert hasattr(flexsn_core, name), name


def test_counters_have_the_documented_names() -> None:
    assert set(flexsn_core.counters()) == {"traces", "compiles", "local_hits", "remote_hits", "remote_misses", "autotunes"}


def test_no_module_calls_counters_dot_bump() -> None:
    """``flexsn_core.counters`` is the public function, so inside the package
    ``from . import counters`` can bind it instead of the module; bump through
    ``from .counters import bump`` only."""
    package = Path(flexsn_core.__file__).parent
    offenders = [p.name for p in package.rglob("*.py") if "counters.bump(" in p.read_text()]
    assert offenders == []
