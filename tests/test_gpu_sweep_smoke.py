"""bench/gpu_sweep.py stays runnable: its CPU smoke mode measures every section and prints the tables.

The integrator runs it once on a GPU machine with no network; a broken import or
a renamed runtime argument must show up here, not there.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_smoke_run_measures_every_section(tmp_path: Path) -> None:
    out = tmp_path / "sweep.jsonl"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_sweep.py"), "--smoke", "--no-compile", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    errors = [r for r in records if "error" in r]
    assert not errors, errors
    sections = {r["section"] for r in records}
    assert {"device", "copy", "build", "infer", "train", "step"} <= sections
    infer = [r for r in records if r["section"] == "infer" and r["impl"] == "ours"]
    assert {r["dtype"] for r in infer} == {"float32", "bfloat16", "float16"}
    assert all(r["bw_fraction"] > 0 for r in infer)
    train = [r for r in records if r["section"] == "train"]
    # both backward modes, and the old fp32-extras rule for bf16; what each keeps alive per step
    assert {(r["dtype"], r["mode"], r["saved_rule"]) for r in train} == {
        ("float32", "stored", "new"), ("float32", "recompute", "new"),
        ("bfloat16", "stored", "new"), ("bfloat16", "recompute", "new"), ("bfloat16", "stored", "fp32x"),
    }
    saved = {(r["dtype"], r["mode"], r["saved_rule"]): r["saved_bytes_per_step"] for r in train}
    assert saved[("bfloat16", "stored", "new")] == 3 and saved[("bfloat16", "stored", "fp32x")] == 4
    step = {(r["neuron"], r["dtype"], r["impl"]) for r in records if r["section"] == "step" and "ms" in r}
    for neuron in ("lif_hard", "alif"):
        for impl in ("ours[auto]", "ours[stored]", "ours[recompute]", "loop_eager"):
            assert (neuron, "bfloat16", impl) in step
    assert "inference bw / copy" in proc.stdout and "training step" in proc.stdout
