"""Plot a training-benchmark run from its JSONL alone (works on a machine without a GPU).

    python bench/plot_train.py FILE.jsonl [--out FILE.png]     # default: FILE.png beside the JSONL

One column per (neuron, T); the top row is ms per optimizer step, the bottom
row peak memory (GB); bars per implementation, one per precision. Failed or
unavailable configurations have no bar.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

IMPL_ORDER = ("ours", "ours_compiled", "loop_compiled", "loop_eager", "sj_flexsn", "sj_lifnode")
DTYPE_STYLE = {"float32": ("fp32", "#1f77b4"), "bfloat16": ("bf16-AMP", "#ff7f0e")}


def load(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def measured(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if not r.get("summary") and "error" not in r and "unavailable" not in r and "ms" in r]


def failure(record: dict[str, Any]) -> str | None:
    """A short label for a configuration without figures, or None."""
    if "unavailable" in record:
        return "n/a"
    if "error" in record:
        return "timeout" if record["error"].startswith("timeout") else "error"
    return None


def plot(records: list[dict[str, Any]], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = measured(records)
    if not rows:
        raise ValueError("no measured configuration in these records (all failed or unavailable)")
    configs = [r for r in records if not r.get("summary") and "impl" in r]
    panels = sorted({(r["neuron"], r["T"]) for r in rows})
    dtypes = [d for d in DTYPE_STYLE if any(r["dtype"] == d for r in rows)]
    dtypes += sorted({r["dtype"] for r in rows} - set(dtypes))
    by_key = {(r["neuron"], r["T"], r["dtype"], r["impl"]): r for r in configs}

    def panel_impls(neuron: str, T: int) -> list[str]:
        present = {r["impl"] for r in configs if (r["neuron"], r["T"]) == (neuron, T)}
        return [i for i in IMPL_ORDER if i in present] + sorted(present - set(IMPL_ORDER))
    metrics = [("ms", "ms per optimizer step", "{:.3g}")]
    if any(r.get("peak_mem_gb") is not None for r in rows):
        metrics.append(("peak_mem_gb", "peak memory (GB)", "{:.2f}"))

    width = 0.8 / len(dtypes)
    fig, axes = plt.subplots(len(metrics), len(panels), figsize=(3.6 * len(panels) + 1, 3.2 * len(metrics)),
                             squeeze=False)
    for col, (neuron, T) in enumerate(panels):
        for row, (field, ylabel, fmt) in enumerate(metrics):
            ax = axes[row][col]
            impls = panel_impls(neuron, T)
            for j, dtype in enumerate(dtypes):
                label, color = DTYPE_STYLE.get(dtype, (dtype, None))
                xs, values = [], []
                for i, impl in enumerate(impls):
                    record = by_key.get((neuron, T, dtype, impl), {})
                    x = i + (j - (len(dtypes) - 1) / 2) * width
                    if record.get(field) is not None and failure(record) is None:
                        xs.append(x)
                        values.append(record[field])
                    elif failure(record):
                        ax.text(x, 0, failure(record), rotation=90, ha="center", va="bottom", fontsize=6, color="gray")
                bars = ax.bar(xs, values, width, label=label, color=color)
                ax.bar_label(bars, [fmt.format(v) for v in values], fontsize=6, padding=1)
            ax.set_xticks(range(len(impls)), impls, rotation=35, ha="right", fontsize=7)
            ax.set_xlim(-0.5, len(impls) - 0.5)  # keep the failure labels of bar-less slots inside
            ax.tick_params(axis="y", labelsize=7)
            ax.margins(y=0.15)
            if col == 0:
                ax.set_ylabel(ylabel, fontsize=8)
            if row == 0:
                ax.set_title(f"{neuron}, T={T}", fontsize=9)
    axes[0][-1].legend(fontsize=7)
    summary = next((r for r in records if r.get("summary")), {})
    batch = summary.get("batch") or rows[0].get("batch")
    device = summary.get("device_name") or rows[0].get("device_name", "")
    fig.suptitle(f"spiking conv net training step, batch {batch}, {device} ({summary.get('date', '')})", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return out


def plot_file(path: Path | str, out: Path | str | None = None) -> Path:
    """Plot ``path`` (a JSONL) to ``out`` (default: the same name with ``.png``)."""
    path = Path(path)
    return plot(load(path), Path(out) if out is not None else path.with_suffix(".png"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("jsonl", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="PNG path (default: the JSONL's name with .png)")
    args = parser.parse_args(argv)
    if not args.jsonl.is_file():
        parser.error(f"{args.jsonl} is not a file")
    try:
        print(plot_file(args.jsonl, args.out))
    except ValueError as exc:
        print(f"{args.jsonl}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
