"""Autotune a freshly built artifact on the local GPU.

    python -m flexsn_service.builds.tuner OUT_DIR

Runs every kernel kind on synthetic data at one size per tuning bucket, both
aligned and unaligned, so the runtime's autotuner times every config once and
records the winner; writes the manifest's ``tuning`` table to
``OUT_DIR/tuning.json``. No user Python runs here: only the compiled kernels.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

#: One element count per bucket (see flexsn_core.runtime.BUCKET_BOUNDS), and T.
TUNE_SIZES = (1 << 16, 1 << 20, 1 << 22, 1 << 24, 1 << 25)
TUNE_T = 8


def tune(out_dir: Path) -> dict:
    import torch

    from flexsn_core.runtime import KernelSet, StaticArg, run_backward, run_forward, run_inference, run_inference_final

    manifest = json.loads((out_dir / "manifest.json").read_text())
    ks = KernelSet(manifest, fetch=lambda sha: (out_dir / sha).read_bytes())
    spec = ks.spec
    device = torch.device("cuda")
    free, _ = torch.cuda.mem_get_info(device)
    for base in TUNE_SIZES:
        for n in (base, base - 1):  # aligned and unaligned variants, same bucket
            tensors = (spec.num_inputs + 2 * spec.num_outputs + 3 * spec.num_states + len(ks.extras) + 2) * TUNE_T
            if tensors * n * 4 > free // 2:
                continue
            xs = [torch.randn(TUNE_T, n, device=device).to(ks.dtype) for _ in range(spec.num_inputs)]
            inits = [torch.zeros(n, device=device, dtype=ks.dtype) for _ in range(spec.num_states)]
            statics = [StaticArg.prepare(torch.zeros(n, device=device), torch.Size((n,)), ks.dtype)
                       for _ in range(spec.num_static)]
            run_inference(ks, xs, inits, statics)
            run_inference_final(ks, xs, inits, statics)
            if ks.trainable:
                outs, sseqs, _, extras = run_forward(ks, xs, inits, statics, store_state_seqs=True)
                grads = [torch.ones_like(o) for o in outs]
                run_backward(ks, xs, inits, statics, outs, sseqs, extras, grads,
                             [None] * spec.num_states, [None] * spec.num_states)
            del xs, inits, statics
            torch.cuda.synchronize()
    return manifest.get("tuning", {})


def main() -> int:
    out_dir = Path(sys.argv[1])
    tuning = tune(out_dir)
    (out_dir / "tuning.json").write_text(json.dumps(tuning))
    return 0


if __name__ == "__main__":
    sys.exit(main())
