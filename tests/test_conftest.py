"""The test setup on a GPU machine (issue #11: `pytest -m gpu` failed under a forced TRITON_INTERPRET=1).

Runs pytest in a subprocess with this repository's conftest and a plugin that
makes ``torch.cuda.is_available()`` answer True, loaded before the conftest.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path


HERE = Path(__file__).parent

PROBE = textwrap.dedent(
    """
    import os
    import pytest

    @pytest.fixture(scope="module")
    def module_env():
        return os.environ.get("TRITON_INTERPRET")

    @pytest.mark.gpu
    def test_gpu_test_runs_without_the_interpreter():
        assert "TRITON_INTERPRET" not in os.environ

    def test_cpu_test_runs_in_the_interpreter(module_env):
        assert os.environ["TRITON_INTERPRET"] == "1" and module_env == "1"
    """
)


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "conftest.py").write_text((HERE / "conftest.py").read_text())
    (tmp_path / "fake_cuda.py").write_text("import torch\ntorch.cuda.is_available = lambda: True\n")
    (tmp_path / "test_probe.py").write_text(PROBE)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    gpu: needs a CUDA GPU\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(HERE.parent)]),
           "TRITON_INTERPRET": "1"}  # set by the user's shell, say: GPU tests must not run under it
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "fake_cuda", "-p", "no:cacheprovider", "-q", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )


def test_with_cuda_gpu_tests_run_without_the_interpreter_and_cpu_tests_with_it(tmp_path: Path) -> None:
    everything = _run(tmp_path)
    assert everything.returncode == 0, everything.stdout + everything.stderr
    assert "2 passed" in everything.stdout
    only_gpu = _run(tmp_path, "-m", "gpu")  # exactly what the README's GPU section says to run
    assert only_gpu.returncode == 0, only_gpu.stdout + only_gpu.stderr
    assert "1 passed, 1 deselected" in only_gpu.stdout


def test_this_session_runs_cpu_tests_in_the_interpreter() -> None:
    assert os.environ.get("TRITON_INTERPRET") == "1"
