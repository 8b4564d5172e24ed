"""Shared test setup.

CI has no GPU: kernels run in Triton's interpreter (TRITON_INTERPRET=1) on CPU
tensors, binaries are cross-compiled. Tests marked ``gpu`` need a CUDA device
and are skipped elsewhere.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

# Must be set before flexsn_core decides how to run CPU tensors.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("FLEXSN_CACHE_DIR", tempfile.mkdtemp(prefix="flexsn-test-cache-"))

sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):  # noqa: ANN001
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_counters():
    from flexsn_core import reset_counters

    reset_counters()
    yield
