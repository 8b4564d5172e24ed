"""Shared test setup.

Tests marked ``gpu`` need a CUDA device (skipped elsewhere) and run the real
GPU path: compiled cubins, never Triton's interpreter. Every other test runs
its kernels in Triton's interpreter on CPU tensors (``TRITON_INTERPRET=1``).

On a machine without CUDA the variable is set for the whole session, as CI has
always done. With CUDA it is set per test, for the non-GPU tests only, and
removed for GPU tests: ``TRITON_INTERPRET=1`` switches all of Triton (and
Inductor's Triton kernels) to the interpreter, so forcing it process-wide
made ``pytest -m gpu`` fail on a GPU machine (issue #11). flexsn_core reads the
variable when it decides, never at import, so switching it per test is enough.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch

CUDA = torch.cuda.is_available()

if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("FLEXSN_CACHE_DIR", tempfile.mkdtemp(prefix="flexsn-test-cache-"))

sys.path.insert(0, str(Path(__file__).parent))


def pytest_collection_modifyitems(config, items):  # noqa: ANN001
    if CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):  # noqa: ANN001
    """With CUDA: the interpreter for CPU tests, the real GPU path for ``gpu`` tests.

    A hook rather than a fixture: it runs before any fixture of the test,
    module-scoped ones included.
    """
    if CUDA:
        if item.get_closest_marker("gpu") is not None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture(autouse=True)
def _fresh_counters():
    from flexsn_core import reset_counters

    reset_counters()
    yield
