"""The sources that decide generated kernel code and binaries, and their golden hash.

``CODEGEN_VERSION`` is part of every spec key, so a kernel built by an older
code generator is never served to a newer one. A version nobody remembers to
bump defeats that: ``tests/test_codegen_version.py`` hashes the files below and
compares the hash with the one recorded for the current version in
``flexsn_core/_version.py``. Changing any of them (a comment too: the hash is
over bytes) means bumping the version and recording the new hash, both at once:

    python -m flexsn_core._codegen_sources --bump     # CODEGEN_VERSION + 1, new hash appended
    python -m flexsn_core._codegen_sources --check    # exit 1 if they disagree

Covered (relative to ``flexsn_core/``): the code generator (``codegen/``), the
traced-graph IR (``ir/``), tracing (``trace.py``), what a spec holds and how
its source is loaded (``spec.py``, ``capture.py``, ``surrogate.py`` where
present) and the Triton compile options (``compile.py``). Not covered: the
manifest layout (``artifacts.py``: ``MANIFEST_FORMAT``), the runtime and the
custom ops (they launch what codegen describes), and the toolchain (the key
holds the Triton and torch versions itself).
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path

__all__ = ["PATTERNS", "source_files", "sources_sha256", "BUMP_COMMAND"]

PACKAGE = Path(__file__).resolve().parent
VERSION_FILE = PACKAGE / "_version.py"
PATTERNS = ("codegen/*.py", "ir/*.py", "trace.py", "spec.py", "capture.py", "surrogate.py", "compile.py")
BUMP_COMMAND = "python -m flexsn_core._codegen_sources --bump"


def source_files() -> list[Path]:
    """The covered files that exist, in a fixed order."""
    found = {path for pattern in PATTERNS for path in PACKAGE.glob(pattern) if path.is_file()}
    return sorted(found, key=lambda p: p.relative_to(PACKAGE).as_posix())


def sources_sha256() -> str:
    """sha256 over (relative path, bytes) of every covered file; line endings normalized."""
    digest = hashlib.sha256()
    for path in source_files():
        digest.update(path.relative_to(PACKAGE).as_posix().encode() + b"\0")
        data = path.read_bytes().replace(b"\r\n", b"\n")
        digest.update(len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()


_VERSION_LINE = re.compile(r'^CODEGEN_VERSION = "(\d+)"$', re.M)
_HISTORY_END = re.compile(r"^}$", re.M)


def bump() -> tuple[str, str]:
    """Write CODEGEN_VERSION + 1 and the current hash into ``_version.py``; returns them."""
    text = VERSION_FILE.read_text()
    match = _VERSION_LINE.search(text)
    if match is None:
        raise SystemExit(f"no CODEGEN_VERSION line in {VERSION_FILE}")
    version, sha = str(int(match.group(1)) + 1), sources_sha256()
    text = _VERSION_LINE.sub(f'CODEGEN_VERSION = "{version}"', text, count=1)
    end = list(_HISTORY_END.finditer(text))[-1]
    text = text[: end.start()] + f'    "{version}": "{sha}",\n' + text[end.start():]
    VERSION_FILE.write_text(text)
    return version, sha


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flexsn_core._codegen_sources", description=__doc__.split("\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--bump", action="store_true", help="bump CODEGEN_VERSION and record the sources' hash")
    action.add_argument("--check", action="store_true", help="exit 1 unless the recorded hash is current")
    args = parser.parse_args(argv)
    if args.bump:
        version, sha = bump()
        print(f"CODEGEN_VERSION = {version}, codegen sources sha256 {sha}")
        return 0
    from ._version import CODEGEN_SOURCES_SHA256, CODEGEN_VERSION

    current = sources_sha256()
    if CODEGEN_SOURCES_SHA256.get(CODEGEN_VERSION) != current:
        print(f"the codegen sources changed (sha256 {current}): bump CODEGEN_VERSION and update the golden "
              f"hash: {BUMP_COMMAND}")
        return 1
    print(f"CODEGEN_VERSION {CODEGEN_VERSION} matches the codegen sources")
    return 0


if __name__ == "__main__":
    sys.exit(main())
