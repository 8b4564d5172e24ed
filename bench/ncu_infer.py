"""A target for Nsight Compute: our LIF inference kernel at one size, nothing else on the GPU.

    ncu --kernel-name regex:inference --launch-skip 2 --launch-count 1 \
        --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats \
        python bench/ncu_infer.py [--dtype bfloat16] [--T 8] [--log2n 22]

Issue #14 asks for the profile where an inference bandwidth target is missed
(bf16 at N=2^22); bench/gpu_sweep.py gives the fractions, this gives the why.
Runs the default (untuned) config unless FLEXSN_AUTOTUNE is set.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import torch  # noqa: E402

from flexsn_core import FlexSN  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--T", type=int, default=8)
    ap.add_argument("--log2n", type=int, default=22)
    ap.add_argument("--launches", type=int, default=5)
    args = ap.parse_args()
    os.environ.setdefault("FLEXSN_AUTOTUNE", "0")
    from neurons import lif_hard

    dtype = getattr(torch, args.dtype)
    example = (torch.zeros(4, device="cuda", dtype=dtype),) * 2
    neuron = FlexSN(lif_hard, 1, 1, 1, example_inputs=example, backend="triton").cuda()
    x = torch.randn(args.T, 1 << args.log2n, device="cuda").to(dtype)
    with torch.no_grad():
        for _ in range(args.launches):
            neuron.reset()
            neuron(x)
    torch.cuda.synchronize()
    print(f"ran {args.launches} inferences: {args.dtype} T={args.T} N=2^{args.log2n}")


if __name__ == "__main__":
    main()
