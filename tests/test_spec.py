"""KernelSpec: source capture, canonical encoding and the key."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import neurons
import pytest
import torch
import torch.nn.functional as F

from flexsn_core import KernelSpec, counters
from flexsn_core.artifacts import generate

TESTS = Path(__file__).parent
ROOT = TESTS.parent


def _key_in_subprocess(expr: str) -> str:
    code = f"import neurons; from flexsn_core import KernelSpec; print({expr})"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=TESTS,
        env={"PYTHONPATH": f"{ROOT}:{TESTS}", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def test_source_is_self_contained_and_canonical() -> None:
    spec = KernelSpec.from_core(neurons.lif_soft, 1, 1, 1)
    text = spec.source
    # imports, then constants, then helpers, then the core, each sorted
    assert text.index("import math") < text.index("import torch") < text.index("ALPHA = 4.0")
    assert text.index("TAU = 2.0") < text.index("V_TH = 1.0") < text.index("def _atan_st")
    assert text.rstrip().endswith("return spike, h - spike.detach() * V_TH")
    rebuilt = spec.load_core()
    x, v = torch.randn(5), torch.randn(5)
    for a, b in zip(rebuilt(x, v), neurons.lif_soft(x, v)):
        assert torch.equal(a, b)


def test_closures_aliases_and_torch_functions_are_captured() -> None:
    from torch import sigmoid

    beta = 0.25

    def core(x, v):
        return F.relu(x) * beta, sigmoid(v)

    spec = KernelSpec.from_core(core, 1, 1, 1)
    assert "beta = 0.25" in spec.source
    assert "import torch.nn.functional as F" in spec.source
    assert "sigmoid = torch.sigmoid" in spec.source
    y, s = spec.load_core()(torch.tensor([-1.0, 2.0]), torch.zeros(2))
    assert torch.equal(y, torch.tensor([0.0, 0.5]))
    assert torch.equal(s, torch.full((2,), 0.5))


def test_key_is_stable_across_processes() -> None:
    spec = KernelSpec.from_core(neurons.lif_hard, 1, 1, 1)
    assert _key_in_subprocess("KernelSpec.from_core(neurons.lif_hard, 1, 1, 1).key") == spec.key


def test_key_changes_with_source_constant_and_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    base = KernelSpec.from_core(neurons.lif_hard, 1, 1, 1)
    other_source = KernelSpec(**{**base.to_dict(), "source": base.source.replace("TAU = 2.0", "TAU = 3.0")})
    assert other_source.key != base.key
    monkeypatch.setattr(neurons, "V_TH", 1.5)
    assert KernelSpec.from_core(neurons.lif_hard, 1, 1, 1).key != base.key
    monkeypatch.undo()
    assert KernelSpec.from_core(neurons.lif_hard, 1, 1, 1).key == base.key
    assert KernelSpec.from_core(neurons.lif_hard, 1, 1, 1, dtype=torch.float16).key != base.key
    assert KernelSpec.from_core(neurons.lif_hard, 1, 1, 1, requires_grad=(False, True)).key != base.key


def test_key_moves_with_the_toolchain(monkeypatch: pytest.MonkeyPatch) -> None:
    import flexsn_core.spec as spec_module

    base_key = KernelSpec.from_core(neurons.lif_hard, 1, 1, 1).key  # computed before patching
    real_version = spec_module.triton_version()
    monkeypatch.setattr(spec_module, "triton_version", lambda: "9.9.9")
    assert KernelSpec.from_core(neurons.lif_hard, 1, 1, 1).key != base_key
    monkeypatch.setattr(spec_module, "triton_version", lambda: real_version)
    assert KernelSpec.from_core(neurons.lif_hard, 1, 1, 1).key == base_key
    monkeypatch.setattr(spec_module, "CODEGEN_VERSION", "999")
    assert KernelSpec.from_core(neurons.lif_hard, 1, 1, 1).key != base_key
    monkeypatch.undo()
    # make_fx and AOTAutograd draw the graphs: the torch release is part of the key (issue #11) ...
    monkeypatch.setattr(spec_module, "torch_version", lambda: "9.9.9")
    assert KernelSpec.from_core(neurons.lif_hard, 1, 1, 1).key != base_key
    monkeypatch.undo()
    assert KernelSpec.from_core(neurons.lif_hard, 1, 1, 1).key == base_key


def test_the_torch_version_in_the_key_ignores_the_build_tag(monkeypatch: pytest.MonkeyPatch) -> None:
    """... but not the local build tag: a CPU-only service shares keys with CUDA clients."""
    import flexsn_core.spec as spec_module

    versions = {}
    for tag in ("2.11.0+cpu", "2.11.0+cu128", "2.11.0"):
        monkeypatch.setattr(torch, "__version__", tag)
        spec_module.torch_version.cache_clear()
        versions[tag] = spec_module.torch_version()
    spec_module.torch_version.cache_clear()
    assert set(versions.values()) == {"2.11.0"}


def test_key_does_not_trace_or_compile() -> None:
    spec = KernelSpec.from_core(neurons.izhikevich, 1, 2, 2)
    _ = spec.key
    assert counters()["traces"] == 0 and counters()["compiles"] == 0


def test_json_round_trip_and_strict_fields() -> None:
    spec = KernelSpec.from_core(neurons.plif, 1, 1, 1, num_static=1, dtype="bfloat16")
    again = KernelSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec and again.key == spec.key
    assert spec.requires_grad == (True, True, True)
    with pytest.raises(ValueError, match="unknown spec fields: extra"):
        KernelSpec.from_dict({**spec.to_dict(), "extra": 1})
    with pytest.raises(ValueError, match="dtype"):
        KernelSpec(**{**spec.to_dict(), "dtype": "int8"})
    with pytest.raises(ValueError, match="requires_grad must hold 3 bools"):
        KernelSpec(**{**spec.to_dict(), "requires_grad": (True,)})
    with pytest.raises(ValueError, match="num_inputs must be >= 1"):
        KernelSpec(**{**spec.to_dict(), "num_inputs": 0})


def test_generated_source_is_deterministic_across_processes() -> None:
    gen = generate(KernelSpec.from_core(neurons.alif, 1, 2, 1))
    assert generate(KernelSpec.from_core(neurons.alif, 1, 2, 1)).source == gen.source
    sha = _key_in_subprocess(
        "__import__('flexsn_core.artifacts', fromlist=['generate'])"
        ".generate(KernelSpec.from_core(neurons.alif, 1, 2, 1)).sha256"
    )
    assert sha == gen.sha256
    for forbidden in ("/tmp", "0x7f", str(ROOT)):
        assert forbidden not in gen.source


def test_source_text_spec_runs_like_the_function() -> None:
    source = textwrap.dedent(
        """
        import torch

        def core(x, v):
            h = 0.5 * v + x
            return (h > 1.0).to(h.dtype), h
        """
    )
    spec = KernelSpec(source=source, entry="core", num_inputs=1, num_states=1, num_outputs=1)
    y, h = spec.load_core()(torch.tensor([2.0, 0.0]), torch.zeros(2))
    assert y.tolist() == [1.0, 0.0] and h.tolist() == [2.0, 0.0]
