"""GPU exploration: how fast is each kernel config, per kind, dtype and size?

    python bench/gpu_configs.py

Builds the LIF kernels for this GPU with a wide set of configs, then times
every config (aligned inputs) for the inference-final, training forward and
backward kinds at a few sizes, and prints one JSON line per measurement with
the fraction of copy bandwidth reached. Used to pick the default configs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

SHAPES = [(256, 2, 1), (512, 4, 1), (1024, 4, 1), (1024, 8, 1), (2048, 4, 1), (2048, 8, 1), (4096, 8, 1),
          (1024, 4, 3), (2048, 8, 3)]


def main() -> None:
    import torch
    from gpu_perf import copy_bandwidth, cuda_time
    from neurons import lif_hard

    from flexsn_core import KernelSpec, build_artifacts
    from flexsn_core.compile import KernelConfig
    from flexsn_core.runtime import KernelSet, run_backward, run_forward, run_inference_final

    bw = copy_bandwidth()
    print(json.dumps({"copy_TB_per_s": round(bw / 1e12, 3)}), flush=True)
    major, minor = torch.cuda.get_device_capability()
    target = f"cuda:{major * 10 + minor}"
    configs = [KernelConfig(b, w, s, True) for b, w, s in SHAPES]
    for dtype in (torch.float32, torch.bfloat16):
        spec = KernelSpec.from_core(lif_hard, 1, 1, 1, dtype=dtype)
        artifact = build_artifacts(spec, targets=(target,), configs=configs)
        ks = KernelSet(artifact.manifest, fetch=artifact.blobs.__getitem__)
        size = torch.empty((), dtype=dtype).element_size()
        for T, n in ((8, 1 << 20), (8, 1 << 22), (8, 1 << 24), (32, 1 << 22)):
            x = (torch.randn(T, n, device="cuda") + 0.5).to(dtype)
            g = torch.randn(T, n, device="cuda").to(dtype)
            for config in configs:
                ks.tuned_config_id = lambda *a, _c=config.id: _c  # force this config
                ks._choices.clear()
                fo = run_forward(ks, [x], [None], [], store_state_seqs=False)
                runs = {
                    "inference_final": (lambda: run_inference_final(ks, [x], [None], []), (2 * T * n + n) * size),
                    "forward": (lambda: run_forward(ks, [x], [None], [], store_state_seqs=False), (3 * T * n + n) * size),
                    "backward": (lambda: run_backward(ks, [x], [None], [], fo[0], fo[1], fo[3], [g], [None], [None]),
                                 (3 * T * n + n) * size),
                }
                for kind, (fn, moved) in runs.items():
                    ms = cuda_time(fn, iters=20)
                    print(json.dumps({"dtype": str(dtype).removeprefix("torch."), "T": T, "N": n, "kind": kind,
                                      "config": config.id, "us": round(ms * 1000, 1),
                                      "bw": round(moved / (ms / 1e3) / bw, 3)}), flush=True)
            del x, g
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
