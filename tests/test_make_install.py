"""``make serve`` and ``make test`` started at once on a fresh clone: one install, never two pips at a time.

The Makefile runs as written, in a copy of the repository's Makefile, with
``PYTHON`` pointing at a stand-in interpreter that records what it is asked to
do (a real install costs minutes and the network). The stand-in's ``pip``
holds a marker folder while it "installs" (``mkdir`` is atomic): a second pip
running at the same time finds the folder and records an overlap -- what
crashed pip before the install took a lock. Debian packages are not tested
here (the package lists are set to commands that exist).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from live_server import ROOT

STAND_IN = """#!/bin/bash
# A stand-in python: `-m venv DIR` makes DIR/bin/python (itself) and DIR/bin/flexsn-cache;
# `-m pip ...` records the call and holds $LOG.d/busy while it works; `-m pytest` is recorded.
LOG={log}
if [ "$1 $2" = "-m venv" ]; then
  mkdir -p "$3/bin" && cp "$0" "$3/bin/python"
  printf '#!/bin/bash\\necho "serve $*" >> {log}\\n' > "$3/bin/flexsn-cache" && chmod +x "$3/bin/flexsn-cache"
  echo "venv $3" >> "$LOG"
elif [ "$1 $2" = "-m pip" ]; then
  mkdir "$LOG.busy" 2>/dev/null || echo "OVERLAP pip $*" >> "$LOG"
  echo "pip $*" >> "$LOG"
  sleep 1
  rmdir "$LOG.busy" 2>/dev/null
  true
elif [ "$1 $2" = "-m pytest" ]; then
  echo "pytest $*" >> "$LOG"
else
  echo "unexpected $*" >> "$LOG"; exit 1
fi
"""


@pytest.mark.skipif(not (shutil.which("make") and shutil.which("flock")), reason="needs make and flock")
def test_make_serve_and_make_test_at_once_install_once(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    clone.mkdir()
    shutil.copy(ROOT / "Makefile", clone / "Makefile")
    (clone / "pyproject.toml").write_text("[project]\nname = 'stand-in'\n")
    log = tmp_path / "log"
    python = tmp_path / "python3"
    python.write_text(STAND_IN.format(log=log))
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    # commands every machine has: no apt-get here
    args = [f"PYTHON={python}", "SERVE_PACKAGES=sh:dash", "TEST_PACKAGES=sh:dash env:coreutils"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    runs = [subprocess.Popen(["make", "--no-print-directory", target, *args], cwd=clone, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for target in ("serve", "test")]
    outputs = [run.communicate(timeout=120)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    lines = log.read_text().splitlines()
    assert not [line for line in lines if line.startswith(("OVERLAP", "unexpected"))], lines
    assert sum(line.startswith("venv ") for line in lines) == 1, lines  # one install; the second found it done
    assert sum("install -q torch" in line for line in lines) == 1, lines
    assert "serve serve" in lines and any(line.startswith("pytest -m pytest -n 2") for line in lines), lines
    assert (clone / ".venv" / ".installed").exists()
