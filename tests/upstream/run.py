"""Run SpikingJelly's FlexSN test file against flexsn_core.

    .venv/bin/python tests/upstream/run.py /path/to/spikingjelly [pytest args...]

The path is a SpikingJelly checkout (a work tree, or a bare git dir whose HEAD
is read with ``git show``). The test file is copied into a temporary directory
(never into this repository) and run with the ``spikingjelly`` stand-in package
in shim/ first on ``sys.path`` and plugin.py loaded. Not part of ``make test``:
CI cannot fetch SpikingJelly.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEST = "test/activation_based/test_flex_sn_inductor.py"


def read_test(checkout: Path) -> str:
    in_tree = checkout / TEST
    if in_tree.is_file():
        return in_tree.read_text()
    return subprocess.run(
        ["git", "-C", str(checkout), "show", f"HEAD:{TEST}"], check=True, capture_output=True, text=True
    ).stdout


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 2
    source = read_test(Path(argv[0]))
    with tempfile.TemporaryDirectory(prefix="flexsn-upstream-") as tmp:
        (Path(tmp) / "test_flex_sn_inductor.py").write_text(source)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(HERE / "shim"), str(HERE), env.get("PYTHONPATH", "")])
        cmd = [sys.executable, "-m", "pytest", "-p", "plugin", "-p", "no:cacheprovider", "--rootdir", tmp,
               "-c", os.devnull, str(Path(tmp) / "test_flex_sn_inductor.py"), *argv[1:]]
        return subprocess.call(cmd, env=env, cwd=tmp)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
