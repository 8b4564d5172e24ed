"""CODEGEN_VERSION moves with the sources that decide generated code (issue #11).

Other work changes the code generator all the time; a change that forgets to
bump the version would let the service and the local store serve kernels built
by the old generator under the same spec keys. The hash is over bytes: any edit
to a covered file needs the bump (one command, printed below).
"""

from __future__ import annotations

import subprocess
import sys

from flexsn_core import _codegen_sources
from flexsn_core._version import CODEGEN_SOURCES_SHA256, CODEGEN_VERSION


def test_codegen_version_matches_the_golden_hash_of_the_codegen_sources() -> None:
    current = _codegen_sources.sources_sha256()
    assert CODEGEN_SOURCES_SHA256.get(CODEGEN_VERSION) == current, (
        f"the codegen sources changed (sha256 {current}), so generated kernels may change: bump CODEGEN_VERSION "
        f"and update the golden hash, both at once: {_codegen_sources.BUMP_COMMAND}"
    )


def test_every_version_stands_for_other_sources_and_the_newest_is_current() -> None:
    versions = [int(v) for v in CODEGEN_SOURCES_SHA256]
    assert versions == sorted(versions) and int(CODEGEN_VERSION) == versions[-1], (
        "CODEGEN_VERSION must be the newest entry of CODEGEN_SOURCES_SHA256"
    )
    assert len(set(CODEGEN_SOURCES_SHA256.values())) == len(CODEGEN_SOURCES_SHA256), (
        "two versions record the same sources: a new hash needs a new version"
    )


def test_the_hash_covers_the_code_generator_and_tracing() -> None:
    names = {p.relative_to(_codegen_sources.PACKAGE).as_posix() for p in _codegen_sources.source_files()}
    assert {"trace.py", "spec.py", "capture.py", "compile.py", "codegen/lower.py", "codegen/kernels.py",
            "ir/_decode.py"} <= names


def test_any_edit_moves_the_hash_and_bump_records_it(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    import shutil

    package = tmp_path / "flexsn_core"
    shutil.copytree(_codegen_sources.PACKAGE, package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(_codegen_sources, "PACKAGE", package)
    monkeypatch.setattr(_codegen_sources, "VERSION_FILE", package / "_version.py")
    before = _codegen_sources.sources_sha256()
    assert before == CODEGEN_SOURCES_SHA256[CODEGEN_VERSION]
    lower = package / "codegen" / "lower.py"
    lower.write_text(lower.read_text() + "# a comment is a change too\n")
    after = _codegen_sources.sources_sha256()
    assert after != before
    version, sha = _codegen_sources.bump()
    assert (version, sha) == (str(int(CODEGEN_VERSION) + 1), after)
    namespace: dict = {}
    exec((package / "_version.py").read_text(), namespace)
    assert namespace["CODEGEN_VERSION"] == version
    assert namespace["CODEGEN_SOURCES_SHA256"] == {**CODEGEN_SOURCES_SHA256, version: after}


def test_the_check_command_says_what_to_run() -> None:
    result = subprocess.run([sys.executable, "-m", "flexsn_core._codegen_sources", "--check"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
